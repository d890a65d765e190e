"""Per-clip geometric augmentation of frames and masks (numpy / PIL), spec §3.6.

Every random choice is drawn once per clip (``draw_clip_augmentation``) and applied to all T
frames (``augment_clip``), so an object keeps its geometry across the clip except for the moving
crop and the pseudo-video rotation, which vary per frame on purpose. The order follows the
official ``build_augmentation`` / ``build_pseudo_augmentation`` (VITA
``vita/data/augmentation.py``):

  1. with probability ``crop.prob``: resize the shorter side to one of ``crop.resize_min_sizes``
     (max long side ``crop.resize_max_size``; detectron2 ``ResizeShortestEdge`` rule), then a
     *moving* crop (``RandomCropClip``, type ``absolute_range``): crop height and width uniform in
     ``[min(side, crop.min_size), min(side, crop.max_size)]``, a first corner ``(y0, x0)`` uniform
     over valid origins, a second corner ``(y1, x1)`` uniform in ``[y0, side - crop]`` (so it is
     below-right of the first), per-frame weights ``x = sort(uniform(T))``, frame origin
     ``round(c0 * x + c1 * (1 - x))``, and the frame order reversed with probability 0.5;
  2. resize the shorter side to one of ``min_sizes`` with max long side ``max_size``;
  3. horizontal flip with probability ``flip_prob``;
  4. pseudo-videos only, last (as in the official list): rotation counter-clockwise by a
     per-frame angle (``T`` draws uniform in ``±rotation_degrees``, sorted, reversed with
     probability 0.5) about a centre uniform in ``rotation_center²`` (relative to the image),
     same output size (no expand), zero fill.

Implementation choice: steps 1-2 are one resample per frame, from the crop box mapped back to
the original frame straight to the output size (PIL ``resize(box=...)`` for images, bilinear with
PIL's antialiasing as detectron2 uses; nearest-neighbour index maps for masks). The geometry is
the same as resizing, cropping and resizing again; the pixels differ only by interpolation, and a
CPU host saves two full-size resamples per frame. Masks use nearest-neighbour everywhere (the
official RLE path does too; official COCO polygons are rasterised after the transform instead).
All sizes are ``(height, width)``; pixel ``i`` covers the continuous interval ``[i, i + 1)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image


def resize_shortest_edge_size(height: int, width: int, short_edge: int,
                              max_size: int) -> tuple[int, int]:
  """detectron2 ``ResizeShortestEdge`` output size, including its rounding.

  The shorter side becomes ``short_edge``; if the longer side then exceeds ``max_size``, both are
  scaled down so that it equals ``max_size``; each side is rounded half up (``int(x + 0.5)``).
  """
  scale = short_edge / min(height, width)
  if height < width:
    new_h, new_w = float(short_edge), scale * width
  else:
    new_h, new_w = scale * height, float(short_edge)
  if max(new_h, new_w) > max_size:
    rescale = max_size / max(new_h, new_w)
    new_h, new_w = new_h * rescale, new_w * rescale
  return int(new_h + 0.5), int(new_w + 0.5)


def fit_within(size: tuple[int, int], bound: tuple[int, int]) -> tuple[int, int]:
  """Largest size with ``size``'s aspect ratio (rounded) that fits in ``bound``; no upscaling."""
  h, w = size
  scale = min(1.0, bound[0] / h, bound[1] / w)
  if scale >= 1.0:
    return h, w
  return max(1, min(bound[0], int(h * scale + 0.5))), max(1, min(bound[1], int(w * scale + 0.5)))


def draw_moving_crop(rng: np.random.Generator, height: int, width: int, num_frames: int,
                     min_size: int, max_size: int, moving: bool = True) -> np.ndarray:
  """Per-frame crop boxes of the official moving crop (``RandomCropClip``, absolute_range).

  Returns:
    int32 ``[T, 4]`` rows ``(top, left, crop_height, crop_width)``; the size is shared by all
    frames, the origins lie on the segment between two random corners (see module docstring).
    With ``moving=False`` every frame uses the first corner (a plain per-clip random crop).
  """
  crop_h = int(rng.integers(min(height, min_size), min(height, max_size) + 1))
  crop_w = int(rng.integers(min(width, min_size), min(width, max_size) + 1))
  y0 = int(rng.integers(height - crop_h + 1))
  x0 = int(rng.integers(width - crop_w + 1))
  boxes = np.empty((num_frames, 4), np.int32)
  boxes[:, 2], boxes[:, 3] = crop_h, crop_w
  if not moving:
    boxes[:, 0], boxes[:, 1] = y0, x0
    return boxes
  y1 = int(rng.integers(y0, height - crop_h + 1))
  x1 = int(rng.integers(x0, width - crop_w + 1))
  weights = np.sort(rng.random(num_frames))
  tops = np.round(y0 * weights + y1 * (1 - weights)).astype(np.int32)
  lefts = np.round(x0 * weights + x1 * (1 - weights)).astype(np.int32)
  if rng.random() < 0.5:
    tops, lefts = tops[::-1], lefts[::-1]
  boxes[:, 0], boxes[:, 1] = tops, lefts
  return boxes


def draw_rotation(rng: np.random.Generator, num_frames: int, degrees: float,
                  center_range: Sequence[float]) -> tuple[np.ndarray, tuple[float, float]]:
  """Pseudo-video rotation draws (``RandomRotationClip``).

  Returns:
    (angles, center): float64 ``[T]`` counter-clockwise degrees, sorted then reversed with
    probability 0.5; ``(cx, cy)`` relative to the image width / height, each uniform in
    ``center_range``.
  """
  angles = np.sort(rng.uniform(-degrees, degrees, size=num_frames))
  lo, hi = center_range
  center = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
  if rng.random() < 0.5:
    angles = angles[::-1].copy()
  return angles, center


@dataclasses.dataclass(frozen=True, eq=False)
class ClipAugmentation:
  """All random choices for one clip; ``augment_clip`` applies them deterministically.

  Attributes:
    input_size: (H0, W0) of the decoded frames.
    crop_resize: size the frames are resized to before cropping, or ``None`` (no pre-resize).
    crop_boxes: int32 ``[T, 4]`` ``(top, left, height, width)`` in ``crop_resize`` coordinates
      (or input coordinates without pre-resize), or ``None`` for no crop.
    output_size: (h, w) of the augmented frames.
    flip: mirror horizontally.
    rotation_angles: float ``[T]`` counter-clockwise degrees (pseudo-videos), or ``None``.
    rotation_center: (x, y) relative to ``output_size``, or ``None``.
  """

  input_size: tuple[int, int]
  crop_resize: tuple[int, int] | None
  crop_boxes: np.ndarray | None
  output_size: tuple[int, int]
  flip: bool
  rotation_angles: np.ndarray | None = None
  rotation_center: tuple[float, float] | None = None

  def source_box(self, t: int) -> tuple[float, float, float, float]:
    """Frame ``t``'s crop as ``(left, top, right, bottom)`` in input-pixel coordinates."""
    in_h, in_w = self.input_size
    if self.crop_boxes is None:
      return 0.0, 0.0, float(in_w), float(in_h)
    top, left, ch, cw = (int(v) for v in self.crop_boxes[t])
    sy, sx = 1.0, 1.0
    if self.crop_resize is not None:
      sy, sx = self.crop_resize[0] / in_h, self.crop_resize[1] / in_w
    return left / sx, top / sy, (left + cw) / sx, (top + ch) / sy


def draw_clip_augmentation(rng: np.random.Generator, height: int, width: int, num_frames: int,
                           input_config: Any, pseudo: bool = False) -> ClipAugmentation:
  """Draws every augmentation choice for one clip from ``config.input`` (see module docstring).

  Args:
    rng: the element's generator.
    height, width: size of the decoded frames.
    num_frames: T.
    input_config: ``config.input`` (``crop``, ``min_size_train``, ``max_size_train``,
      ``flip_prob``, ``pseudo``).
    pseudo: a COCO pseudo-video: ``input_config.pseudo`` sizes and the per-frame rotation.
  """
  crop_cfg = input_config.crop
  crop_resize, boxes = None, None
  size = (height, width)
  if crop_cfg.enabled and rng.random() < crop_cfg.prob:
    if crop_cfg.resize_min_sizes:
      short = int(rng.choice(np.asarray(crop_cfg.resize_min_sizes)))
      crop_resize = resize_shortest_edge_size(height, width, short, crop_cfg.resize_max_size)
      size = crop_resize
    boxes = draw_moving_crop(rng, size[0], size[1], num_frames, crop_cfg.min_size,
                             crop_cfg.max_size, crop_cfg.moving)
    size = (int(boxes[0, 2]), int(boxes[0, 3]))
  sizes_cfg = input_config.pseudo if pseudo else input_config
  short = int(rng.choice(np.asarray(sizes_cfg.min_size_train)))
  output_size = resize_shortest_edge_size(size[0], size[1], short, sizes_cfg.max_size_train)
  flip = bool(rng.random() < input_config.flip_prob)
  angles, center = None, None
  if pseudo and input_config.pseudo.rotation_degrees > 0:
    angles, center = draw_rotation(rng, num_frames, input_config.pseudo.rotation_degrees,
                                   input_config.pseudo.rotation_center)
  return ClipAugmentation((height, width), crop_resize, boxes, output_size, flip, angles, center)


def eval_augmentation(height: int, width: int, min_size: int, max_size: int) -> ClipAugmentation:
  """The deterministic evaluation transform: shorter side to ``min_size``, long side capped."""
  out = resize_shortest_edge_size(height, width, min_size, max_size)
  return ClipAugmentation((height, width), None, None, out, False)


# ---- application ---------------------------------------------------------------------------


def _nearest_indices(start: float, stop: float, out_len: int, in_len: int) -> np.ndarray:
  """Source index of each output pixel: the input pixel containing the output pixel centre."""
  pos = start + (np.arange(out_len) + 0.5) * ((stop - start) / out_len)
  return np.clip(np.floor(pos).astype(np.int64), 0, in_len - 1)


def _rotation_source(out_size: tuple[int, int], angle: float,
                     center: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
  """Source (x, y) of each output pixel centre for a counter-clockwise rotation about center.

  Same convention as PIL ``Image.rotate`` (and detectron2 ``RotationTransform``): the content
  turns counter-clockwise on screen (y pointing down).
  """
  h, w = out_size
  cx, cy = center
  theta = math.radians(angle)
  cos, sin = math.cos(theta), math.sin(theta)
  ys, xs = np.meshgrid(np.arange(h) + 0.5 - cy, np.arange(w) + 0.5 - cx, indexing="ij")
  return cx + cos * xs - sin * ys, cy + sin * xs + cos * ys


def rotate_masks(masks: np.ndarray, angle: float, center: tuple[float, float]) -> np.ndarray:
  """Nearest-neighbour rotation of bool ``[N, h, w]`` masks; pixels from outside are False."""
  h, w = masks.shape[-2:]
  src_x, src_y = _rotation_source((h, w), angle, center)
  ix, iy = np.floor(src_x).astype(np.int64), np.floor(src_y).astype(np.int64)
  inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
  out = masks[:, np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)]
  return out & inside


def rotate_image(image: np.ndarray, angle: float, center: tuple[float, float]) -> np.ndarray:
  """Bilinear rotation of a uint8 ``[h, w, 3]`` image, same size, zero fill."""
  pil = Image.fromarray(image).rotate(angle, resample=Image.Resampling.BILINEAR,
                                      center=center, fillcolor=(0, 0, 0))
  return np.asarray(pil)


def resize_image(image: np.ndarray, size: tuple[int, int],
                 box: tuple[float, float, float, float] | None = None) -> np.ndarray:
  """PIL bilinear resize of uint8 ``[H, W, 3]`` (optionally of the sub-box) to ``size`` (h, w)."""
  if box is None and image.shape[:2] == tuple(size):
    return image
  pil = Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR, box=box)
  return np.asarray(pil)


def resize_masks(masks: np.ndarray, size: tuple[int, int],
                 box: tuple[float, float, float, float] | None = None) -> np.ndarray:
  """Nearest-neighbour resize of bool ``[..., H, W]`` (optionally of the sub-box) to (h, w)."""
  in_h, in_w = masks.shape[-2:]
  left, top, right, bottom = box if box is not None else (0.0, 0.0, float(in_w), float(in_h))
  rows = _nearest_indices(top, bottom, size[0], in_h)
  cols = _nearest_indices(left, right, size[1], in_w)
  # Two separable takes are ~5x faster than one 2-D fancy index on large masks.
  return np.take(np.take(masks, rows, axis=-2), cols, axis=-1)


def augment_clip(aug: ClipAugmentation, frames: Sequence[np.ndarray],
                 masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Applies ``aug`` to the decoded frames and their instance masks.

  Args:
    aug: the clip's draws.
    frames: T uint8 ``[H0, W0, 3]`` frames (the same object may repeat, e.g. pseudo-videos).
    masks: T bool ``[N, H0, W0]`` visible masks, one array per frame.

  Returns:
    (images uint8 ``[T, h, w, 3]``, masks bool ``[N, T, h, w]``) with (h, w) = output_size.
  """
  num_frames = len(frames)
  h, w = aug.output_size
  num_inst = masks[0].shape[0] if num_frames else 0
  out_images = np.empty((num_frames, h, w, 3), np.uint8)
  out_masks = np.empty((num_inst, num_frames, h, w), bool)
  for t in range(num_frames):
    if frames[t].shape[:2] != tuple(aug.input_size):
      raise ValueError(f"frame {t} has size {frames[t].shape[:2]}, augmentation was drawn for "
                       f"{aug.input_size}")
    box = aug.source_box(t)
    image = resize_image(frames[t], (h, w), box)
    frame_masks = resize_masks(masks[t], (h, w), box)
    if aug.flip:
      image, frame_masks = image[:, ::-1], frame_masks[..., ::-1]
    if aug.rotation_angles is not None and aug.rotation_angles[t] % 360 != 0:
      assert aug.rotation_center is not None
      center = (aug.rotation_center[0] * w, aug.rotation_center[1] * h)
      image = rotate_image(np.ascontiguousarray(image), float(aug.rotation_angles[t]), center)
      frame_masks = rotate_masks(frame_masks, float(aug.rotation_angles[t]), center)
    out_images[t] = image
    out_masks[:, t] = frame_masks
  return out_images, out_masks
