"""The record types that flow between readers, samplers and the grain pipeline.

A reader (``input_pipeline/datasets.py``) turns a dataset on disk into a list of
``VideoRecord``s: light-weight, picklable metadata with *encoded* annotations. Nothing is
decoded at read time; the pipeline decodes only the frames a clip samples.

A ``Clip`` is what one pipeline element becomes after sampling, decoding and augmentation,
before padding to static shapes. ``Batch`` is the padded, stacked result fed to jit.

Conventions (see docs/architecture.md "Shared vocabulary"):
  * class ids inside records are contiguous ``0..K-1``; dataset category ids are kept in
    ``VideoRecord.category_ids`` maps at the edges (readers and result writers);
  * arrays are channels-last; images are uint8 RGB ``[T, H, W, 3]`` until normalised in-model;
  * a segmentation is a pycocotools RLE dict (``{"size": [h, w], "counts": str | list}``),
    a polygon list, or ``None`` where the instance is absent from the frame.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

Segmentation = dict[str, Any] | list[list[float]] | None


@dataclasses.dataclass(frozen=True)
class InstanceTrack:
  """One annotated object across a whole video.

  Attributes:
    track_id: the dataset's annotation id (unique within the dataset).
    label: contiguous class id in ``[0, K)``.
    segmentations: one entry per video frame; ``None`` where the object is absent.
    iscrowd: crowd flag as in the json (crowd tracks are kept for evaluation only).
    occlusion: optional OVIS-style per-frame occlusion label list (``None`` if not given).
  """

  track_id: int
  label: int
  segmentations: tuple[Segmentation, ...]
  iscrowd: int = 0
  occlusion: tuple[Any, ...] | None = None


@dataclasses.dataclass(frozen=True)
class VideoRecord:
  """One video (or one COCO image seen as a pseudo-video).

  Attributes:
    source: name of the data source in the config (``config.data.sources.<name>``).
    video_id: the dataset's video id (or COCO image id for pseudo-videos).
    frame_paths: absolute path of each frame; a pseudo-video has exactly one path.
    height, width: original frame size in pixels.
    tracks: the annotated objects (empty for an unannotated eval video).
    pseudo_length: for COCO pseudo-videos, the fake video length used for frame-index
      bookkeeping (spec §3.6: uniform in [16, 48]); 0 for real videos.
    frame_bytes: encoded frames held in memory (ArrayRecord sources); ``None`` means read
      ``frame_paths`` from disk. ``frame_paths`` are still given (for error messages).
  """

  source: str
  video_id: int
  frame_paths: tuple[str, ...]
  height: int
  width: int
  tracks: tuple[InstanceTrack, ...] = ()
  pseudo_length: int = 0
  frame_bytes: tuple[bytes, ...] | None = None

  @property
  def is_pseudo(self) -> bool:
    return self.pseudo_length > 0

  @property
  def length(self) -> int:
    return self.pseudo_length if self.is_pseudo else len(self.frame_paths)


@dataclasses.dataclass
class Clip:
  """A sampled, decoded and augmented clip (variable shapes, before padding).

  Attributes:
    images: uint8 ``[T, H, W, 3]``.
    masks: bool ``[N, T, H, W]`` visible mask of each instance in each frame.
    labels: int32 ``[N]`` contiguous class ids.
    present: bool ``[N, T]``: the instance's visible mask is non-empty in that frame after
      augmentation (official ``prepare_targets``: null or cropped-away counts as absent).
    track_ids: int64 ``[N]`` dataset annotation ids.
    frame_indices: int32 ``[T]`` indices of the sampled frames in the original video.
    video_id: the dataset video id.
    source_index: index of the source in the sorted source-name list.
  """

  images: np.ndarray
  masks: np.ndarray
  labels: np.ndarray
  present: np.ndarray
  track_ids: np.ndarray
  frame_indices: np.ndarray
  video_id: int
  source_index: int = 0
