"""Deterministic synthetic video instance segmentation data in the exact YouTube-VIS format.

No real dataset can be downloaded where this project is developed, so this is its default
training and evaluation data, and every reader and evaluator path is exercised by it.

Layout (as YouTube-VIS 2019, except that ``valid.json`` is annotated so we can evaluate
locally)::

  DIR/train.json   DIR/train/JPEGImages/vid_0000/00000.jpg ...
  DIR/valid.json   DIR/valid/JPEGImages/vid_0000/00000.jpg ...
  DIR/params.json  the generation parameters (``ensure_dataset`` compares them)

Content: textured shapes moving over textured backgrounds. The class is the shape; texture and
the second colour are random per instance. With ``class_colours`` (the configs' default) the
main colour's hue lies in a band owned by the class (7 bands around the hue circle, value and
saturation random), so appearance carries the class as it does in real videos; without it only
the shape gives the class away — a harder variant that the CPU-sized synthetic models do not
learn to classify within their budget (issue #5 notes). Objects move smoothly
(velocity, acceleration, wobble), grow or shrink, rotate, enter and leave the frame, and occlude
each other in a fixed depth order. A stored mask is the *visible* mask, so the masks of one frame
are disjoint, and a frame where an object is out of view or fully hidden is ``null``.

Occlusion labels (``occlusion_labels=True``, the OVIS ``occlusion`` field): per frame, h is the
fraction of the object's in-frame full-shape area hidden by objects in front of it (leaving the
frame is truncation, not occlusion). ``no_occlusion`` if h <= 0.02 (touching edges),
``slight_occlusion`` if h <= 0.5, ``severe_occlusion`` above; ``null`` where the mask is null.
The OVIS evaluator scores these 0 / 0.25 / 0.75, i.e. slight means "up to half hidden".

Every video draws from its own numpy Generator seeded by (seed, split, video index), so a video
does not change when others are added, and the same arguments give byte-identical files.

CLI: ``python -m input_pipeline.synthetic --out DIR --videos 200 --seed 0``.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import glob
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from input_pipeline.synthetic_shapes import SHAPE_EXTENT, SHAPES, shape_mask

# Bump when the generated content changes, so ensure_dataset() regenerates stale caches.
VERSION = 1

CATEGORIES: list[dict[str, Any]] = [
    {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)]
TEXTURES = ("plain", "stripes", "dots", "checker", "gradient")
# (width, height) ratios; the shorter side is `short_side`.
ASPECTS = ((4, 3), (16, 9), (1, 1), (3, 4))
OCCLUSION_NAMES = ("no_occlusion", "slight_occlusion", "severe_occlusion")
SPLITS = ("train", "valid")

_JPEG_QUALITY = 90
_NO_OCCLUSION_MAX = 0.02
_SLIGHT_OCCLUSION_MAX = 0.5

# ---- visibility and labels ---------------------------------------------------------------------

def visible_masks(full: np.ndarray, back_to_front: np.ndarray) -> np.ndarray:
  """Visible masks from full-shape masks and a depth order.

  Args:
    full: bool [N, H, W], the whole (unoccluded, frame-clipped) shape of each instance.
    back_to_front: int [N], instance indices from the farthest to the nearest.

  Returns:
    bool [N, H, W]: ``full[i]`` minus the full masks of all instances in front of i.
  """
  visible = np.zeros_like(full)
  covered = np.zeros(full.shape[1:], bool)
  for i in back_to_front[::-1]:
    visible[i] = full[i] & ~covered
    covered |= full[i]
  return visible


def occlusion_label(hidden_fraction: float) -> str:
  """OVIS occlusion label for the fraction of the in-frame full shape hidden by others."""
  if hidden_fraction <= _NO_OCCLUSION_MAX:
    return OCCLUSION_NAMES[0]
  if hidden_fraction <= _SLIGHT_OCCLUSION_MAX:
    return OCCLUSION_NAMES[1]
  return OCCLUSION_NAMES[2]


def rle_uncompressed(mask: np.ndarray) -> dict[str, Any]:
  """COCO uncompressed RLE: column-major run lengths starting with a (maybe empty) zero run.

  Args:
    mask: bool or uint8 [H, W].

  Returns:
    ``{"size": [H, W], "counts": [int, ...]}`` (what ``pycocotools.mask.frPyObjects`` reads).
  """
  flat = np.asarray(mask, bool).ravel(order="F")
  change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
  runs = np.diff(np.concatenate([[0], change, [flat.size]]))
  if flat.size and flat[0]:
    runs = np.concatenate([[0], runs])
  return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": runs.tolist()}


# ---- scene sampling -----------------------------------------------------------------------------

def _rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
  return np.random.default_rng([seed, SPLITS.index(split), index, stream])


def _hsv_colour(h: float, s: float, v: float) -> np.ndarray:
  """RGB float32 [3] in [0, 255]; hue ``h`` in [0, 6)."""
  rgb = np.clip(np.abs((h + np.array([0.0, 4.0, 2.0])) % 6 - 3) - 1, 0, 1)
  return (4 + 247 * v * (1 - s + s * rgb)).astype(np.float32)


def _random_colour(rng: np.random.Generator, sat: tuple[float, float],
                   val: tuple[float, float]) -> np.ndarray:
  """RGB float32 [3] in [0, 255] from a random hue and the given saturation/value ranges."""
  h, s, v = rng.uniform(0, 6), rng.uniform(*sat), rng.uniform(*val)
  return _hsv_colour(h, s, v)


# class_colours: class c owns the hue band centre 6c/7 ± _CLASS_HUE_JITTER (circle = 6), so
# neighbouring bands stay apart.
_CLASS_HUE_JITTER = 0.25


@dataclasses.dataclass(frozen=True)
class _Instance:
  shape: int                 # index into SHAPES
  anchor_t: int              # frame at which the centre is at `anchor` (inside the frame)
  anchor: np.ndarray         # [2] (x, y) px
  velocity: np.ndarray       # [2] px / frame
  accel: np.ndarray          # [2] px / frame^2
  wobble_amp: np.ndarray     # [2] px
  wobble_period: float       # frames
  wobble_phase: np.ndarray   # [2] rad
  log_r0: float              # log radius (px) at frame 0
  log_r_rate: float          # per frame
  log_r_wobble: float
  theta0: float
  omega: float               # rad / frame
  texture: int               # index into TEXTURES
  colours: np.ndarray        # [2, 3] float32
  tex_period: float          # object units
  tex_angle: float

  def pose(self, t: int) -> tuple[float, float, float, float]:
    """(cx, cy, radius, angle) at frame t."""
    dt = t - self.anchor_t
    wobble = self.wobble_amp * (np.sin(2 * np.pi * t / self.wobble_period + self.wobble_phase)
                                - np.sin(2 * np.pi * self.anchor_t / self.wobble_period
                                         + self.wobble_phase))
    c = self.anchor + self.velocity * dt + 0.5 * self.accel * dt * dt + wobble
    log_r = (self.log_r0 + self.log_r_rate * t
             + self.log_r_wobble * math.sin(2 * math.pi * t / self.wobble_period))
    return float(c[0]), float(c[1]), math.exp(log_r), self.theta0 + self.omega * t

  def paint(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Texture in object coordinates (it moves, turns and scales with the object).

    Args:
      u, v: float32 [h, w] object coordinates of a patch.

    Returns:
      uint8 RGB, [h, w, 3] or broadcastable to it.
    """
    a, b = self.colours
    name = TEXTURES[self.texture]
    if name == "plain":
      return a.astype(np.uint8)[None, None]
    along = u * math.cos(self.tex_angle) + v * math.sin(self.tex_angle)
    if name == "gradient":
      w = np.clip(along * 0.5 + 0.5, 0, 1)[..., None]
      return (a + w * (b - a)).astype(np.uint8)
    inv_p = 1.0 / self.tex_period
    if name == "stripes":
      pick = np.floor(along * inv_p).astype(np.int32) & 1
    elif name == "dots":
      su, sv = u * inv_p, v * inv_p
      du, dv = su - np.floor(su) - 0.5, sv - np.floor(sv) - 0.5
      pick = du * du + dv * dv < 0.09
    else:  # checker
      pick = (np.floor(u * inv_p).astype(np.int32) + np.floor(v * inv_p).astype(np.int32)) & 1
    return np.where(pick.astype(bool)[..., None], b.astype(np.uint8), a.astype(np.uint8))


def _sample_instance(rng: np.random.Generator, shape: int, length: int, width: int, height: int,
                     short: int, colour_rng: np.random.Generator | None = None) -> _Instance:
  """One instance; ``colour_rng`` (class_colours) draws its class-band main colour."""
  anchor_t = int(rng.integers(0, length))
  anchor = np.array([rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height])
  # A third of the objects cross the frame quickly, so they enter or leave within the video.
  speed = short * (rng.uniform(0.015, 0.035) if rng.random() < 0.35 else rng.uniform(0, 0.012))
  heading = rng.uniform(0, 2 * np.pi)
  # Pairs of clearly different colours (hue + value) so stripes/dots/checker stay visible.
  colours = np.stack([_random_colour(rng, (0.45, 1.0), (0.55, 1.0)),
                      _random_colour(rng, (0.3, 1.0), (0.15, 0.6))])
  swapped = rng.random() < 0.5
  if swapped:
    colours = colours[::-1]
  # Grow or shrink up to ~2x over a long video, but keep the radius in [0.06, 0.3] x short side
  # so that objects stay learnable at ~128 px and never fill the frame.
  log_r0 = math.log(short * rng.uniform(0.08, 0.2))
  span = max(length - 1, 1)
  log_r_rate = float(np.clip(rng.uniform(-0.012, 0.012), (math.log(0.06 * short) - log_r0) / span,
                             (math.log(0.3 * short) - log_r0) / span))
  instance = _Instance(
      shape=shape, anchor_t=anchor_t, anchor=anchor,
      velocity=speed * np.array([math.cos(heading), math.sin(heading)]),
      accel=rng.normal(0, 0.0003 * short, 2),
      wobble_amp=rng.uniform(0, 0.03 * short, 2),
      wobble_period=float(rng.uniform(12, 40)),
      wobble_phase=rng.uniform(0, 2 * np.pi, 2),
      log_r0=log_r0,
      log_r_rate=log_r_rate,
      log_r_wobble=float(rng.uniform(0, 0.08)),
      theta0=float(rng.uniform(0, 2 * np.pi)),
      omega=float(rng.uniform(-0.06, 0.06)),
      texture=int(rng.integers(len(TEXTURES))),
      colours=colours,
      tex_period=float(rng.uniform(0.3, 0.6)),
      tex_angle=float(rng.uniform(0, np.pi)),
  )
  if colour_rng is not None:
    # Its own stream, so everything else equals the shape-only variant.
    hue = (6.0 * shape / len(SHAPES)
           + colour_rng.uniform(-_CLASS_HUE_JITTER, _CLASS_HUE_JITTER)) % 6
    main = _hsv_colour(hue, colour_rng.uniform(0.6, 1.0), colour_rng.uniform(0.6, 1.0))
    # Slot 0 is what a plain texture shows; the dark second colour stays.
    secondary = colours[0] if swapped else colours[1]
    instance = dataclasses.replace(instance, colours=np.stack([main, secondary]))
  return instance


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear resize of [h, w, 3] values in [0, 255] to uint8 [height, width, 3].

  PIL rather than an interpolation matmul: BLAS threads would spin on cores others need.
  """
  pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
  return np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR))


def _background(rng: np.random.Generator, height: int, width: int, short: int) -> np.ndarray:
  """Static textured background uint8 [height, width, 3]: gradient, smooth noise, soft blobs.

  The smooth part is drawn at 1/4 resolution and upsampled (it has no detail to lose); a fine
  grain on top keeps the background from being flat. Values stay in [4, 251] (see render()).
  """
  ch, cw = max(2, height // 4), max(2, width // 4)
  ys = np.linspace(0, 1, ch, dtype=np.float32)[:, None, None]
  xs = np.linspace(0, 1, cw, dtype=np.float32)[None, :, None]
  angle = rng.uniform(0, 2 * np.pi)
  g = xs * math.cos(angle) + ys * math.sin(angle)
  g = (g - g.min()) / max(float(g.max() - g.min()), 1e-6)
  c1 = _random_colour(rng, (0.0, 0.35), (0.2, 0.85))
  c2 = _random_colour(rng, (0.0, 0.35), (0.2, 0.85))
  bg = c1 + g * (c2 - c1)
  coarse = rng.normal(128, 18, (int(rng.integers(3, 8)), int(rng.integers(3, 8)), 3))
  bg = bg + _resize(coarse, ch, cw) - 128
  scale = ch / height
  for _ in range(int(rng.integers(2, 6))):
    cy, cx = rng.uniform(0, ch), rng.uniform(0, cw)
    sigma = scale * short * rng.uniform(0.05, 0.2)
    alpha = rng.uniform(0.25, 0.6)
    yy = np.exp(-((np.arange(ch, dtype=np.float32) - cy) ** 2) / (2 * sigma**2))
    xx = np.exp(-((np.arange(cw, dtype=np.float32) - cx) ** 2) / (2 * sigma**2))
    weight = (alpha * yy[:, None] * xx[None, :])[..., None]
    bg = bg + weight * (_random_colour(rng, (0.0, 0.5), (0.2, 0.9)) - bg)
  bg = _resize(np.clip(bg, 8, 247), height, width)
  grain = rng.integers(0, 9, (height, width, 1), dtype=np.uint8)
  return bg - 4 + grain


@dataclasses.dataclass(frozen=True)
class VideoScene:
  """Everything random about one video; ``render()`` turns it into frames and masks.

  Attributes:
    seed, split, index: identify the video (its Generators derive from them).
    height, width, length: frame size and number of frames.
    instances: the objects, in annotation order.
    back_to_front: int [N] instance indices from the farthest to the nearest.
  """

  seed: int
  split: str
  index: int
  height: int
  width: int
  length: int
  instances: tuple[_Instance, ...]
  back_to_front: np.ndarray

  @property
  def category_ids(self) -> list[int]:
    return [CATEGORIES[inst.shape]["id"] for inst in self.instances]

  def render(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields, per frame, the image uint8 [H, W, 3] and full-shape masks bool [N, H, W].

    Repeatable: noise comes from a Generator created here, not from the scene's.
    """
    rng = _rng(self.seed, self.split, self.index, 1)
    h, w = self.height, self.width
    short = min(h, w)
    pad = max(2, int(0.08 * short))
    # Colours stay in [4, 251] so that adding noise in [-4, 4] needs no clipping in uint8.
    bg = _background(rng, h + pad, w + pad, short)
    pan0, pan1 = rng.integers(0, pad + 1, 2), rng.integers(0, pad + 1, 2)
    # Per-frame noise is a random crop of one larger field: far cheaper than fresh draws.
    noise = rng.integers(0, 9, (2 * h, 2 * w, 3), dtype=np.uint8)
    offsets = rng.integers(0, [h, w], (self.length, 2))
    for t in range(self.length):
      # Slow camera pan over the larger background.
      oy, ox = np.round(pan0 + (pan1 - pan0) * t / max(self.length - 1, 1)).astype(int)
      canvas = bg[oy:oy + h, ox:ox + w].copy()
      full = np.zeros((len(self.instances), h, w), bool)
      for i in self.back_to_front:
        inst = self.instances[i]
        cx, cy, r, theta = inst.pose(t)
        ext = SHAPE_EXTENT * r
        x0, x1 = max(int(cx - ext), 0), min(int(cx + ext) + 2, w)
        y0, y1 = max(int(cy - ext), 0), min(int(cy + ext) + 2, h)
        if x0 >= x1 or y0 >= y1:
          continue
        dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
        dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
        cos, sin = math.cos(theta) / r, math.sin(theta) / r
        u, v = cos * dx + sin * dy, cos * dy - sin * dx
        inside = shape_mask(SHAPES[inst.shape], u, v)
        full[i, y0:y1, x0:x1] = inside
        np.copyto(canvas[y0:y1, x0:x1], inst.paint(u, v), where=inside[..., None])
      canvas -= 4
      ny, nx = offsets[t]
      canvas += noise[ny:ny + h, nx:nx + w]
      yield canvas, full


def sample_scene(seed: int, split: str, index: int, min_frames: int = 8, max_frames: int = 60,
                 short_side: int = 240, class_colours: bool = False) -> VideoScene:
  """The scene of video ``index`` of ``split``; independent of every other video."""
  rng = _rng(seed, split, index, 0)
  aw, ah = ASPECTS[int(rng.integers(len(ASPECTS)))]
  scale = short_side / min(aw, ah)
  width, height = int(round(aw * scale)), int(round(ah * scale))
  length = int(rng.integers(min_frames, max_frames + 1))
  num = int(rng.integers(1, 6))
  # A small pool of classes per video makes several instances of one class common.
  pool = rng.choice(len(SHAPES), size=int(rng.integers(1, num + 1)), replace=False)
  shapes = np.concatenate([pool, rng.choice(pool, size=num - pool.size)])
  colour_rng = _rng(seed, split, index, 2) if class_colours else None
  instances = tuple(_sample_instance(rng, int(s), length, width, height, short_side,
                                     colour_rng)
                    for s in rng.permutation(shapes))
  return VideoScene(seed=seed, split=split, index=index, height=height, width=width,
                    length=length, instances=instances, back_to_front=rng.permutation(num))


# ---- dataset writing ----------------------------------------------------------------------------

def _write_split(out_dir: str, split: str, num_videos: int, seed: int, min_frames: int,
                 max_frames: int, short_side: int, occlusion_labels: bool,
                 rle: str, class_colours: bool = False) -> dict[str, int]:
  """Writes ``<split>.json`` and its frames; returns counts for the summary."""
  videos, annotations = [], []
  num_frames = 0
  for index in range(num_videos):
    scene = sample_scene(seed, split, index, min_frames, max_frames, short_side, class_colours)
    name = f"vid_{index:04d}"
    frame_dir = os.path.join(out_dir, split, "JPEGImages", name)
    os.makedirs(frame_dir, exist_ok=True)
    n = len(scene.instances)
    # Per instance, one entry per frame.
    segs, areas, boxes, occ = ([[] for _ in range(n)] for _ in range(4))
    file_names = []
    for t, (image, full) in enumerate(scene.render()):
      file_name = f"{t:05d}.jpg"
      Image.fromarray(image).save(os.path.join(frame_dir, file_name), quality=_JPEG_QUALITY)
      file_names.append(f"{name}/{file_name}")
      visible = visible_masks(full, scene.back_to_front)
      for i in range(n):
        if not visible[i].any():
          for lst in (segs, areas, boxes, occ):
            lst[i].append(None)
          continue
        encoded = mask_util.encode(np.asfortranarray(visible[i].astype(np.uint8)))
        areas[i].append(float(mask_util.area(encoded)))
        boxes[i].append([float(x) for x in mask_util.toBbox(encoded)])
        if rle == "compressed":
          segs[i].append({"size": [int(s) for s in encoded["size"]],
                          "counts": encoded["counts"].decode("ascii")})
        else:
          segs[i].append(rle_uncompressed(visible[i]))
        if occlusion_labels:
          full_area = int(full[i].sum())
          occ[i].append(occlusion_label((full_area - areas[i][-1]) / full_area))
    num_frames += scene.length
    video_id = index + 1
    videos.append({"id": video_id, "width": scene.width, "height": scene.height,
                   "length": scene.length, "file_names": file_names})
    for i, category_id in enumerate(scene.category_ids):
      # An object never visible (out of view or always hidden) would be an all-null track.
      if all(s is None for s in segs[i]):
        continue
      ann = {"id": len(annotations) + 1, "video_id": video_id, "category_id": category_id,
             "iscrowd": 0, "segmentations": segs[i], "areas": areas[i], "bboxes": boxes[i]}
      if occlusion_labels:
        ann["occlusion"] = occ[i]
      annotations.append(ann)
  dataset = {
      "info": {"description": "vis_jax synthetic shapes, YouTube-VIS format",
               "version": str(VERSION), "contributor": "input_pipeline/synthetic.py"},
      "licenses": [],
      "videos": videos,
      "categories": [dict(c) for c in CATEGORIES],
      "annotations": annotations,
  }
  with open(os.path.join(out_dir, f"{split}.json"), "w") as f:
    # dumps, unlike dump, uses the C encoder.
    f.write(json.dumps(dataset, separators=(",", ":")))
  return {"videos": num_videos, "frames": num_frames, "instances": len(annotations)}


def _params(num_train_videos: int, num_valid_videos: int, seed: int, min_frames: int,
            max_frames: int, short_side: int, occlusion_labels: bool, rle: str,
            class_colours: bool = False) -> dict[str, Any]:
  return {"version": VERSION, "class_colours": bool(class_colours),
          "num_train_videos": int(num_train_videos),
          "num_valid_videos": int(num_valid_videos), "seed": int(seed),
          "min_frames": int(min_frames), "max_frames": int(max_frames),
          "short_side": int(short_side), "occlusion_labels": bool(occlusion_labels), "rle": rle}


def _generate(out_dir: str, num_train_videos: int, num_valid_videos: int, seed: int,
              min_frames: int, max_frames: int, short_side: int, occlusion_labels: bool,
              rle: str, class_colours: bool = False) -> dict[str, int]:
  if not 1 <= min_frames <= max_frames:
    raise ValueError(f"need 1 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
  if short_side < 16:
    raise ValueError(f"short_side must be >= 16, got {short_side}")
  if rle not in ("uncompressed", "compressed"):
    raise ValueError(f"rle must be 'uncompressed' or 'compressed', got {rle!r}")
  if min(num_train_videos, num_valid_videos) < 0:
    raise ValueError("video counts must be >= 0")
  os.makedirs(out_dir, exist_ok=True)
  # Until the new one is written, out_dir must not claim to be a complete dataset.
  if os.path.exists(os.path.join(out_dir, "params.json")):
    os.remove(os.path.join(out_dir, "params.json"))
  total = {"videos": 0, "frames": 0, "instances": 0}
  for split, num in zip(SPLITS, (num_train_videos, num_valid_videos), strict=True):
    counts = _write_split(out_dir, split, num, seed, min_frames, max_frames, short_side,
                          occlusion_labels, rle, class_colours)
    total = {k: total[k] + counts[k] for k in total}
  # Written last: its presence means the dataset is complete.
  params = _params(num_train_videos, num_valid_videos, seed, min_frames, max_frames,
                   short_side, occlusion_labels, rle, class_colours)
  with open(os.path.join(out_dir, "params.json"), "w") as f:
    json.dump(params, f, indent=1, sort_keys=True)
  return total


def generate(out_dir: str, num_train_videos: int, num_valid_videos: int, seed: int,
             min_frames: int = 8, max_frames: int = 60, short_side: int = 240,
             occlusion_labels: bool = False, rle: str = "uncompressed",
             class_colours: bool = False) -> None:
  """Writes the dataset (both splits, frames, jsons, params.json) into ``out_dir``.

  Args:
    out_dir: created if missing; files of an earlier run are overwritten, not removed.
    num_train_videos, num_valid_videos: videos per split (ids 1..N in each json).
    seed: everything is a function of the arguments; same arguments, same bytes.
    min_frames, max_frames: video lengths are uniform in [min_frames, max_frames].
    short_side: shorter image side in pixels (aspect 4:3, 16:9, 1:1 or 3:4).
    occlusion_labels: add the OVIS per-frame ``occlusion`` list to every annotation.
    rle: ``"uncompressed"`` (counts as a list of ints, as the released YTVIS json) or
      ``"compressed"`` (counts as a COCO string).
    class_colours: the main colour's hue is in a band of the class (module docstring).
  """
  _generate(out_dir, num_train_videos, num_valid_videos, seed, min_frames, max_frames,
            short_side, occlusion_labels, rle, class_colours)


def _read_params(root: str) -> dict[str, Any] | None:
  try:
    with open(os.path.join(root, "params.json")) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def ensure_dataset(root: str, num_train_videos: int, num_valid_videos: int, seed: int,
                   min_frames: int, max_frames: int, short_side: int,
                   occlusion_labels: bool, class_colours: bool = False) -> str:
  """Makes sure ``root`` holds the dataset for these parameters; returns ``root``.

  The dataset is generated next to ``root`` and renamed into place, so an interrupted run never
  leaves a complete-looking half dataset. A lock file (``<root>.lock``) serialises concurrent
  callers; the second one finds the finished dataset and returns. A directory that exists
  without our ``params.json`` and is not empty is never deleted (ValueError).

  The arguments mirror ``config.data.synthetic``.
  """
  root = os.path.abspath(os.path.expanduser(root))
  params = _params(num_train_videos, num_valid_videos, seed, min_frames, max_frames,
                   short_side, occlusion_labels, "uncompressed", class_colours)
  if _read_params(root) == params:
    return root
  parent, base = os.path.split(root)
  os.makedirs(parent, exist_ok=True)
  with open(f"{root}.lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      if _read_params(root) == params:
        return root
      ours = os.path.isdir(root) and (
          not os.listdir(root) or os.path.exists(os.path.join(root, "params.json")))
      if os.path.lexists(root) and not ours:
        raise ValueError(f"{root} exists and is not a synthetic dataset (no params.json) nor "
                         "an empty directory; refusing to overwrite it")
      # Leftovers of crashed runs; safe to delete since we hold the lock.
      for stale in glob.glob(os.path.join(parent, f".{base}.tmp-*")):
        shutil.rmtree(stale, ignore_errors=True)
      logging.info("generating synthetic dataset in %s: %s", root, params)
      tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
      try:
        _generate(tmp, num_train_videos, num_valid_videos, seed, min_frames, max_frames,
                  short_side, occlusion_labels, "uncompressed", class_colours)
        if os.path.lexists(root):
          # Parked under a tmp- name, so the stale-cleanup above removes it after a crash.
          parking = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
          os.replace(root, os.path.join(parking, "old"))
          os.replace(tmp, root)
          shutil.rmtree(parking, ignore_errors=True)
        else:
          os.replace(tmp, root)
      except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return root


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--videos", type=int, required=True, help="number of train videos")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--valid-videos", type=int, default=None,
                      help="number of valid videos (default max(1, videos // 6))")
  parser.add_argument("--min-frames", type=int, default=8)
  parser.add_argument("--max-frames", type=int, default=60)
  parser.add_argument("--short-side", type=int, default=240)
  parser.add_argument("--occlusion-labels", action="store_true",
                      help="add OVIS-style per-frame occlusion labels")
  parser.add_argument("--rle", choices=("uncompressed", "compressed"), default="uncompressed")
  parser.add_argument("--class-colours", action="store_true",
                      help="main colour hue in a band of the class (default: shape only)")
  args = parser.parse_args(argv)
  valid = max(1, args.videos // 6) if args.valid_videos is None else args.valid_videos
  start = time.perf_counter()
  counts = _generate(args.out, args.videos, valid, args.seed, args.min_frames, args.max_frames,
                     args.short_side, args.occlusion_labels, args.rle, args.class_colours)
  print(f"synthetic: {counts['videos']} videos ({args.videos} train + {valid} valid), "
        f"{counts['frames']} frames, {counts['instances']} instances, "
        f"{time.perf_counter() - start:.1f} s -> {args.out}")


if __name__ == "__main__":
  main()
