"""Training input-pipeline throughput on the synthetic dataset (default training config).

Builds ``configs/common.base_config()`` with the synthetic source as its only training source,
generates (or reuses) the synthetic dataset, pulls ``--warmup`` batches, then times ``--batches``
more and writes JSON: clips/s, batch shapes and bytes, buckets seen, num_workers.

  python -m benchmarks.input_pipeline [--batches 20] [--num-workers 0] [--smoke] [--output PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import Counter

import numpy as np

from configs import common
from input_pipeline import datasets, pipeline, synthetic


def build_config(num_workers: int | None, batch_size: int | None,
                 root: str | None, smoke: bool = False) -> common.ConfigDict:
  config = common.base_config()
  if smoke:
    common.apply_smoke(config)
  config.data.sources.synthetic = common.source("synthetic",
                                                *common.synthetic_source_paths("train"))
  config.data.num_classes = len(synthetic.CATEGORIES)
  if num_workers is not None:
    config.data.num_workers = num_workers
  if batch_size is not None:
    config.batch_size = batch_size
  if root:
    config.data.synthetic.root = root
  return config


def run(config: common.ConfigDict, batches: int, warmup: int) -> dict:
  s = config.data.synthetic
  t0 = time.perf_counter()
  synthetic.ensure_dataset(**s.to_dict())
  sources = {name: datasets.build_source(name, src, config)
             for name, src in common.active_sources(config).items()}
  setup_seconds = time.perf_counter() - t0
  iterator, info = pipeline.make_train_iterator(config, sources)
  t1 = time.perf_counter()
  for _ in range(warmup):
    next(iterator)
  warmup_seconds = time.perf_counter() - t1
  buckets: Counter = Counter()
  shapes, nbytes, instances = {}, [], []
  t2 = time.perf_counter()
  for _ in range(batches):
    batch = next(iterator)
    buckets[str(tuple(batch["images"].shape[2:4]))] += 1
    shapes = {k: [list(v.shape), str(v.dtype)] for k, v in batch.items()}
    nbytes.append(sum(v.nbytes for v in batch.values()))
    instances.append(float(batch["instance_valid"].sum(1).mean()))
  seconds = time.perf_counter() - t2
  iterator.close()  # stops grain worker processes and frees their shared memory
  clips = batches * info.local_batch_size
  return {
      "clips_per_sec": round(clips / seconds, 3),
      "seconds_per_batch": round(seconds / batches, 3),
      "batches_timed": batches,
      "warmup_batches": warmup,
      "warmup_seconds": round(warmup_seconds, 2),
      "setup_seconds": round(setup_seconds, 2),
      "local_batch_size": info.local_batch_size,
      "num_workers": int(config.data.num_workers),
      "prefetch": int(config.data.prefetch),
      "num_frames": info.num_frames,
      "max_instances": info.max_instances,
      "buckets_seen": dict(buckets),
      "batch_shapes": shapes,
      "mean_batch_megabytes": round(float(np.mean(nbytes)) / 2**20, 1),
      "mean_instances_per_clip": round(float(np.mean(instances)), 2),
      "train_records": info.source_sizes,
      "counters": pipeline.bad_sample_counts(info),
      "host": {"cpu_count": os.cpu_count(), "python": platform.python_version()},
  }


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batches", type=int, default=20, help="timed batches after warm-up")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--num-workers", type=int, default=None,
                      help="grain worker processes (default: config.data.num_workers)")
  parser.add_argument("--batch-size", type=int, default=None)
  parser.add_argument("--root", default=None, help="synthetic dataset directory")
  parser.add_argument("--smoke", action="store_true",
                      help="tiny dataset and inputs (configs/common.apply_smoke): a quick check")
  parser.add_argument("--output", default=os.path.join("benchmarks", "results",
                                                       "input_pipeline.json"))
  args = parser.parse_args(argv)
  config = build_config(args.num_workers, args.batch_size, args.root, args.smoke)
  result = run(config, args.batches, args.warmup)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps({k: result[k] for k in ("clips_per_sec", "seconds_per_batch", "num_workers",
                                           "buckets_seen", "mean_batch_megabytes")}))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
