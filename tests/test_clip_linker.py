"""Clip linker on hand-built clips: schedule, IoU, linking, merging, streaming of final frames.

Masks are tiny (4 × 4) boxes written as logits ±8 (σ ≈ 0 / 1), so every IoU below can be
counted by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

from vis_jax.inference import clip_linker
from vis_jax.inference.clip_linker import ClipLinker

HW = (4, 4)


def box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
  """A ``[4, 4]`` logit map: +8 inside rows y0:y1, columns x0:x1, −8 elsewhere."""
  m = np.full(HW, -8.0, np.float32)
  m[y0:y1, x0:x1] = 8.0
  return m


def clip(*instances: list[np.ndarray]) -> np.ndarray:
  """``[N, t, 4, 4]`` from per-instance lists of per-frame logit maps."""
  return np.stack([np.stack(frames) for frames in instances])


LEFT, RIGHT, TOP = box(0, 4, 0, 2), box(0, 4, 2, 4), box(0, 2, 0, 4)
EMPTY = np.full(HW, -8.0, np.float32)


@pytest.mark.parametrize("length,window,stride,want", [
    (5, 8, 4, [0]),                 # shorter than a clip: one clip of the whole video
    (8, 8, 4, [0]),
    (10, 4, 3, [0, 3, 6]),          # 6 + 4 = 10: the regular schedule ends exactly
    (11, 4, 3, [0, 3, 6, 7]),       # last clip aligned to the end
    (6, 3, 1, [0, 1, 2, 3]),        # IFC: stride 1
    (9, 3, 3, [0, 3, 6]),           # no overlap
])
def test_clip_starts(length, window, stride, want):
  assert clip_linker.clip_starts(length, window, stride) == want


def test_clip_starts_rejects_bad_stride():
  with pytest.raises(ValueError, match="stride"):
    clip_linker.clip_starts(10, 4, 5)
  with pytest.raises(ValueError, match="stride"):
    clip_linker.clip_starts(10, 4, 0)


def test_mask_iou_hand_values():
  a = np.stack([LEFT > 0, TOP > 0]).astype(np.float64)     # 8 px each
  b = np.stack([LEFT > 0, RIGHT > 0, np.zeros(HW)]).astype(np.float64)
  iou = clip_linker.mask_iou(a, b, soft=False)
  # LEFT∩LEFT = 8/8; LEFT∩RIGHT = 0; TOP∩LEFT = 4 / 12; TOP∩RIGHT = 4 / 12; empty → 0.
  np.testing.assert_allclose(iou, [[1, 0, 0], [1 / 3, 1 / 3, 0]])
  # Soft IoU on probabilities: p = 0.5 everywhere vs LEFT: Σpq = 4, Σ(p+q−pq) = 8 + 8 − 4.
  half = np.full((1, *HW), 0.5)
  np.testing.assert_allclose(clip_linker.mask_iou(half, a[:1], soft=True), [[4 / 12]])
  np.testing.assert_allclose(clip_linker.mask_iou(half, a[:1], soft=False), [[0.0]])


def test_swapped_candidates_link_to_their_tracks_and_overlap_is_averaged():
  """Clip 1 frames 0-2: A on the left, B on the right. Clip 2 frames 2-4 lists them in the
  other order; they must keep their ids, frame 2 (shared) is the mean of both clips' logits."""
  linker = ClipLinker(iou_threshold=0.5, soft_iou=False)
  ids1 = linker.add_clip(0, clip([LEFT] * 3, [RIGHT] * 3), np.array([[0.9, 0.1], [0.2, 0.8]]))
  np.testing.assert_array_equal(ids1, [0, 1])
  seg = linker.pop_final(2)   # frames 0, 1 are final (the next clip starts at 2)
  assert seg.start == 0 and seg.num_frames == 2
  np.testing.assert_array_equal(seg.track_ids, [0, 1])
  np.testing.assert_array_equal(seg.mask_logits[0, 1], LEFT)
  np.testing.assert_array_equal(seg.present, np.ones((2, 2), bool))

  shifted_left = box(0, 4, 0, 3)   # A grows by a column in clip 2's view of frame 2
  ids2 = linker.add_clip(2, clip([RIGHT] * 3, [shifted_left] * 3),
                         np.array([[0.3, 0.7], [0.5, 0.5]]))
  np.testing.assert_array_equal(ids2, [1, 0])
  assert linker.num_tracks == 2
  seg = linker.pop_final()
  assert seg.start == 2 and seg.num_frames == 3
  np.testing.assert_array_equal(seg.track_ids, [0, 1])
  np.testing.assert_allclose(seg.mask_logits[0, 0], (LEFT + shifted_left) / 2)
  np.testing.assert_allclose(seg.mask_logits[0, 1], shifted_left)
  # Class probabilities: mean over the clips each track was linked in.
  np.testing.assert_allclose(linker.class_probs(), [[0.7, 0.3], [0.25, 0.75]])
  assert linker.pop_final() is None


def test_new_objects_open_tracks_and_absent_frames_are_marked():
  """An object entering in clip 2 (nothing to overlap with) gets a new id; a track that does
  not continue keeps its frames and is absent afterwards."""
  linker = ClipLinker(iou_threshold=0.5, soft_iou=True)
  linker.add_clip(0, clip([LEFT] * 2), np.array([[1.0, 0.0]]))
  linker.pop_final(1)
  # Clip 2 (frames 1-2): the left object is gone, one object on the right appears.
  ids = linker.add_clip(1, clip([EMPTY, RIGHT]), np.array([[0.0, 1.0]]))
  np.testing.assert_array_equal(ids, [1])
  seg = linker.pop_final()
  np.testing.assert_array_equal(seg.track_ids, [0, 1])
  np.testing.assert_array_equal(seg.present, [[True, False], [True, True]])
  assert (seg.mask_logits[0, 1] == clip_linker.ABSENT_LOGIT).all()
  np.testing.assert_allclose(seg.mask_logits[1, 0], EMPTY)


def test_iou_below_threshold_does_not_link():
  """TOP overlaps LEFT with IoU 1/3: linked at threshold 0.3, a new track at 0.5."""
  for threshold, want in ((0.3, [0]), (0.5, [1])):
    linker = ClipLinker(iou_threshold=threshold, soft_iou=False)
    linker.add_clip(0, clip([LEFT] * 2), np.ones((1, 1)))
    np.testing.assert_array_equal(linker.add_clip(1, clip([TOP] * 2), np.ones((1, 1))), want)


def strip(x0: int, x1: int) -> np.ndarray:
  """A ``[1, 20]`` logit map, foreground on columns x0:x1."""
  m = np.full((1, 20), -8.0, np.float32)
  m[0, x0:x1] = 8.0
  return m


def test_assignment_is_optimal_not_greedy():
  """Tracks X = columns 0-9, Y = 10-19. Candidate 0 covers 0-18 (IoU 10/19 with X, 9/20 with
  Y), candidate 1 covers 0-4 (IoU 5/10 with X, 0 with Y). Greedy would take the best pair
  0↔X and leave candidate 1 without a track; the Hungarian optimum links 0↔Y and 1↔X."""
  x_track, y_track, cand0, cand1 = strip(0, 10), strip(10, 20), strip(0, 19), strip(0, 5)
  iou = clip_linker.mask_iou((np.stack([cand0, cand1]) > 0).astype(float),
                             (np.stack([x_track, y_track]) > 0).astype(float), soft=False)
  np.testing.assert_allclose(iou, [[10 / 19, 9 / 20], [5 / 10, 0]])
  linker = ClipLinker(iou_threshold=0.4, soft_iou=False)
  linker.add_clip(0, clip([x_track] * 2, [y_track] * 2), np.ones((2, 1)))
  ids = linker.add_clip(1, clip([cand0] * 2, [cand1] * 2), np.ones((2, 1)))
  np.testing.assert_array_equal(ids, [1, 0])
  assert linker.num_tracks == 2


def test_valid_region_restricts_the_iou():
  """Candidates that agree inside the valid region but differ in the padding link only when
  the padding is excluded."""
  a, b = box(0, 2, 0, 2), box(0, 2, 0, 2)
  b[3, :] = 8.0   # garbage in the padded last row
  for valid_hw, want in ((None, [1]), ((3, 4), [0])):
    linker = ClipLinker(iou_threshold=0.6, soft_iou=False, valid_hw=valid_hw)
    linker.add_clip(0, clip([a] * 2), np.ones((1, 1)))
    np.testing.assert_array_equal(linker.add_clip(1, clip([b] * 2), np.ones((1, 1))), want)


def test_popped_frames_cannot_be_revisited_and_memory_is_bounded():
  linker = ClipLinker()
  for start in clip_linker.clip_starts(40, 4, 2):
    linker.add_clip(start, clip([LEFT] * 4), np.ones((1, 1)))
    assert len(linker._open) <= 4   # only the current clip's frames are held
    linker.pop_final(start + 2)
  assert linker.num_tracks == 1     # one object all along: one track
  with pytest.raises(ValueError, match="popped"):
    linker.add_clip(0, clip([LEFT] * 4), np.ones((1, 1)))


def test_iter_clips_reads_each_frame_once_and_yields_the_right_frames(monkeypatch):
  """Frames carry their index as pixel value; a fake reader counts reads."""
  import types

  from input_pipeline import eval_source

  reads = []

  def fake_chunks(video, chunk_size, pad_last=False):
    for start in range(0, video.length, chunk_size):
      n = min(chunk_size, video.length - start)
      reads.extend(range(start, start + n))
      images = np.arange(start, start + n, dtype=np.uint8)[:, None, None, None]
      yield eval_source.FrameChunk(start, np.broadcast_to(images, (n, 2, 2, 3)), n)

  monkeypatch.setattr(eval_source, "iter_frame_chunks", fake_chunks)
  video = types.SimpleNamespace(length=11)
  clips = list(clip_linker.iter_clips(video, clip_length=4, stride=3, read_chunk=2))
  assert [s for s, _ in clips] == [0, 3, 6, 7]
  for start, frames in clips:
    np.testing.assert_array_equal(frames[:, 0, 0, 0], np.arange(start, start + 4))
  assert reads == list(range(11))
  short = list(clip_linker.iter_clips(types.SimpleNamespace(length=3), 4, 2, read_chunk=2))
  assert [(s, len(f)) for s, f in short] == [(0, 3)]
