"""YouTube-VIS / OVIS evaluation: the official AP/AR, exactly, from a GT json and a results json.

Library::

  from vis_jax.evaluate import evaluate, encode_results, write_submission
  result = evaluate("valid.json", "results.json")          # or dicts / lists
  result.stats["AP"], result.per_category

CLI (prints one JSON object of fractions on stdout; exit code 2 on bad input)::

  python -m vis_jax.evaluate --gt GT.json --results RESULTS.json [--ovis] [--per-category]
      [--output metrics.json]

Semantics are those of youtubevos/cocoapi ``ytvoseval`` (and the qjy981010/cocoapi OVIS fork
with ``ovis=True``), quirks included; see /work/shared/spec/ytvis_evaluation.md. Differences
are limited to failure modes: clear ``ValueError``s instead of asserts/KeyErrors, and an empty
results list evaluates (AP 0 where there is GT) with a warning instead of crashing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import numbers
import os
import sys
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vis_jax.evaluation.accumulate import (
  AREA_RANGES,
  IOU_THRS,
  OCC_RANGES,
  PairEvaluator,
  Record,
  accumulate,
  summarize,
  summary_value,
)
from vis_jax.evaluation.loading import (
    EvalInputError,
    GroundTruth,
    Predictions,
    load_gt,
    load_results,
)
from vis_jax.evaluation.submission import encode_results, write_submission
from vis_jax.evaluation.track_breakdown import breakdown
from vis_jax.evaluation.video_iou import video_iou

__all__ = ["EvalInputError", "EvalResult", "encode_results", "evaluate", "evaluate_loaded",
           "main", "write_submission"]

# The official per-(video, category) detection limits; AP uses the largest.
DEFAULT_MAX_DETS = (1, 10, 100)


@dataclasses.dataclass(frozen=True)
class EvalResult:
  """What ``evaluate`` returns.

  Attributes:
    stats: AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl as fractions (−1
      where the slice has no GT), in the official order; OVIS adds APso/APmo/APho after APl and
      ARso/ARmo/ARho at the end. The AR keys follow ``max_dets``.
    per_category: one dict per GT category (sorted id): category_id, name, AP, AP50, AP75
      (−1 for a category without GT).
    precision: [T=10, R=101, K, A=4, M] (OVIS: [T, R, K, A, O=4, M]); −1 where undefined.
    recall: [T, K, A, M] (OVIS: [T, K, A, O, M]).
    num_results: results in the input; num_dropped: those whose category is not in the GT.
  """

  stats: dict[str, float]
  per_category: list[dict[str, Any]]
  precision: np.ndarray
  recall: np.ndarray
  ovis: bool = False
  max_dets: tuple[int, ...] = DEFAULT_MAX_DETS
  num_results: int = 0
  num_dropped: int = 0

  def format_per_category(self) -> str:
    """The per-category table as fixed-width text (values in percent, '-' when undefined)."""
    rows = [f"{'id':>5}  {'name':<24} {'AP':>6} {'AP50':>6} {'AP75':>6}"]
    for c in self.per_category:
      cells = " ".join(f"{100 * c[k]:6.2f}" if c[k] >= 0 else f"{'-':>6}"
                       for k in ("AP", "AP50", "AP75"))
      rows.append(f"{c['category_id']!s:>5}  {str(c['name'])[:24]:<24} {cells}")
    return "\n".join(rows)


def _check_max_dets(max_dets: Sequence[int]) -> tuple[int, ...]:
  values = tuple(sorted(max_dets))  # the official Params sorts them too
  if (len(values) != 3 or not all(isinstance(m, numbers.Integral) and m > 0 for m in values)
      or len(set(values)) != 3):
    raise ValueError(f"max_dets must be three distinct positive integers, got {max_dets!r}")
  return tuple(int(m) for m in values)


def evaluate(gt: Mapping | str | os.PathLike, results: Sequence | str | os.PathLike,
             ovis: bool = False, max_dets: Sequence[int] = DEFAULT_MAX_DETS) -> EvalResult:
  """Evaluates video instance segmentation results exactly as the official API does.

  Args:
    gt: YouTube-VIS / OVIS GT json path, or the parsed dict (not modified).
    results: results json path, or the parsed list (official submission format, not modified).
    ovis: use the OVIS fork (occlusion breakdown; equal-length segmentation lists required).
    max_dets: the three per-(video, category) detection limits; AP uses the largest.

  Returns:
    EvalResult.

  Raises:
    EvalInputError (a ValueError): unreadable or malformed input, a result video id that is not
      a GT video, or (OVIS) a prediction / GT pair with different numbers of frames.
  """
  max_dets = _check_max_dets(max_dets)
  gt_data = load_gt(gt, ovis=ovis)
  preds = load_results(results, gt_data, max_det=max_dets[-1])
  return evaluate_loaded(gt_data, preds, ovis, max_dets)


def evaluate_loaded(gt_data: GroundTruth, preds: Predictions, ovis: bool = False,
                    max_dets: Sequence[int] = DEFAULT_MAX_DETS) -> EvalResult:
  """``evaluate`` on inputs already loaded by ``load_gt`` / ``load_results`` (the latter cut
  to ``max_dets[-1]`` per video and category)."""
  max_dets = _check_max_dets(max_dets)
  if preds.num_results == 0:
    warnings.warn("results list is empty (the official evaluator crashes on it); every "
                  "category with GT scores AP = AR = 0", stacklevel=2)
  area_ranges = [r for _, r in AREA_RANGES]
  occ_ranges = [r for _, r in OCC_RANGES] if ovis else [None]
  cat_index = {c: k for k, c in enumerate(gt_data.category_ids)}
  records: dict[tuple[int, int, int], list[Record]] = defaultdict(list)
  size_mismatches = 0
  for video_id in gt_data.video_ids:
    keys = [(video_id, c) for c in gt_data.category_ids
            if (video_id, c) in gt_data.tracks or (video_id, c) in preds.tracks]
    if not keys:
      continue
    dts = [preds.tracks.get(key, []) for key in keys]
    gts = [gt_data.tracks.get(key, []) for key in keys]
    # One IoU computation per video over all its predictions and GTs (pairs across categories
    # are computed too but never read; they are cheap next to a per-category split).
    ious, mismatches = video_iou([d for ds in dts for d in ds], [g for gs in gts for g in gs])
    size_mismatches += mismatches
    d0 = g0 = 0
    for key, ds, gs in zip(keys, dts, gts, strict=True):
      pair_ious = ious[d0:d0 + len(ds), g0:g0 + len(gs)]
      d0, g0 = d0 + len(ds), g0 + len(gs)
      if ovis:
        _check_equal_lengths(key, ds, gs)
      pair = PairEvaluator(ds, gs, pair_ious)
      k = cat_index[key[1]]
      for a, area_rng in enumerate(area_ranges):
        for o, occ_rng in enumerate(occ_ranges):
          records[k, a, o].append(pair.record(area_rng, occ_rng))
  if size_mismatches:
    warnings.warn(f"{size_mismatches} frame(s) have prediction and GT masks of different sizes; "
                  "like the official evaluator they add 0 to both intersection and union",
                  stacklevel=2)
  precision, recall = accumulate(records, len(gt_data.category_ids), len(area_ranges),
                                 len(occ_ranges), max_dets)
  stats = summarize(precision, recall, max_dets, ovis)
  t50, t75 = (int(np.where(t == IOU_THRS)[0][0]) for t in (0.5, 0.75))
  per_category = []
  for k, c in enumerate(gt_data.category_ids):
    p = precision[:, :, k, 0, 0, -1]  # area all, occlusion all, largest maxDet
    per_category.append({"category_id": c, "name": gt_data.category_names[c],
                         "AP": summary_value(p), "AP50": summary_value(p[t50]),
                         "AP75": summary_value(p[t75])})
  if not ovis:  # the official YouTube-VIS layout has no occlusion axis
    precision, recall = precision[:, :, :, :, 0], recall[:, :, :, 0]
  return EvalResult(stats, per_category, precision, recall, ovis, max_dets,
                    preds.num_results, preds.num_dropped)


def _check_equal_lengths(key: tuple, dts: Sequence, gts: Sequence) -> None:
  # The OVIS fork asserts this for every (prediction, GT) pair it computes an IoU for.
  for d in dts:
    for g in gts:
      if len(d.rles) != len(g.rles):
        raise EvalInputError(
            f"result #{d.ann_id - 1} (video {key[0]!r}, category {key[1]!r}) has "
            f"{len(d.rles)} frames but GT annotation {g.ann_id!r} has {len(g.rles)}; OVIS "
            "evaluation needs one segmentation entry per video frame")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m vis_jax.evaluate",
      description="YouTube-VIS / OVIS AP/AR, exactly as the official evaluator computes them. "
                  "Prints one JSON object of fractions on stdout.")
  parser.add_argument("--gt", required=True, help="GT json (YouTube-VIS / OVIS format)")
  parser.add_argument("--results", required=True, help="results json (submission format)")
  parser.add_argument("--ovis", action="store_true", help="OVIS fork: occlusion breakdown")
  parser.add_argument("--per-category", action="store_true",
                      help="print the per-category AP table on stderr (and add it to --output)")
  parser.add_argument("--tracks", action="store_true",
                      help="add where AP is lost (vis_jax/evaluation/track_breakdown.py): per "
                           "GT track the best prediction's video IoU, class and rank; the "
                           "summary under 'track_breakdown', every track in --output")
  parser.add_argument("--output", help="also write the JSON object to this file")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """CLI entry point; returns the exit code (0 ok, 2 bad input)."""
  args = _parse_args(argv)
  try:
    # Parsed once for the metric and the breakdown.
    gt_data = load_gt(args.gt, ovis=args.ovis)
    preds = load_results(args.results, gt_data, max_det=DEFAULT_MAX_DETS[-1])
    result = evaluate_loaded(gt_data, preds, ovis=args.ovis)
    tracks = breakdown(gt_data, preds) if args.tracks else None
  except EvalInputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  shown: dict[str, Any] = dict(result.stats)
  if tracks is not None:
    shown["track_breakdown"] = tracks["summary"]
  print(json.dumps(shown))
  if args.per_category:
    print(result.format_per_category(), file=sys.stderr)
  if args.output:
    payload = dict(shown)
    if tracks is not None:
      payload["track_breakdown"] = tracks
    if args.per_category:
      payload["per_category"] = result.per_category
    try:
      out_dir = os.path.dirname(os.path.abspath(args.output))
      os.makedirs(out_dir, exist_ok=True)
      with open(args.output, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
    except OSError as e:
      print(f"error: cannot write {args.output!r}: {e}", file=sys.stderr)
      return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
