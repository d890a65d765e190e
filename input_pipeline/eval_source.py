"""Whole-video evaluation inputs: videos at test size, read lazily in fixed-size frame chunks.

An ``EvalSource`` indexes a dataset's records without holding pixels; ``iter_frame_chunks``
reads, resizes and pads a video's frames ``chunk_size`` at a time, so inference memory does not
grow with the video's length (VITA's unlimited-length inference, Mask2Former-VIS's chunked mode).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np

from input_pipeline import frames, transforms
from input_pipeline.records import InstanceTrack, VideoRecord


@dataclasses.dataclass(frozen=True)
class EvalVideo:
  """One evaluation video; frames are read lazily by ``iter_frame_chunks``.

  Attributes:
    record: the video record (frame paths, GT tracks).
    video_id: dataset video id.
    length: number of frames.
    original_size: (height, width) of the stored frames (predictions are resized back to it).
    resized_size: (h, w) after the test resize (shorter side ``min_size_test``).
    padded_size: (H, W): ``resized_size`` rounded up to ``size_divisibility`` (or one square
      for every video with ``input.test_pad_square``).
  """

  record: VideoRecord
  video_id: int
  length: int
  original_size: tuple[int, int]
  resized_size: tuple[int, int]
  padded_size: tuple[int, int]

  @property
  def tracks(self) -> tuple[InstanceTrack, ...]:
    return self.record.tracks


@dataclasses.dataclass(frozen=True)
class FrameChunk:
  """Consecutive frames of one video.

  Attributes:
    start: index of the first frame.
    images: uint8 ``[t, H, W, 3]`` resized, zero padded to ``padded_size``.
    num_valid: real frames in ``images`` (< t only for a last chunk padded to full length).
  """

  start: int
  images: np.ndarray
  num_valid: int


class EvalSource(Sequence[EvalVideo]):
  """Random-access sequence of ``EvalVideo``s (no pixels held; records are indexed lazily)."""

  def __init__(self, records: Sequence[VideoRecord], min_size: int, max_size: int,
               size_divisibility: int, indices: Sequence[int] | None = None,
               pad_square: bool = False):
    self._records = records
    self._pad_square = pad_square
    self._indices = range(len(records)) if indices is None else indices
    self._min_size, self._max_size = min_size, max_size
    self._div = max(1, size_divisibility)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index):  # type: ignore[override]
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    r = self._records[self._indices[index]]
    h, w = transforms.resize_shortest_edge_size(r.height, r.width, self._min_size, self._max_size)
    padded = (math.ceil(h / self._div) * self._div, math.ceil(w / self._div) * self._div)
    if self._pad_square:
      side = math.ceil(max(self._max_size, *padded) / self._div) * self._div
      padded = (side, side)
    return EvalVideo(r, r.video_id, r.length, (r.height, r.width), (h, w), padded)


def make_eval_source(config: ml_collections.ConfigDict, loaded: Any,
                     process_index: int = 0, process_count: int = 1) -> EvalSource:
  """Whole videos at test size from a ``LoadedDataset`` (or a list of records).

  ``process_index::process_count`` selects this process's share of the videos (default: all).
  """
  records = getattr(loaded, "records", loaded)
  return EvalSource(records, config.input.min_size_test, config.input.max_size_test,
                    config.input.size_divisibility,
                    range(process_index, len(records), process_count),
                    pad_square=bool(config.input.get("test_pad_square", False)))


def iter_frame_chunks(video: EvalVideo, chunk_size: int,
                      pad_last: bool = False) -> Iterator[FrameChunk]:
  """Reads, resizes and pads ``video``'s frames ``chunk_size`` at a time (bounded memory).

  With ``pad_last`` the final chunk is zero-padded to ``chunk_size`` frames (static shapes).

  Raises:
    frames.DataError: a frame is missing, truncated or mis-sized (names the file).
  """
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  big_h, big_w = video.padded_size
  h, w = video.resized_size
  for start in range(0, video.length, chunk_size):
    count = min(chunk_size, video.length - start)
    images = np.zeros((chunk_size if pad_last else count, big_h, big_w, 3), np.uint8)
    for k in range(count):
      frame = frames.read_frame(video.record, start + k)
      images[k, :h, :w] = transforms.resize_image(frame, (h, w))
    yield FrameChunk(start, images, count)
