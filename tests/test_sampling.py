"""Clip sampler vs the official semantics (spec §3.6), re-derived by hand."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from input_pipeline.sampling import sample_clip_indices


def _expected_counts(length: int, num_frames: int, frame_range: int) -> np.ndarray:
  """E[# occurrences of frame j in a clip], enumerated from the official rule.

  ref is uniform; each of the T-1 other draws is uniform over the window minus ref.
  """
  expected = np.zeros(length)
  for ref in range(length):
    window = [j for j in range(max(0, ref - frame_range), min(length, ref + frame_range + 1))
              if j != ref]
    expected[ref] += 1 / length
    for j in window:
      expected[j] += (num_frames - 1) / len(window) / length
  return expected


def test_marginal_distribution_matches_enumeration():
  length, num_frames, frame_range, n = 9, 3, 2, 20000
  rng = np.random.default_rng(0)
  counts = np.zeros(length)
  for _ in range(n):
    counts += np.bincount(sample_clip_indices(rng, length, num_frames, frame_range),
                          minlength=length)
  expected = _expected_counts(length, num_frames, frame_range)
  # Per-frame count means are sums of bounded draws: 5 sigma ~ 0.02 at n = 20000.
  np.testing.assert_allclose(counts / n, expected, atol=0.02)
  # Edge frames are rarer than central ones under this rule (window truncation).
  assert expected[0] < expected[4]


def test_sorted_in_range_and_reference_included():
  rng = np.random.default_rng(1)
  length, num_frames, frame_range = 40, 5, 3
  for _ in range(500):
    idx = sample_clip_indices(rng, length, num_frames, frame_range)
    assert idx.dtype == np.int32 and idx.shape == (num_frames,)
    assert np.all(np.diff(idx) >= 0)
    assert idx.min() >= 0 and idx.max() < length
    # Some frame occurs exactly once (the reference: the others never equal it) and every
    # other index is within R of it.
    counts = collections.Counter(idx.tolist())
    refs = [r for r, c in counts.items() if c == 1
            and all(abs(j - r) <= frame_range for j in idx)]
    assert refs, idx


def test_draws_with_replacement():
  # Window of 2 around any ref for R = 1, yet 4 more frames are needed: duplicates must occur.
  rng = np.random.default_rng(2)
  idx = sample_clip_indices(rng, 10, 5, 1)
  assert len(set(idx.tolist())) <= 3
  # With a wide window duplicates are still possible (no de-duplication).
  dup = sum(len(set(sample_clip_indices(rng, 100, 5, 50).tolist())) < 5 for _ in range(400))
  assert dup > 0


def test_matches_the_official_draw_sequence():
  # Same generator calls in the same order as the official code (randrange, then choice).
  for seed in range(20):
    length, num_frames, frame_range = 30, 6, 8
    got = sample_clip_indices(np.random.default_rng(seed), length, num_frames, frame_range)
    ref_rng = np.random.default_rng(seed)
    ref = int(ref_rng.integers(length))
    window = np.array(list(range(max(0, ref - frame_range), ref))
                      + list(range(ref + 1, min(length, ref + frame_range + 1))))
    want = sorted(ref_rng.choice(window, num_frames - 1).tolist() + [ref])
    assert got.tolist() == want


@pytest.mark.parametrize("length,frame_range", [(1, 5), (7, 0)])
def test_empty_window_repeats_reference(length, frame_range):
  rng = np.random.default_rng(3)
  for _ in range(20):
    idx = sample_clip_indices(rng, length, 4, frame_range)
    assert len(set(idx.tolist())) == 1 and 0 <= idx[0] < length


def test_single_frame_clip_is_uniform():
  rng = np.random.default_rng(4)
  draws = [int(sample_clip_indices(rng, 6, 1, 3)[0]) for _ in range(3000)]
  np.testing.assert_allclose(np.bincount(draws, minlength=6) / 3000, 1 / 6, atol=0.03)


def test_shuffle_permutes_the_same_frames():
  a = sample_clip_indices(np.random.default_rng(5), 50, 6, 20)
  shuffled = sample_clip_indices(np.random.default_rng(5), 50, 6, 20, shuffle=True)
  assert sorted(shuffled.tolist()) == a.tolist()
  rng = np.random.default_rng(6)
  assert any(np.any(np.diff(sample_clip_indices(rng, 50, 6, 20, shuffle=True)) < 0)
             for _ in range(20))


def test_invalid_arguments():
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="length 0"):
    sample_clip_indices(rng, 0, 3, 2)
  with pytest.raises(ValueError):
    sample_clip_indices(rng, 5, 0, 2)
