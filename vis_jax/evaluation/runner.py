"""Evaluation inside training and ``--mode=eval``: predict every eval video, score, write files.

What is evaluated:
  * ``config.data.local_val.num_videos > 0``: videos held out from the training source
    ``config.data.local_val.source`` (``input_pipeline/holdout.py``), scored against their own
    annotations — the usual way to validate on YouTube-VIS/OVIS, whose val GT is private;
  * otherwise ``config.data.eval``; if its json has annotations (e.g. the synthetic valid split)
    the metrics are computed, else only the submission files are written.

Output under ``WORKDIR/eval/step_N/``: ``results.json`` and ``results.zip`` (the official
submission format, dataset category ids) and ``metrics.json`` (fractions, as the official
API). The returned metrics are in percent, for ``metrics.jsonl``. Each JAX process predicts
``videos[process_index::process_count]``; process 0 gathers the per-process files and scores.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax

from configs import common
from input_pipeline import datasets, eval_source, holdout
from vis_jax import evaluate as ytvis_eval
from vis_jax.evaluation.submission import write_submission

# (video) → list of {"score", "label", "segmentations"} with contiguous labels.
PredictFn = Callable[[eval_source.EvalVideo], list[dict[str, Any]]]
REPORTED = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


@dataclasses.dataclass
class EvalData:
  """The videos to predict and what to score them against."""

  name: str
  loaded: datasets.LoadedDataset
  gt: dict[str, Any] | str | None     # GT json (dict or path); None: no annotations to score


def split_local_validation(config: common.ConfigDict,
                           sources: dict[str, datasets.LoadedDataset]) -> EvalData | None:
  """Removes the held-out videos from ``sources`` (in place) and returns them, if configured."""
  cfg = config.data.local_val
  if cfg.num_videos <= 0:
    return None
  if cfg.source not in sources:
    raise common.ConfigError(
        f"invalid config value config.data.local_val.source: {cfg.source!r} is not an active "
        f"training source ({sorted(sources)})")
  json_path = common.resolve_paths(config)[cfg.source]["json"]
  train, val, gt = holdout.split(sources[cfg.source], json_path, cfg.num_videos, cfg.seed)
  sources[cfg.source] = train
  return EvalData(name=f"local_val:{cfg.source}", loaded=val, gt=gt)


def eval_data_from_config(config: common.ConfigDict) -> EvalData:
  """``config.data.eval`` loaded for evaluation (unannotated videos kept)."""
  loaded = datasets.build_source("__eval__", config.data.eval, config, for_training=False)
  json_path = common.resolve_paths(config)["__eval__"]["json"]
  with open(json_path) as f:
    has_annotations = bool(json.load(f).get("annotations"))
  return EvalData(name="eval", loaded=loaded, gt=json_path if has_annotations else None)


def run(predict: PredictFn, data: EvalData, config: common.ConfigDict, out_dir: str
        ) -> dict[str, float]:
  """Predicts this process's share of ``data``, then (process 0) writes and scores all."""
  os.makedirs(out_dir, exist_ok=True)
  index, count = jax.process_index(), jax.process_count()
  source = eval_source.make_eval_source(config, data.loaded, index, count)
  label_to_category = data.loaded.label_to_category_id
  start = time.perf_counter()
  results = []
  for video in source:
    for pred in predict(video):
      label = int(pred.pop("label"))
      results.append({"video_id": int(video.video_id), "score": float(pred["score"]),
                      "category_id": int(label_to_category[label]),
                      "segmentations": pred["segmentations"]})
  with open(os.path.join(out_dir, f"results_process_{index}.json"), "w") as f:
    json.dump(results, f)
  if count > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f"eval results written: {out_dir}")
  if index != 0:
    return {}
  merged = []
  for i in range(count):
    part = os.path.join(out_dir, f"results_process_{i}.json")
    with open(part) as f:
      merged.extend(json.load(f))
    os.remove(part)
  write_submission(merged, out_dir)
  metrics: dict[str, float] = {"eval_videos": len(data.loaded.records),
                               "eval_predictions": len(merged),
                               "eval_seconds": round(time.perf_counter() - start, 2)}
  if data.gt is not None:
    scored = ytvis_eval.evaluate(data.gt, merged, ovis=config.data.eval.kind == "ovis")
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
      json.dump({"stats": scored.stats, "per_category": scored.per_category}, f, indent=2,
                default=float)
    metrics.update({k: 100.0 * float(scored.stats[k]) for k in REPORTED if k in scored.stats})
  return metrics
