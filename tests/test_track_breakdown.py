"""track_breakdown: per-GT-track best predictions, checked on hand-built masks whose video IoUs
are re-derived here with numpy (sum of per-frame intersections / sum of unions)."""

from __future__ import annotations

import json

import numpy as np
from pycocotools import mask as mask_utils

from vis_jax.evaluate import main
from vis_jax.evaluation.track_breakdown import track_breakdown

H, W, T = 8, 10, 3


def _rle(mask: np.ndarray) -> dict | None:
  if not mask.any():
    return None
  rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {"size": rle["size"], "counts": rle["counts"].decode()}


def _track(box: tuple[int, int, int, int], frames: range) -> np.ndarray:
  m = np.zeros((T, H, W), bool)
  y0, y1, x0, x1 = box
  for t in frames:
    m[t, y0:y1, x0:x1] = True
  return m


def _video_iou(a: np.ndarray, b: np.ndarray) -> float:
  return float((a & b).sum() / (a | b).sum())


def _case():
  big = _track((0, 6, 0, 5), range(3))              # GT 1, class 1: 30 px x 3 frames
  small = _track((6, 8, 6, 9), range(1, 3))         # GT 2, class 1: 6 px in frames 1-2
  merged = big | small                              # one query over both neighbours
  half = _track((0, 3, 0, 5), range(3))             # half of GT 1
  preds = [(0.9, 1, merged), (0.8, 2, small), (0.5, 1, big), (0.4, 1, half)]
  gt = {"videos": [{"id": 7, "height": H, "width": W, "length": T}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {"id": 11, "video_id": 7, "category_id": 1, "iscrowd": 0,
             "segmentations": [_rle(m) for m in g], "areas": [int(m.sum()) or None for m in g]}
            for g in (big, small)]}
  results = [{"video_id": 7, "category_id": c, "score": s,
              "segmentations": [_rle(m) for m in p]} for s, c, p in preds]
  gt["annotations"][1]["id"] = 12
  return gt, results, (big, small), preds


def test_best_prediction_class_rank_and_duplicates_by_hand():
  gt, results, (big, small), preds = _case()
  out = track_breakdown(gt, results)
  ious = np.array([[_video_iou(p, g) for g in (big, small)] for _, _, p in preds])
  # The merged query covers GT 1 (30*3 / (90 + 12) > 0.5) but not GT 2.
  assert ious[0, 0] > 0.5 > ious[0, 1]
  first, second = out["tracks"]
  assert (first["ann_id"], first["best_iou"], first["best_category_id"], first["best_rank"]) == (
      11, 1.0, 1, 2)
  assert first["best_same_class_iou"] == 1.0
  # GT 2 is segmented exactly only by the class-2 prediction; the best class-1 one is `merged`.
  assert (second["best_iou"], second["best_category_id"], second["best_rank"]) == (1.0, 2, 1)
  assert second["best_same_class_iou"] == max(ious[0, 1], ious[2, 1], ious[3, 1])
  s = out["summary"]
  assert s["gt_tracks"] == 2 and s["predictions"] == 4
  assert s["best_class_accuracy"] == 0.5 and s["best_rank_mean"] == 1.5
  assert s["best_same_class_iou_mean"] == (1.0 + ious[0, 1]) / 2
  # `big` (rank 2) re-covers GT 1, already covered by `merged`; `half` has IoU 0.5 with GT 1:
  # a duplicate too. `small` is the first to cover GT 2.
  assert ious[3, 0] == 0.5
  assert s["duplicates"] == 2


def test_video_without_predictions_and_cli(tmp_path, capsys):
  gt, results, _, _ = _case()
  gt["videos"].append({"id": 8, "height": H, "width": W, "length": T})
  gt["annotations"].append(dict(gt["annotations"][0], id=13, video_id=8))
  out = track_breakdown(gt, results)
  assert out["tracks"][2] == {"video_id": 8, "ann_id": 13, "category_id": 1, "best_iou": 0.0,
                              "best_category_id": None, "best_rank": None,
                              "best_same_class_iou": 0.0}
  gt_path, res_path, out_path = (tmp_path / n for n in ("gt.json", "res.json", "out.json"))
  gt_path.write_text(json.dumps(gt))
  res_path.write_text(json.dumps(results))
  assert main(["--gt", str(gt_path), "--results", str(res_path), "--tracks",
               "--output", str(out_path)]) == 0
  printed = json.loads(capsys.readouterr().out)
  assert printed["track_breakdown"] == out["summary"] and "AP" in printed
  assert json.loads(out_path.read_text())["track_breakdown"]["tracks"] == out["tracks"]
