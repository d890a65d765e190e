"""Times ``vis_jax.evaluate.evaluate`` on a YouTube-VIS-sized synthetic set.

Default: 300 videos x 40 frames at 360x640, ~3 GT instances and 10 noisy predictions per
video, 40 categories. Data generation is not timed. Writes and prints
``{"videos", "predictions_per_video", "frames", "seconds"}``.

  .venv/bin/python -m benchmarks.evaluate [--output benchmarks/results/evaluate.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from pycocotools import mask as mask_utils

from vis_jax.evaluate import evaluate


def ellipse_counts(height: int, width: int, cy: float, cx: float, ry: float,
                   rx: float) -> list[int]:
  """Uncompressed (column-major) RLE counts of a filled ellipse, built without a pixel array."""
  xs = np.arange(width)
  t = (xs + 0.5 - cx) / max(rx, 1e-6)
  half = ry * np.sqrt(np.clip(1.0 - t * t, 0.0, None))
  # Rows 0 and height-1 stay empty so that runs of adjacent columns never touch.
  y0 = np.clip(np.round(cy - half), 1, height - 1).astype(np.int64)
  y1 = np.clip(np.round(cy + half), 1, height - 1).astype(np.int64)
  keep = (y1 > y0) & (np.abs(t) < 1)
  starts, ends = xs[keep] * height + y0[keep], xs[keep] * height + y1[keep]
  edges = np.concatenate([[0], np.stack([starts, ends], 1).reshape(-1), [height * width]])
  return np.diff(edges).tolist()


def _compress(objs: list[dict], height: int, width: int) -> list[dict]:
  rles = mask_utils.frPyObjects(objs, height, width)
  return [{"size": r["size"], "counts": r["counts"].decode("ascii")} for r in rles]


def _random_walk(rng: np.random.Generator, frames: int, height: int, width: int,
                 max_radius: float) -> np.ndarray:
  """Per-frame ellipse parameters (cy, cx, ry, rx) [frames, 4] drifting from a random start."""
  base = np.array([rng.uniform(60, height - 60), rng.uniform(60, width - 60),
                   rng.uniform(15, max_radius), rng.uniform(15, max_radius * 1.4)])
  return base + rng.normal(0, 3, size=(frames, 4)).cumsum(0) * [1, 1, 0.1, 0.1]


def _track(height: int, width: int, params: np.ndarray,
           present: np.ndarray) -> list[dict | None]:
  objs = [{"size": [height, width], "counts": ellipse_counts(height, width, *p)}
          for p in params]
  rles = _compress(objs, height, width)
  return [r if keep else None for r, keep in zip(rles, present, strict=True)]


def make_dataset(videos: int = 300, frames: int = 40, preds: int = 10, height: int = 360,
                 width: int = 640, num_categories: int = 40,
                 seed: int = 0) -> tuple[dict, list[dict]]:
  """(GT dict, results list) in the official formats."""
  rng = np.random.default_rng(seed)
  gt_videos, annotations, results = [], [], []
  ann_id = 1
  for v in range(1, videos + 1):
    gt_videos.append({"id": v, "height": height, "width": width, "length": frames,
                      "file_names": [f"{v:05d}/{t:05d}.jpg" for t in range(frames)]})
    instances = []
    for _ in range(int(rng.integers(2, 5))):
      params = _random_walk(rng, frames, height, width, 100)
      first, last = sorted(rng.integers(0, frames, size=2))
      present = (np.arange(frames) >= first) & (np.arange(frames) <= max(last, first + 3))
      segs = _track(height, width, params, present)
      category = int(rng.integers(1, num_categories + 1))
      areas = [int(mask_utils.area(s)) if s else None for s in segs]
      annotations.append({"id": ann_id, "video_id": v, "category_id": category, "iscrowd": 0,
                          "segmentations": segs, "areas": areas,
                          "bboxes": [None] * frames, "height": height, "width": width})
      instances.append((params, present, category))
      ann_id += 1
    for q in range(preds):
      if q < 2 * len(instances):  # noisy copies of the GT, sometimes mislabelled
        params, present, category = instances[q % len(instances)]
        # A constant offset plus per-frame jitter; an occasional false-positive frame.
        params = params + rng.normal(0, [4, 4, 3, 3]) + rng.normal(0, 1.5, size=(frames, 4))
        present = present | (rng.random(frames) < 0.05)
        if rng.random() < 0.2:
          category = int(rng.integers(1, num_categories + 1))
      else:  # distractors
        params = _random_walk(rng, frames, height, width, 60)
        present = rng.random(frames) < 0.8
        category = int(rng.integers(1, num_categories + 1))
      segs = _track(height, width, params, np.ones(frames, bool))
      # Official postprocessing writes an RLE for every frame; absence is an empty mask.
      empty = _compress([{"size": [height, width], "counts": [height * width]}], height, width)[0]
      segs = [s if keep else empty for s, keep in zip(segs, present, strict=True)]
      results.append({"video_id": v, "category_id": category, "score": float(rng.random()),
                      "segmentations": segs})
  categories = [{"id": c, "name": f"class_{c}", "supercategory": "object"}
                for c in range(1, num_categories + 1)]
  return {"videos": gt_videos, "categories": categories, "annotations": annotations}, results


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--output", default=os.path.join("benchmarks", "results", "evaluate.json"))
  parser.add_argument("--videos", type=int, default=300)
  parser.add_argument("--frames", type=int, default=40)
  parser.add_argument("--preds", type=int, default=10)
  parser.add_argument("--height", type=int, default=360)
  parser.add_argument("--width", type=int, default=640)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  t0 = time.perf_counter()
  gt, results = make_dataset(args.videos, args.frames, args.preds, args.height, args.width,
                             seed=args.seed)
  print(f"generated in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
  start = time.perf_counter()
  result = evaluate(gt, results)
  seconds = time.perf_counter() - start
  print(f"AP={result.stats['AP']:.4f} AP50={result.stats['AP50']:.4f}", file=sys.stderr)
  report = {"videos": args.videos, "predictions_per_video": args.preds, "frames": args.frames,
            "seconds": round(seconds, 3)}
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w", encoding="utf-8") as f:
    json.dump(report, f)
    f.write("\n")
  print(json.dumps(report))
  return 0


if __name__ == "__main__":
  sys.exit(main())
