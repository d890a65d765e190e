"""Where video AP is lost: per GT track, the prediction that segments it best over the video.

AP mixes three failures — masks that do not overlap the object enough, the wrong class on a
good mask, and good masks ranked below worse ones. For every GT track this finds the prediction
of its video with the highest video IoU (spec §4, the evaluator's own ``video_iou``) whatever
its class, and reports that IoU, whether its class is the GT's, its score rank among the
video's predictions, and the best IoU among predictions of the right class; plus, per video,
the predictions that are duplicates (video IoU ≥ 0.5 with a GT track that a higher-scored
prediction already covers at ≥ 0.5). ``python -m vis_jax.evaluate --tracks`` adds it to the
output.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vis_jax.evaluation.loading import GroundTruth, Predictions, load_gt, load_results
from vis_jax.evaluation.video_iou import video_iou

_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def track_breakdown(gt: Mapping | str | os.PathLike, results: Sequence | str | os.PathLike,
                    max_det: int = 100) -> dict[str, Any]:
  """Per-GT-track best predictions and their summary.

  Args:
    gt: YouTube-VIS GT json path or parsed dict.
    results: results json path or parsed list.
    max_det: predictions kept per (video, category), as the evaluator's largest maxDet.

  Returns:
    ``{"tracks": [{"video_id", "ann_id", "category_id", "best_iou", "best_category_id",
    "best_rank", "best_same_class_iou"}, ...], "summary": {...}}``; ``best_rank`` is 0 for the
    video's highest-scored prediction; with no prediction in a video ``best_iou`` is 0 and the
    best fields are None.
  """
  gt_data = load_gt(gt)
  return breakdown(gt_data, load_results(results, gt_data, max_det=max_det))


def breakdown(gt_data: GroundTruth, preds: Predictions) -> dict[str, Any]:
  """``track_breakdown`` on inputs already loaded by ``load_gt`` / ``load_results``."""
  rows, duplicates, num_preds = [], 0, 0
  for video_id in gt_data.video_ids:
    g_items = [(c, t) for (v, c), ts in gt_data.tracks.items() if v == video_id for t in ts]
    d_items = [(c, t) for (v, c), ts in preds.tracks.items() if v == video_id for t in ts]
    d_items.sort(key=lambda item: -item[1].score)   # stable: ties keep results order
    num_preds += len(d_items)
    ious, _ = video_iou([t for _, t in d_items], [t for _, t in g_items])
    covered = np.zeros(len(g_items), bool)
    for d in range(len(d_items)):
      hits = ious[d] >= 0.5
      duplicates += int(np.any(hits & covered))
      covered |= hits
    for j, (category, track) in enumerate(g_items):
      row = {"video_id": video_id, "ann_id": track.ann_id, "category_id": category,
             "best_iou": 0.0, "best_category_id": None, "best_rank": None,
             "best_same_class_iou": 0.0}
      if d_items:
        best = int(np.argmax(ious[:, j]))   # first of ties = the higher score
        same = [d for d, (c, _) in enumerate(d_items) if c == category]
        row.update(best_iou=float(ious[best, j]), best_category_id=d_items[best][0],
                   best_rank=best,
                   best_same_class_iou=float(max((ious[d, j] for d in same), default=0.0)))
      rows.append(row)
  return {"tracks": rows, "summary": _summary(rows, duplicates, num_preds)}


def _summary(rows: list[dict[str, Any]], duplicates: int, num_preds: int) -> dict[str, Any]:
  if not rows:
    return {"gt_tracks": 0, "predictions": num_preds, "duplicates": duplicates}
  best = np.array([r["best_iou"] for r in rows])
  same = np.array([r["best_same_class_iou"] for r in rows])
  right = np.array([r["best_category_id"] == r["category_id"] for r in rows])
  ranks = [r["best_rank"] for r in rows if r["best_rank"] is not None]
  return {
      "gt_tracks": len(rows),
      "predictions": num_preds,
      "best_iou_mean": float(best.mean()),
      "best_iou_quantiles": {f"p{int(q * 100)}": float(v)
                             for q, v in zip(_QUANTILES, np.quantile(best, _QUANTILES),
                                             strict=True)},
      "best_iou_at_least_0.5": float(np.mean(best >= 0.5)),
      "best_iou_at_least_0.75": float(np.mean(best >= 0.75)),
      "best_class_accuracy": float(right.mean()),
      "best_same_class_iou_mean": float(same.mean()),
      "best_rank_mean": float(np.mean(ranks)) if ranks else None,
      "duplicates": duplicates,
  }
