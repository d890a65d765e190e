"""Greedy matching per (video, category, range), 101-point precision, summary (spec §5, §6).

Arrays keep the official layout with an extra occlusion axis O (O = 1 for YouTube-VIS):
precision [T, R, K, A, O, M] and recall [T, K, A, O, M], -1 where a slice has no valid entry,
so the summary means see the same elements in the same order as ``YTVOSeval.summarize``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from vis_jax.evaluation.loading import Track

IOU_THRS = np.linspace(0.5, 0.95, 10)
REC_THRS = np.linspace(0.0, 1.0, 101)
# Inclusive at both ends; note 128^2 / 256^2 (not COCO's 32^2 / 96^2).
AREA_RANGES = (("all", (0, 1e10)), ("small", (0, 128**2)), ("medium", (128**2, 256**2)),
               ("large", (256**2, 1e10)))
OCC_RANGES = (("all", (0, 1)), ("light", (0, 0.25)), ("medium", (0.25, 0.5)),
              ("heavy", (0.5, 1)))

Range = tuple[float, float]


@dataclasses.dataclass
class Record:
  """One (video, category, area range, occlusion range): ``evaluateVid``'s output, condensed."""

  scores: np.ndarray    # [D] descending (stable)
  matched: np.ndarray   # bool [T, D]: matched to a GT whose id is non-zero
  ignored: np.ndarray   # bool [T, D]
  num_pos: int          # non-ignored GTs


def _outside(value: float, rng: Range) -> bool:
  # Written as the official test so that NaN compares the same way.
  return value < rng[0] or value > rng[1]


def greedy_match(ious: np.ndarray, gt_ignore: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
  """Index of the matched GT per (threshold, prediction), -1 if none; [T, D].

  ``ious`` [D, G] has predictions in score order and GTs in evaluation order (non-ignored
  first). Vectorised over the thresholds; the scan per prediction mirrors ``evaluateVid``:
  a taken non-crowd GT is skipped, a regular match stops the scan at the first ignored GT, and
  ``>=`` against the running best makes the later of two equal IoUs win.
  """
  num_t = IOU_THRS.size
  num_d, num_g = ious.shape
  match = np.full((num_t, num_d), -1, np.int64)
  if num_d == 0 or num_g == 0:
    return match
  taken = np.zeros((num_t, num_g), bool)
  floor = np.minimum(IOU_THRS, 1 - 1e-10)
  all_t = np.arange(num_t)
  for d in range(num_d):
    best = floor.copy()
    m = np.full(num_t, -1, np.int64)
    on_regular = np.zeros(num_t, bool)
    scanning = np.ones(num_t, bool)
    for g in range(num_g):
      cand = scanning if gt_crowd[g] else scanning & ~taken[:, g]
      if gt_ignore[g]:
        stop = cand & on_regular
        scanning = scanning & ~stop
        cand = cand & ~stop
      iou = ious[d, g]
      take = cand & (iou >= best)
      best[take] = iou
      m[take] = g
      on_regular[take] = not gt_ignore[g]
    hit = m >= 0
    taken[all_t[hit], m[hit]] = True
    match[:, d] = m
  return match


class PairEvaluator:
  """Evaluates one (video, category) pair for every range, caching matches by ignore pattern."""

  def __init__(self, dts: Sequence[Track], gts: Sequence[Track], ious: np.ndarray):
    self.dts, self.gts, self.ious = dts, gts, ious
    self.scores = np.array([d.score for d in dts], np.float64)
    self.crowd = np.array([g.iscrowd for g in gts], bool)
    # A GT with id 0 reads as "unmatched" downstream (dtMatches stores the GT id).
    self.id_nonzero = np.array([g.ann_id != 0 for g in gts], bool)
    self._cache: dict[tuple, np.ndarray] = {}

  def record(self, area_rng: Range, occ_rng: Range | None) -> Record:
    gt_ignore = np.array([
        g.iscrowd or _outside(g.avg_area, area_rng)
        or (occ_rng is not None and _outside(g.occ_score, occ_rng))
        for g in self.gts], bool)
    key = tuple(gt_ignore)
    match = self._cache.get(key)
    if match is None:
      order = np.argsort(gt_ignore, kind="stable")
      ordered = greedy_match(self.ious[:, order], gt_ignore[order], self.crowd[order])
      match = np.where(ordered >= 0, order[np.maximum(ordered, 0)], -1) if order.size else ordered
      self._cache[key] = match
    hit = match >= 0
    safe = np.maximum(match, 0)
    num_t = IOU_THRS.size
    if self.gts:
      matched = hit & self.id_nonzero[safe]
      matched_ignored = hit & gt_ignore[safe]
    else:
      matched = matched_ignored = np.zeros((num_t, len(self.dts)), bool)
    # Unmatched predictions (by the id test) outside the area range are ignored.
    dt_out = np.array([_outside(d.avg_area, area_rng) for d in self.dts], bool)
    ignored = matched_ignored | (~matched & dt_out[None, :])
    return Record(self.scores, matched, ignored, int((~gt_ignore).sum()))


def precision_recall(records: Sequence[Record], max_det: int) -> tuple[np.ndarray, np.ndarray]:
  """(precision [T, R], recall [T]) over videos for one (category, ranges, maxDet).

  ``records`` must be in ascending video-id order and have num_pos > 0 in total.
  """
  scores = np.concatenate([r.scores[:max_det] for r in records])
  matched = np.concatenate([r.matched[:, :max_det] for r in records], axis=1)
  ignored = np.concatenate([r.ignored[:, :max_det] for r in records], axis=1)
  num_pos = sum(r.num_pos for r in records)
  # Stable: tied scores keep video-id order, then within-video order.
  order = np.argsort(-scores, kind="mergesort")
  matched, ignored = matched[:, order], ignored[:, order]
  tp = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
  fp = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
  num_t, num_d = tp.shape
  precision = np.zeros((num_t, REC_THRS.size))
  if num_d == 0:
    return precision, np.zeros(num_t)
  rc = tp / num_pos
  pr = tp / (fp + tp + np.spacing(1))
  pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # envelope from the right
  for t in range(num_t):
    idx = np.searchsorted(rc[t], REC_THRS, side="left")
    ok = idx < num_d  # recall levels never reached keep precision 0
    precision[t, ok] = pr[t, idx[ok]]
  return precision, rc[:, -1]


def accumulate(records: dict[tuple[int, int, int], list[Record]], num_categories: int,
               num_areas: int, num_occ: int,
               max_dets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """Fills precision [T, R, K, A, O, M] and recall [T, K, A, O, M] from per-video records.

  ``records[k, a, o]`` lists the existing records of category k in video-id order.
  """
  num_t, num_r, num_m = IOU_THRS.size, REC_THRS.size, len(max_dets)
  precision = -np.ones((num_t, num_r, num_categories, num_areas, num_occ, num_m))
  recall = -np.ones((num_t, num_categories, num_areas, num_occ, num_m))
  for (k, a, o), recs in records.items():
    if not recs or sum(r.num_pos for r in recs) == 0:
      continue  # no GT in this slice: stays -1 and is excluded from the means
    for m, max_det in enumerate(max_dets):
      precision[:, :, k, a, o, m], recall[:, k, a, o, m] = precision_recall(recs, max_det)
  return precision, recall


def summary_value(array: np.ndarray) -> float:
  """Mean of the entries > -1, or -1 if there are none (``_summarize``)."""
  valid = array[array > -1]
  return float(np.mean(valid)) if valid.size else -1.0


def summarize(precision: np.ndarray, recall: np.ndarray, max_dets: Sequence[int],
              ovis: bool) -> dict[str, float]:
  """The official stats, keyed by name: 12 for YouTube-VIS, 18 (with occlusion) for OVIS."""
  areas = {name: i for i, (name, _) in enumerate(AREA_RANGES)}
  occs = {name: i for i, (name, _) in enumerate(OCC_RANGES)} if ovis else {"all": 0}
  last = len(max_dets) - 1

  def value(ap: bool, iou: float | None = None, area: str = "all", occ: str = "all",
            m: int = last) -> float:
    s = precision if ap else recall
    if iou is not None:
      s = s[np.where(iou == IOU_THRS)[0]]
    if ap:
      return summary_value(s[:, :, :, areas[area], occs[occ], m])
    return summary_value(s[:, :, areas[area], occs[occ], m])

  stats = {"AP": value(True), "AP50": value(True, 0.5), "AP75": value(True, 0.75),
           "APs": value(True, area="small"), "APm": value(True, area="medium"),
           "APl": value(True, area="large")}
  if ovis:
    stats.update(APso=value(True, occ="light"), APmo=value(True, occ="medium"),
                 APho=value(True, occ="heavy"))
  for m, max_det in enumerate(max_dets):
    stats[f"AR{max_det}"] = value(False, m=m)
  stats.update(ARs=value(False, area="small"), ARm=value(False, area="medium"),
               ARl=value(False, area="large"))
  if ovis:
    stats.update(ARso=value(False, occ="light"), ARmo=value(False, occ="medium"),
                 ARho=value(False, occ="heavy"))
  return stats
