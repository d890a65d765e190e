"""``--mode=data``: run the training input pipeline end to end and report what it produced.

Loads every active source (generating the synthetic dataset on first use), pulls batches,
measures throughput, checks the static batch layout, and writes ``data_report.json`` plus a
contact sheet ``data_batch.png`` of the first batch with one colour per track.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from configs import common
from input_pipeline import datasets, pipeline
from vis_jax import visualize


def _batch_sheet(batch: dict[str, np.ndarray], max_clips: int = 4) -> np.ndarray:
  """Rows = clips, columns = frames; masks of valid instances drawn in track colours."""
  rows = []
  colors = visualize.track_colors(batch["masks"].shape[1])
  for b in range(min(max_clips, batch["images"].shape[0])):
    h, w = batch["image_sizes"][b]
    valid = batch["instance_valid"][b]
    row = []
    for t in range(batch["images"].shape[1]):
      image = batch["images"][b, t, :h, :w]
      masks = batch["masks"][b, valid, t, :h, :w]
      row.append(visualize.overlay_masks(image, masks, colors[valid]))
    rows.append(row)
  return visualize.contact_sheet(rows)


def run(config: common.ConfigDict, workdir: str, num_batches: int = 20) -> dict[str, Any]:
  """Builds the sources and the train iterator, pulls ``num_batches`` batches, writes reports."""
  t0 = time.perf_counter()
  sources = {name: datasets.build_source(name, src, config)
             for name, src in common.active_sources(config).items()}
  load_seconds = time.perf_counter() - t0
  iterator, info = pipeline.make_train_iterator(config, sources)

  shapes: dict[str, list[int]] = {}
  per_source = np.zeros(len(sources), np.int64)
  instances = []
  t1 = time.perf_counter()
  first = None
  for i in range(num_batches):
    batch = next(iterator)
    if i == 0:
      first = batch
      shapes = {k: list(v.shape) for k, v in batch.items()}
      t1 = time.perf_counter()  # throughput excludes the first batch (worker start-up)
    per_source += np.bincount(batch["source_ids"], minlength=len(sources))
    instances.append(batch["instance_valid"].sum(axis=1))
  seconds = time.perf_counter() - t1
  clips = config.batch_size * max(num_batches - 1, 1)

  assert first is not None
  visualize.save_png(os.path.join(workdir, "data_batch.png"), _batch_sheet(first))
  summary = {
      "sources": {name: len(ds.records) for name, ds in sources.items()},
      "load_seconds": round(load_seconds, 2),
      "batches": num_batches,
      "clips_per_sec": round(clips / seconds, 2) if seconds > 0 else None,
      "batch_shapes": shapes,
      "clips_per_source": dict(zip(sources, per_source.tolist(), strict=True)),
      "mean_instances_per_clip": round(float(np.concatenate(instances).mean()), 3),
      "bad_samples": pipeline.bad_sample_counts(info),
  }
  report = {
      "summary": summary,
      "load_reports": {name: ds.report.as_dict() for name, ds in sources.items()},
  }
  with open(os.path.join(workdir, "data_report.json"), "w") as f:
    json.dump(report, f, indent=2, default=str)
  return report
