"""Stitching a long video from overlapping clips: tracks linked by mask IoU (near-online).

Offline models (Mask2Former-VIS, VisTR) see a whole video at once; when it does not fit in
memory, users of the official code split it into overlapping clips and link the clips' instances
by the IoU of their masks on the shared frames (facebookresearch/Mask2Former#138, spec §9.1).
IFC's near-online inference (spec §4.6) is the same rule with clips of 5 frames at stride 1.
This module is that rule, model-agnostic and in numpy:

1. **Schedule** (``clip_starts``): clips of ``clip_length`` frames every ``stride`` frames, the
   last one aligned to the video end (``[L − clip_length, L)``, IFC's rule), so every clip has
   the same length (one compilation); a video no longer than a clip is one clip.
2. **Candidates**: each clip brings ``N`` instances: mask logits ``[N, t, h, w]`` on its frames
   and class probabilities ``[N, K]``.
3. **Similarity** of candidate ``i`` and track ``j``: mask IoU over the frames the clip shares
   with frames already seen (the overlap), between the candidate's probabilities and the track's
   current merged probabilities there (``σ`` of its mean logit; 0 where it has none). ``soft``
   IoU = ``Σ p·q / Σ (p + q − p·q)`` (IFC); hard IoU binarises both at 0.5 first. IFC averages
   per-stored-clip IoUs instead of comparing with the merged mask; with one stored clip per
   frame (stride ≥ clip_length / 2) the two are the same.
4. **Assignment**: Hungarian (``scipy``, maximising the total IoU) over candidates × tracks;
   an assigned pair with IoU ≥ ``iou_threshold`` links, every other candidate opens a new track.
5. **Merging**: a track's logit at a frame is the mean of the logits of the clips linked to it
   that cover the frame (IFC); its class probabilities are the mean over the clips it was
   linked in.
6. **Streaming**: frames before the next clip's start can no longer change; ``pop_final``
   returns them as a ``Segment`` and forgets them, so memory holds only the overlap window
   (``O(N · clip_length · h · w)`` whatever the video length).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

# Logit written where a track has no prediction in a frame of a segment: an empty mask once
# thresholded (> 0) and upsampled, whatever the interpolation.
ABSENT_LOGIT = -1e4


def clip_starts(length: int, clip_length: int, stride: int) -> list[int]:
  """First frames of the clips covering ``length`` frames.

  Args:
    length: video length ``L`` (≥ 1).
    clip_length: frames per clip ``W`` (≥ 1).
    stride: frames between clip starts, ``1 ≤ stride ≤ W`` (``W − stride`` frames overlap).

  Returns:
    Increasing starts; every clip is ``[s, s + W)`` inside the video except when ``L ≤ W``
    (then ``[0]``, one clip of ``L`` frames); the last clip ends at ``L``.
  """
  if length < 1 or clip_length < 1:
    raise ValueError(f"length and clip_length must be >= 1, got {length}, {clip_length}")
  if not 1 <= stride <= clip_length:
    raise ValueError(f"stride must be in [1, clip_length={clip_length}], got {stride}")
  if length <= clip_length:
    return [0]
  starts = list(range(0, length - clip_length + 1, stride))
  if starts[-1] + clip_length < length:
    starts.append(length - clip_length)
  return starts


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free


def mask_iou(a: np.ndarray, b: np.ndarray, soft: bool = True) -> np.ndarray:
  """Pairwise IoU of two sets of (video) masks given as probabilities.

  Args:
    a: ``[N, ...]`` probabilities in [0, 1].
    b: ``[M, ...]`` probabilities, same trailing shape.
    soft: soft IoU ``Σ a·b / Σ (a + b − a·b)``; False binarises both at 0.5 (``>``) first.

  Returns:
    ``[N, M]`` float64; 0 where the union is empty.
  """
  a = np.asarray(a, np.float64).reshape(len(a), -1)
  b = np.asarray(b, np.float64).reshape(len(b), -1)
  if not soft:
    a, b = (a > 0.5).astype(np.float64), (b > 0.5).astype(np.float64)
  inter = a @ b.T
  union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
  return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


@dataclasses.dataclass(frozen=True)
class Segment:
  """Final frames ``[start, start + num_frames)`` of the tracks that have data in them.

  Attributes:
    start: first frame.
    track_ids: ``[n]`` int64, increasing.
    mask_logits: ``[n, num_frames, h, w]`` float32 merged logits (``ABSENT_LOGIT`` where a track
      has no prediction in a frame).
    present: ``[n, num_frames]`` bool, the track has a prediction in the frame.
  """

  start: int
  track_ids: np.ndarray
  mask_logits: np.ndarray
  present: np.ndarray

  @property
  def num_frames(self) -> int:
    return int(self.present.shape[1])


class ClipLinker:
  """Links the instances of consecutive overlapping clips into tracks (module docstring).

  Usage: for each clip in order, ``ids = linker.add_clip(start, logits, probs)`` then
  ``linker.pop_final(next_start)`` (``pop_final()`` after the last clip) and consume the
  segments; ``class_probs()`` gives every track's mean class probabilities.

  Args:
    iou_threshold: minimum IoU for an assigned pair to link.
    soft_iou: soft IoU on probabilities (IFC) or hard IoU on masks binarised at 0.5.
    valid_hw: optional ``(h, w)``: only ``[:h, :w]`` of the masks counts for the IoU (the
      un-padded image region at the masks' resolution).
  """

  def __init__(self, iou_threshold: float = 0.5, soft_iou: bool = True,
               valid_hw: tuple[int, int] | None = None):
    self.iou_threshold = float(iou_threshold)
    self.soft_iou = bool(soft_iou)
    self.valid_hw = None if valid_hw is None else (int(valid_hw[0]), int(valid_hw[1]))
    self._class_sum: list[np.ndarray] = []
    self._clip_count: list[int] = []
    # Open (not yet final) frames: frame → {track: [logit sum [h, w], count]}.
    self._open: dict[int, dict[int, list]] = {}
    self._final_until = 0  # frames < this were popped
    self._seen_until = 0   # frames < this were covered by some clip
    self._mask_hw: tuple[int, int] | None = None
    self._num_classes = 0

  @property
  def num_tracks(self) -> int:
    return len(self._class_sum)

  def _crop(self, x: np.ndarray) -> np.ndarray:
    if self.valid_hw is None:
      return x
    return x[..., :self.valid_hw[0], :self.valid_hw[1]]

  def _similarity(self, start: int, probs: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """IoU ``[N, M]`` of the candidates with the M tracks present on the overlap frames."""
    overlap = [f for f in range(start, min(start + probs.shape[1], self._seen_until))
               if f in self._open]
    tracks = sorted({j for f in overlap for j in self._open[f]})
    if not overlap or not tracks or not len(probs):
      return np.zeros((len(probs), len(tracks))), tracks
    h, w = probs.shape[-2:]
    merged = np.zeros((len(tracks), len(overlap), h, w), np.float32)
    for k, f in enumerate(overlap):
      for m, j in enumerate(tracks):
        if j in self._open[f]:
          total, count = self._open[f][j]
          merged[m, k] = _sigmoid(total / count)
    cand = probs[:, [f - start for f in overlap]]
    return mask_iou(self._crop(cand), self._crop(merged), self.soft_iou), tracks

  def add_clip(self, start: int, mask_logits: np.ndarray, class_probs: np.ndarray
               ) -> np.ndarray:
    """Links one clip's candidates.

    Args:
      start: the clip's first frame (clips must come in increasing order and may not reach
        back before frames already popped).
      mask_logits: ``[N, t, h, w]`` the candidates' mask logits on frames
        ``[start, start + t)``.
      class_probs: ``[N, K]`` their class probabilities.

    Returns:
      ``[N]`` int64 track id of each candidate (new tracks get the next free ids, in candidate
      order).
    """
    mask_logits = np.asarray(mask_logits, np.float32)
    class_probs = np.asarray(class_probs, np.float64)
    if mask_logits.ndim != 4 or class_probs.shape[:1] != mask_logits.shape[:1]:
      raise ValueError(f"mask_logits [N, t, h, w] and class_probs [N, K] expected, got "
                       f"{mask_logits.shape} and {class_probs.shape}")
    if start < self._final_until:
      raise ValueError(f"clip at frame {start} reaches into frames already popped "
                       f"(< {self._final_until})")
    if self._mask_hw is None:
      self._mask_hw = mask_logits.shape[-2:]
      self._num_classes = class_probs.shape[1]
    elif mask_logits.shape[-2:] != self._mask_hw:
      raise ValueError(f"mask size {mask_logits.shape[-2:]} differs from {self._mask_hw}")
    n, t = mask_logits.shape[:2]
    sim, tracks = self._similarity(start, _sigmoid(mask_logits))
    ids = np.full(n, -1, np.int64)
    if sim.size:
      rows, cols = linear_sum_assignment(sim, maximize=True)
      for i, m in zip(rows, cols, strict=True):
        if sim[i, m] >= self.iou_threshold:
          ids[i] = tracks[m]
    for i in range(n):
      if ids[i] < 0:
        ids[i] = self.num_tracks
        self._class_sum.append(np.zeros(class_probs.shape[1]))
        self._clip_count.append(0)
      self._class_sum[ids[i]] = self._class_sum[ids[i]] + class_probs[i]
      self._clip_count[ids[i]] += 1
      for k in range(t):
        entry = self._open.setdefault(start + k, {}).setdefault(int(ids[i]), [0.0, 0])
        entry[0] = entry[0] + mask_logits[i, k]
        entry[1] += 1
    for k in range(t):
      self._open.setdefault(start + k, {})
    self._seen_until = max(self._seen_until, start + t)
    return ids

  def pop_final(self, until: int | None = None) -> Segment | None:
    """Returns and forgets frames ``[popped so far, until)`` (None = every frame seen).

    Call it with the next clip's start: those frames are final. Returns None when there is
    nothing to pop.
    """
    until = self._seen_until if until is None else min(int(until), self._seen_until)
    start = self._final_until
    if until <= start:
      return None
    frames = [self._open.pop(f, {}) for f in range(start, until)]
    self._final_until = until
    tracks = sorted({j for entry in frames for j in entry})
    h, w = self._mask_hw
    logits = np.full((len(tracks), len(frames), h, w), ABSENT_LOGIT, np.float32)
    present = np.zeros((len(tracks), len(frames)), bool)
    for k, entry in enumerate(frames):
      for m, j in enumerate(tracks):
        if j in entry:
          total, count = entry[j]
          logits[m, k] = total / count
          present[m, k] = True
    return Segment(start, np.asarray(tracks, np.int64), logits, present)

  def class_probs(self) -> np.ndarray:
    """``[num_tracks, K]`` mean class probabilities over the clips each track was linked in."""
    if not self._class_sum:
      return np.zeros((0, self._num_classes))
    return np.stack(self._class_sum) / np.asarray(self._clip_count, np.float64)[:, None]


def iter_clips(video: Any, clip_length: int, stride: int, read_chunk: int = 8
               ) -> Iterator[tuple[int, np.ndarray]]:
  """The frames of each scheduled clip of an evaluation video, each frame read once.

  Args:
    video: ``input_pipeline.eval_source.EvalVideo``.
    clip_length, stride: as ``clip_starts``.
    read_chunk: frames read (and resized) at a time.

  Yields:
    ``(start, frames)``: ``frames`` uint8 ``[min(clip_length, L), H, W, 3]`` (padded size);
    at most ``clip_length + read_chunk`` frames are held at once.
  """
  from input_pipeline import eval_source  # local: the linker itself needs no data code

  starts = clip_starts(video.length, clip_length, stride)
  reader = eval_source.iter_frame_chunks(video, max(1, int(read_chunk)))
  buffer: dict[int, np.ndarray] = {}
  read_until = 0
  for start in starts:
    end = min(start + clip_length, video.length)
    while read_until < end:
      part = next(reader)
      for k in range(part.num_valid):
        buffer[part.start + k] = part.images[k]
      read_until = part.start + part.num_valid
    for f in [f for f in buffer if f < start]:
      del buffer[f]
    yield start, np.stack([buffer[f] for f in range(start, end)])
