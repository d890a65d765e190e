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
does not change when others are added, and the same arguments give byte-identical files. Scenes
are sampled and rendered by ``synthetic_scene.py``; videos are rendered in ``workers`` spawned
processes (default one per CPU), which the bytes do not depend on.

CLI: ``python -m input_pipeline.synthetic --out DIR --videos 200 --seed 0 [--workers N]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import fcntl
import functools
import glob
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from input_pipeline.synthetic_scene import (
    CATEGORIES,
    DEFAULT_OBJECT_RADIUS,
    SPLITS,
    sample_scene,
)

# Bump when the generated content changes, so ensure_dataset() regenerates stale caches.
VERSION = 1

OCCLUSION_NAMES = ("no_occlusion", "slight_occlusion", "severe_occlusion")

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


# ---- dataset writing ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _SplitSpec:
  """What one split's videos are a function of (picklable, for the worker processes)."""
  out_dir: str
  split: str
  seed: int
  min_frames: int
  max_frames: int
  short_side: int
  occlusion_labels: bool
  rle: str
  class_colours: bool
  object_radius: tuple[float, float]


def _write_video(spec: _SplitSpec, index: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """Renders video ``index``, writes its frames; returns its ``videos`` entry and annotations
  (``id`` and ``video_id`` are assigned by the caller, in index order)."""
  scene = sample_scene(spec.seed, spec.split, index, spec.min_frames, spec.max_frames,
                       spec.short_side, spec.class_colours, spec.object_radius)
  name = f"vid_{index:04d}"
  frame_dir = os.path.join(spec.out_dir, spec.split, "JPEGImages", name)
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
      if spec.rle == "compressed":
        segs[i].append({"size": [int(s) for s in encoded["size"]],
                        "counts": encoded["counts"].decode("ascii")})
      else:
        segs[i].append(rle_uncompressed(visible[i]))
      if spec.occlusion_labels:
        full_area = int(full[i].sum())
        occ[i].append(occlusion_label((full_area - areas[i][-1]) / full_area))
  video = {"width": scene.width, "height": scene.height, "length": scene.length,
           "file_names": file_names}
  annotations = []
  for i, category_id in enumerate(scene.category_ids):
    # An object never visible (out of view or always hidden) would be an all-null track.
    if all(s is None for s in segs[i]):
      continue
    ann = {"category_id": category_id, "iscrowd": 0, "segmentations": segs[i],
           "areas": areas[i], "bboxes": boxes[i]}
    if spec.occlusion_labels:
      ann["occlusion"] = occ[i]
    annotations.append(ann)
  return video, annotations


def _write_videos(spec: _SplitSpec, num_videos: int, workers: int
                  ) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
  """``_write_video`` over ``range(num_videos)`` in index order, in ``workers`` processes
  (spawned: the caller may be a multithreaded JAX process, where fork is unsafe)."""
  if workers <= 1 or num_videos < 8 * workers:  # else spawning costs more than it saves
    yield from (_write_video(spec, i) for i in range(num_videos))
    return
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
    yield from pool.map(functools.partial(_write_video, spec), range(num_videos),
                        chunksize=max(1, num_videos // (8 * workers)))


def _write_split(out_dir: str, split: str, num_videos: int, seed: int, min_frames: int,
                 max_frames: int, short_side: int, occlusion_labels: bool,
                 rle: str, class_colours: bool = False, workers: int = 1,
                 object_radius: tuple[float, float] = DEFAULT_OBJECT_RADIUS) -> dict[str, int]:
  """Writes ``<split>.json`` and its frames; returns counts for the summary."""
  spec = _SplitSpec(out_dir, split, seed, min_frames, max_frames, short_side, occlusion_labels,
                    rle, class_colours, tuple(object_radius))
  videos, annotations = [], []
  for index, (video, anns) in enumerate(_write_videos(spec, num_videos, workers)):
    video_id = index + 1
    videos.append({"id": video_id, **video})
    for ann in anns:
      annotations.append({"id": len(annotations) + 1, "video_id": video_id, **ann})
  num_frames = sum(v["length"] for v in videos)
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
            class_colours: bool = False,
            object_radius: tuple[float, float] = DEFAULT_OBJECT_RADIUS) -> dict[str, Any]:
  return {"version": VERSION, "class_colours": bool(class_colours),
          "object_radius": [float(r) for r in object_radius],
          "num_train_videos": int(num_train_videos),
          "num_valid_videos": int(num_valid_videos), "seed": int(seed),
          "min_frames": int(min_frames), "max_frames": int(max_frames),
          "short_side": int(short_side), "occlusion_labels": bool(occlusion_labels), "rle": rle}


def _generate(out_dir: str, num_train_videos: int, num_valid_videos: int, seed: int,
              min_frames: int, max_frames: int, short_side: int, occlusion_labels: bool,
              rle: str, class_colours: bool = False, workers: int = 0,
              object_radius: tuple[float, float] = DEFAULT_OBJECT_RADIUS) -> dict[str, int]:
  if not 1 <= min_frames <= max_frames:
    raise ValueError(f"need 1 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
  if short_side < 16:
    raise ValueError(f"short_side must be >= 16, got {short_side}")
  if len(object_radius) != 2 or not 0 < object_radius[0] <= object_radius[1] <= 0.5:
    raise ValueError(f"object_radius must be (low, high) with 0 < low <= high <= 0.5 (fractions "
                     f"of the short side), got {object_radius}")
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
                          occlusion_labels, rle, class_colours,
                          workers if workers > 0 else (os.cpu_count() or 1), object_radius)
    total = {k: total[k] + counts[k] for k in total}
  # Written last: its presence means the dataset is complete.
  params = _params(num_train_videos, num_valid_videos, seed, min_frames, max_frames,
                   short_side, occlusion_labels, rle, class_colours, object_radius)
  with open(os.path.join(out_dir, "params.json"), "w") as f:
    json.dump(params, f, indent=1, sort_keys=True)
  return total


def generate(out_dir: str, num_train_videos: int, num_valid_videos: int, seed: int,
             min_frames: int = 8, max_frames: int = 60, short_side: int = 240,
             occlusion_labels: bool = False, rle: str = "uncompressed",
             class_colours: bool = False, workers: int = 0,
             object_radius: tuple[float, float] = DEFAULT_OBJECT_RADIUS) -> None:
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
    workers: processes rendering videos (0: one per CPU); the output does not depend on it.
    object_radius: (low, high) range of the objects' radii at frame 0, fractions of the short
      side; they grow or shrink within [0.75 low, 1.5 high].
  """
  _generate(out_dir, num_train_videos, num_valid_videos, seed, min_frames, max_frames,
            short_side, occlusion_labels, rle, class_colours, workers, object_radius)


def _read_params(root: str) -> dict[str, Any] | None:
  try:
    with open(os.path.join(root, "params.json")) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def ensure_dataset(root: str, num_train_videos: int, num_valid_videos: int, seed: int,
                   min_frames: int, max_frames: int, short_side: int,
                   occlusion_labels: bool, class_colours: bool = False, workers: int = 0,
                   object_radius: tuple[float, float] = DEFAULT_OBJECT_RADIUS) -> str:
  """Makes sure ``root`` holds the dataset for these parameters; returns ``root``.

  The dataset is generated next to ``root`` and renamed into place, so an interrupted run never
  leaves a complete-looking half dataset. A lock file (``<root>.lock``) serialises concurrent
  callers; the second one finds the finished dataset and returns. A directory that exists
  without our ``params.json`` and is not empty is never deleted (ValueError).

  The arguments mirror ``config.data.synthetic``; ``workers`` as ``generate``.
  """
  root = os.path.abspath(os.path.expanduser(root))
  params = _params(num_train_videos, num_valid_videos, seed, min_frames, max_frames,
                   short_side, occlusion_labels, "uncompressed", class_colours, object_radius)
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
                  short_side, occlusion_labels, "uncompressed", class_colours, workers,
                  object_radius)
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
  parser.add_argument("--object-radius", type=float, nargs=2, default=DEFAULT_OBJECT_RADIUS,
                      metavar=("LOW", "HIGH"),
                      help="range of object radii at frame 0, fractions of the short side")
  parser.add_argument("--workers", type=int, default=0,
                      help="processes rendering videos (default: one per CPU)")
  args = parser.parse_args(argv)
  valid = max(1, args.videos // 6) if args.valid_videos is None else args.valid_videos
  start = time.perf_counter()
  counts = _generate(args.out, args.videos, valid, args.seed, args.min_frames, args.max_frames,
                     args.short_side, args.occlusion_labels, args.rle, args.class_colours,
                     args.workers, tuple(args.object_radius))
  print(f"synthetic: {counts['videos']} videos ({args.videos} train + {valid} valid), "
        f"{counts['frames']} frames, {counts['instances']} instances, "
        f"{time.perf_counter() - start:.1f} s -> {args.out}")


if __name__ == "__main__":
  main()
