"""Local validation: hold out a fixed, seeded subset of a training source's videos.

YouTube-VIS and OVIS validation ground truth is private (scores come from CodaLab), so users
hold out part of the training set to score themselves. ``config.data.local_val`` names the
training source, how many videos to hold out and the seed; the held-out videos are removed from
training and evaluated with the exact metric against a ground-truth json restricted to them.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from input_pipeline.datasets import LoadedDataset


def holdout_video_ids(video_ids: list[int], num_videos: int, seed: int) -> set[int]:
  """A seeded choice of ``num_videos`` ids (the same for the same ids, count and seed)."""
  ids = sorted(int(v) for v in video_ids)
  if not 0 < num_videos < len(ids):
    raise ValueError(f"config.data.local_val.num_videos={num_videos} must be between 1 and "
                     f"{len(ids) - 1} (the source has {len(ids)} videos)")
  chosen = np.random.default_rng(seed).choice(len(ids), size=num_videos, replace=False)
  return {ids[i] for i in chosen}


def split(loaded: LoadedDataset, json_path: str, num_videos: int, seed: int
          ) -> tuple[LoadedDataset, LoadedDataset, dict[str, Any]]:
  """Splits a loaded training source into (train, held-out, held-out GT json dict).

  The GT dict is the source json restricted to the held-out videos and their annotations, so
  the evaluator sees exactly the original annotations (not a re-encoding).
  """
  with open(json_path) as f:
    gt = json.load(f)
  held = holdout_video_ids([v["id"] for v in gt["videos"]], num_videos, seed)
  keep = [r for r in loaded.records if r.video_id not in held]
  val = [r for r in loaded.records if r.video_id in held]
  if not val:
    raise ValueError(f"config.data.local_val: none of the held-out videos of {json_path} "
                     "has training annotations")
  gt_val = dict(gt)
  gt_val["videos"] = [v for v in gt["videos"] if v["id"] in held]
  gt_val["annotations"] = [a for a in gt.get("annotations") or [] if a["video_id"] in held]
  return (dataclasses.replace(loaded, records=keep), dataclasses.replace(loaded, records=val),
          gt_val)
