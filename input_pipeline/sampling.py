"""Training clip sampler: which frames of a video make up one clip (spec §3.6).

The official sampler (identical in VITA, Mask2Former-VIS and IFC, ``YTVISDatasetMapper``):

  1. a reference frame ``ref`` uniform in ``[0, length)``;
  2. ``T - 1`` further indices drawn **with replacement** from the window
     ``[max(0, ref - R), min(length, ref + R + 1))`` without ``ref`` itself;
  3. ``ref`` is appended and the list sorted (shuffled instead of sorted when
     ``INPUT.SAMPLING_FRAME_SHUFFLE`` is set — the official code sorts, then shuffles).

So a clip may repeat a frame, and it always contains ``ref``. COCO pseudo-videos use the same
sampler over a fake length (``config.input.pseudo.fake_length``) for bookkeeping only.

Edge case the official code does not survive: when the window minus ``ref`` is empty
(``length == 1`` or ``R == 0``) and ``T > 1``, ``np.random.choice`` raises. Here the clip is
then ``T`` copies of ``ref`` instead, so one-frame videos remain usable.
"""

from __future__ import annotations

import numpy as np


def sample_clip_indices(rng: np.random.Generator, length: int, num_frames: int,
                        frame_range: int, shuffle: bool = False) -> np.ndarray:
  """Draws the frame indices of one training clip.

  Args:
    rng: the element's generator (all randomness comes from it).
    length: number of frames in the video (>= 1).
    num_frames: T, frames per clip (>= 1).
    frame_range: R, the half-width of the window around the reference frame (>= 0).
    shuffle: return the indices in random order instead of sorted.

  Returns:
    int32 ``[T]`` frame indices in ``[0, length)``; sorted unless ``shuffle``.
  """
  if length < 1:
    raise ValueError(f"cannot sample a clip from a video of length {length}")
  if num_frames < 1 or frame_range < 0:
    raise ValueError(f"need num_frames >= 1 and frame_range >= 0, got {num_frames}, "
                     f"{frame_range}")
  ref = int(rng.integers(length))
  start = max(0, ref - frame_range)
  end = min(length, ref + frame_range + 1)
  window = np.concatenate([np.arange(start, ref), np.arange(ref + 1, end)])
  if num_frames == 1:
    others = np.zeros((0,), np.int64)
  elif window.size == 0:
    others = np.full((num_frames - 1,), ref)
  else:
    others = rng.choice(window, size=num_frames - 1, replace=True)
  indices = np.sort(np.append(others, ref))
  if shuffle:
    indices = rng.permutation(indices)
  return indices.astype(np.int32)
