"""Tests for vis_jax.evaluate: hand-computed AP/AR for each quirk of the official evaluator.

Arithmetic conventions used in the comments (spec §6): AP averages, over the 10 IoU thresholds
t in {.50, .55, ..., .95}, the precision at 101 recall levels r in {0, .01, ..., 1}; precision
at r is the envelope max(pr[i:]) at the first i with recall >= r, or 0 if r is never reached.
So with npig GTs: a lone TP -> 1 at every reached level; "[FP, TP]" with npig = 1 -> .5 at all
101 levels; "[FP, TP]" with npig = 2 -> .5 at the 51 levels r <= .5, i.e. 25.5 / 101.
"""

from __future__ import annotations

import copy
import json
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from vis_jax.evaluate import EvalInputError, encode_results, evaluate, main, write_submission
from vis_jax.evaluation.loading import Track, _occ_score
from vis_jax.evaluation.video_iou import video_iou


def approx(value):
  # Precision is tp / (tp + fp + eps) in the official code, so a "perfect" AP is 1 - 2^-52.
  return pytest.approx(value, abs=1e-12)


YTVIS_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
              "ARl"]


def box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
  m = np.zeros((h, w), np.uint8)
  m[y0:y1, x0:x1] = 1
  return m


def strip(x0: int, x1: int, width: int = 60) -> np.ndarray:
  """A 1-pixel-high frame with columns [x0, x1) set: IoUs are plain interval arithmetic."""
  return box(1, width, 0, 1, x0, x1)


def rle(mask: np.ndarray) -> dict:
  r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {"size": list(r["size"]), "counts": r["counts"].decode()}


def gt_ann(ann_id, video_id, frames, category_id=1, iscrowd=0, areas=None, **extra) -> dict:
  segs = [rle(m) if m is not None else None for m in frames]
  if areas is None:
    areas = [int(m.sum()) if m is not None else None for m in frames]
  return {"id": ann_id, "video_id": video_id, "category_id": category_id, "iscrowd": iscrowd,
          "segmentations": segs, "areas": areas, "bboxes": [None] * len(frames), **extra}


def pred(video_id, score, frames, category_id=1) -> dict:
  return {"video_id": video_id, "category_id": category_id, "score": score,
          "segmentations": [rle(m) if m is not None else None for m in frames]}


def gt_json(anns, video_ids=(1,), category_ids=(1,), size=(10, 10)) -> dict:
  return {"videos": [{"id": v, "height": size[0], "width": size[1]} for v in video_ids],
          "categories": [{"id": c, "name": f"cat{c}"} for c in category_ids],
          "annotations": anns}


def test_perfect_predictions_give_ap_one():
  a = box(10, 10, 0, 4, 0, 5)
  b = box(10, 10, 5, 9, 2, 8)
  anns = [gt_ann(1, 1, [a, a, None]), gt_ann(2, 2, [b, None, b], category_id=2, ignore=1),
          gt_ann(3, 2, [None, a, a])]
  results = [pred(1, 0.9, [a, a, None]), pred(2, 0.8, [b, None, b], 2), pred(2, 0.7, [None, a, a])]
  gt = gt_json(anns, video_ids=(1, 2), category_ids=(1, 2))
  gt_before, results_before = copy.deepcopy(gt), copy.deepcopy(results)
  r = evaluate(gt, results)
  assert list(r.stats) == YTVIS_KEYS
  # All masks are small; the GT "ignore": 1 flag is overwritten by the official code (quirk 8).
  expected = dict.fromkeys(YTVIS_KEYS, 1.0) | {"APm": -1.0, "APl": -1.0, "ARm": -1.0, "ARl": -1.0}
  assert r.stats == approx(expected)
  assert [c["AP"] for c in r.per_category] == approx([1.0, 1.0])
  assert r.precision.shape == (10, 101, 2, 4, 3) and r.recall.shape == (10, 2, 4, 3)
  assert gt == gt_before and results == results_before  # inputs untouched


@pytest.mark.parametrize("gt_frames,pred_frames,expected", [
    # Spec §4 example: GT 100 px in frames 0, 1; prediction the same 100 px in frames 1, 2:
    # I = 100, U = 100 (frame 0, GT only) + 100 + 100 (frame 2, prediction only) -> 1/3 < .5.
    ([box(10, 10, 0, 10, 0, 10)] * 2 + [None], [None] + [box(10, 10, 0, 10, 0, 10)] * 2,
     dict(AP=0.0, AP50=0.0, AR100=0.0)),
    # Prediction-only frame 3 (36 px): I = 3 * 20, U = 60 + 36 -> .625: matched at
    # t = .5, .55, .6 only -> AP = 3/10, AP50 = 1, AP75 = 0, AR = 3/10.
    ([box(10, 10, 0, 4, 0, 5)] * 3 + [None], [box(10, 10, 0, 4, 0, 5)] * 3
     + [box(10, 10, 4, 10, 4, 10)], dict(AP=0.3, AP50=1.0, AP75=0.0, AR100=0.3)),
    # GT-only frame 3 (16 px): I = 60, U = 60 + 16 -> .789: matched at t <= .75 (6 of 10).
    ([box(10, 10, 0, 4, 0, 5)] * 3 + [box(10, 10, 6, 10, 6, 10)], [box(10, 10, 0, 4, 0, 5)] * 3
     + [None], dict(AP=0.6, AP50=1.0, AP75=1.0, AR100=0.6)),
])
def test_frame_present_on_one_side_only(gt_frames, pred_frames, expected):
  r = evaluate(gt_json([gt_ann(1, 1, gt_frames)]), [pred(1, 0.9, pred_frames)])
  for key, value in expected.items():
    assert r.stats[key] == approx(value), key


def test_equal_iou_tie_goes_to_later_gt():
  # GT A = [0,10), B = [4,14). p1 = [2,12): IoU 8/12 with both (tie). p2 = [0,10): IoU 1 with A,
  # 6/14 with B. The later GT (B) takes p1, leaving A for p2.
  gt = gt_json([gt_ann(1, 1, [strip(0, 10)]), gt_ann(2, 1, [strip(4, 14)])], size=(1, 60))
  r = evaluate(gt, [pred(1, 0.9, [strip(2, 12)]), pred(1, 0.8, [strip(0, 10)])])
  # t <= .65 (4 thresholds): two TPs -> 1. t >= .7 (6): p1 FP, p2 TP, npig 2 -> 25.5/101.
  # Had A won the tie, t <= .65 would be [TP, FP] -> 51/101 instead of 1.
  assert r.stats["AP50"] == approx(1.0)
  assert r.stats["AP75"] == approx(25.5 / 101)
  assert r.stats["AP"] == approx((4 + 6 * 25.5 / 101) / 10)
  assert r.stats["AR100"] == approx((4 * 1 + 6 * 0.5) / 10)
  # maxDet 1 keeps p1 only: recall .5 at the 4 thresholds where it matches.
  assert r.stats["AR1"] == approx(4 * 0.5 / 10)


def test_crowd_gt_plain_iou_ignored_and_absorbs_several():
  # Regular GT R = [0,10); crowd C = [20,45) (25 px).
  gt = gt_json([gt_ann(1, 1, [strip(0, 10)]), gt_ann(2, 1, [strip(20, 45)], iscrowd=1)],
               size=(1, 60))
  results = [pred(1, 0.9, [strip(20, 33)]),   # inside C: plain IoU 13/25 = .52 (COCO's: 1)
             pred(1, 0.8, [strip(0, 10)]),    # = R
             pred(1, 0.7, [strip(20, 45)])]   # = C: IoU 1, absorbed by the crowd at every t
  r = evaluate(gt, results)
  # t = .5: p1 and p3 go to C (ignored), p2 TP -> 1. t >= .55: p1 is an FP ahead of the TP
  # -> [FP, TP], npig 1 -> .5. AP = (1 + 9 * .5) / 10.
  assert r.stats["AP50"] == approx(1.0)
  assert r.stats["AP75"] == approx(0.5)
  assert r.stats["AP"] == approx(0.55)
  assert r.stats["AR100"] == approx(1.0)


def test_regular_gt_preferred_over_crowd_at_lower_iou():
  # R = [0,10), crowd C = [0,12); p = [0,12): IoU 10/12 = .833 with R, 1 with C.
  gt = gt_json([gt_ann(1, 1, [strip(0, 10)]), gt_ann(2, 1, [strip(0, 12)], iscrowd=1)],
               size=(1, 60))
  r = evaluate(gt, [pred(1, 0.9, [strip(0, 12)])])
  # t <= .8 (7 thresholds): matched to R, the scan stops at the ignored crowd -> TP -> 1.
  # t >= .85: only C qualifies -> ignored -> no TP, no FP -> 0.
  assert r.stats["AP"] == approx(0.7)
  assert r.stats["AR100"] == approx(0.7)


def test_max_dets_apply_per_video_and_category():
  a, b, c = box(10, 10, 0, 3, 0, 3), box(10, 10, 5, 9, 5, 9), box(10, 10, 0, 3, 5, 9)
  gt = gt_json([gt_ann(1, 1, [a]), gt_ann(2, 1, [b]), gt_ann(3, 1, [c], category_id=2)],
               category_ids=(1, 2))
  r = evaluate(gt, [pred(1, 0.9, [a]), pred(1, 0.8, [b]), pred(1, 0.7, [c], 2)])
  # maxDet 1 keeps one prediction per (video, category): cat 1 recall 1/2, cat 2 recall 1.
  assert r.stats["AR1"] == approx(0.75)
  assert r.stats["AR10"] == approx(1.0) and r.stats["AP"] == approx(1.0)


def test_max_dets_cut_before_matching():
  g, miss = box(10, 10, 0, 3, 0, 3), box(10, 10, 6, 9, 6, 9)
  gt = gt_json([gt_ann(1, 1, [g])])
  results = [pred(1, s, [miss]) for s in (0.9, 0.8, 0.7)] + [pred(1, 0.6, [g])]
  # Default limits: [FP, FP, FP, TP], npig 1 -> envelope .25 at every level -> AP .25.
  r = evaluate(gt, results)
  assert r.stats["AP"] == approx(0.25) and r.stats["AR100"] == approx(1.0)
  # max_dets (1, 2, 3): the TP is the 4th by score and is cut before matching.
  r = evaluate(gt, results, max_dets=(3, 1, 2))
  assert r.max_dets == (1, 2, 3) and list(r.stats)[6:9] == ["AR1", "AR2", "AR3"]
  assert r.stats["AP"] == approx(0.0) and r.stats["AR3"] == approx(0.0)


@pytest.mark.parametrize("tp_video,fp_video,expected_ap", [(2, 1, 0.5), (1, 2, 1.0)])
def test_score_ties_across_videos_break_by_video_id(tp_video, fp_video, expected_ap):
  g, miss = box(10, 10, 0, 3, 0, 3), box(10, 10, 6, 9, 6, 9)
  gt = gt_json([gt_ann(1, tp_video, [g])], video_ids=(1, 2))
  # File order always lists the TP first; the official sort puts the lower video id first.
  results = [pred(tp_video, 0.5, [g]), pred(fp_video, 0.5, [miss])]
  r = evaluate(gt, results)
  # FP first: [FP, TP] -> .5 everywhere. TP first: [TP, FP] -> envelope 1 at every level.
  assert r.stats["AP"] == approx(expected_ap)


def test_categories_without_gt_are_excluded_and_unknown_dropped():
  g = box(10, 10, 0, 3, 0, 3)
  gt = gt_json([gt_ann(1, 1, [g]), gt_ann(2, 1, [g], category_id=3)], category_ids=(1, 2, 3))
  results = [pred(1, 0.5, [g]),                 # cat 1: perfect
             pred(1, 0.99, [g], category_id=2),  # cat 2 has no GT: confident FP, no effect
             pred(1, 0.99, [g], category_id=99)]  # not a GT category: dropped silently
  r = evaluate(gt, results)
  # Valid categories: 1 (AP 1) and 3 (GT but no prediction: AP 0); 2 is excluded.
  assert r.stats["AP"] == approx(0.5)
  assert [c["category_id"] for c in r.per_category] == [1, 2, 3]
  assert [c["AP"] for c in r.per_category] == approx([1.0, -1.0, 0.0])
  assert (r.num_results, r.num_dropped) == (3, 1)


def test_size_classes_at_the_boundaries():
  tiny = box(10, 10, 0, 2, 0, 2)
  # The GT size class comes from the "areas" field, not the masks (quirk 2). GT1: mean of the
  # truthy areas (16000 + 16768) / 2 = 16384 = 128^2 -> small AND medium. GT2: 65536 = 256^2
  # -> medium AND large.
  gt = gt_json([gt_ann(1, 1, [tiny] * 4, areas=[16000, None, 16768, 0]),
                gt_ann(2, 2, [tiny], areas=[65536])], video_ids=(1, 2))
  results = [pred(1, 0.5, [tiny] * 4),    # perfect on GT1
             pred(1, 0.9, [None] * 4)]    # all-null: IoU 0, average area 0 -> "small"
  r = evaluate(gt, results)
  # all: npig 2, [FP(null), TP] -> 25.5/101.
  assert r.stats["AP"] == approx(25.5 / 101)
  # small: GT1 only; the null prediction is an FP in range -> [FP, TP], npig 1 -> .5.
  assert r.stats["APs"] == approx(0.5)
  # medium: GT1 + GT2; the null prediction (area 0) is out of range -> ignored -> [TP], npig 2.
  assert r.stats["APm"] == approx(51 / 101)
  # large: GT2 only; the TP matched GT1, ignored here -> nothing counts -> 0.
  assert r.stats["APl"] == approx(0.0)
  assert (r.stats["ARs"], r.stats["ARm"], r.stats["ARl"]) == approx((1.0, 0.5, 0.0))


def test_shorter_and_longer_prediction_lists():
  g = box(10, 10, 0, 3, 0, 3)
  gt = gt_json([gt_ann(1, 1, [g, g]), gt_ann(2, 2, [g, g])], video_ids=(1, 2))
  # zip() truncation: a 1-frame prediction vs a 2-frame GT is IoU 1; so is a 3-frame one whose
  # extra frame is large.
  results = [pred(1, 0.9, [g]), pred(2, 0.9, [g, g, box(10, 10, 0, 10, 0, 10)])]
  assert evaluate(gt, results).stats["AP"] == approx(1.0)
  ovis_gt = copy.deepcopy(gt)
  for ann in ovis_gt["annotations"]:
    ann["occlusion"] = ["no_occlusion"] * 2
  with pytest.raises(EvalInputError, match="1 frames but GT annotation 1 has 2"):
    evaluate(ovis_gt, results, ovis=True)


def test_empty_frames_and_size_mismatch():
  g = box(10, 10, 0, 3, 0, 3)
  gt = gt_json([gt_ann(1, 1, [g, None, g])])
  # Frame 1: all-zero RLE where the GT is absent -> adds 0 to U, like null (quirk 1).
  # Frame 2: a 20x20 mask vs the 10x10 GT -> the merge is empty: adds 0 to I and U (quirk 14).
  frames = [g, np.zeros((10, 10), np.uint8), np.ones((20, 20), np.uint8)]
  with pytest.warns(UserWarning, match="different sizes"):
    r = evaluate(gt, [pred(1, 0.9, frames)])
  assert r.stats["AP"] == approx(1.0)


def test_gt_id_zero_is_never_a_true_positive():
  g = box(10, 10, 0, 3, 0, 3)
  r = evaluate(gt_json([gt_ann(0, 1, [g])]), [pred(1, 0.9, [g])])
  assert r.stats["AP"] == approx(0.0) and r.stats["AR100"] == approx(0.0)


def test_empty_results_warn_and_score_zero():
  gt = gt_json([gt_ann(1, 1, [box(10, 10, 0, 3, 0, 3)])], category_ids=(1, 2))
  with pytest.warns(UserWarning, match="empty"):
    r = evaluate(gt, [])
  assert (r.stats["AP"], r.stats["AR100"], r.stats["APl"]) == approx((0.0, 0.0, -1.0))
  assert [c["AP"] for c in r.per_category] == approx([0.0, -1.0])


def test_bad_results_raise_clear_errors():
  gt = gt_json([gt_ann(1, 1, [box(10, 10, 0, 3, 0, 3)])], video_ids=(1, 2))
  g = box(10, 10, 0, 3, 0, 3)
  with pytest.raises(EvalInputError, match="not in the GT.*77"):
    evaluate(gt, [pred(1, 0.9, [g]), pred(77, 0.5, [g])])
  uncompressed = pred(1, 0.9, [g])
  uncompressed["segmentations"][0] = {"size": [10, 10], "counts": [0, 3, 7, 90]}
  with pytest.raises(ValueError, match="uncompressed RLE"):
    evaluate(gt, [uncompressed])
  with pytest.raises(ValueError, match="result #0 must be an object"):
    evaluate(gt, [{"video_id": 1, "score": 0.5}])
  with pytest.raises(ValueError, match="no 'areas' field"):
    evaluate(_without(gt, "areas"), [pred(1, 0.9, [g])])


def _without(gt: dict, key: str) -> dict:
  gt = copy.deepcopy(gt)
  del gt["annotations"][0][key]
  return gt


def test_ovis_occlusion_breakdown():
  g = box(10, 10, 0, 3, 0, 3)
  anns = [gt_ann(1, 1, [g, g], occlusion=["no_occlusion", "no_occlusion"]),  # score 0: light
          # non-null labels [.75, .25]; mean of the top ceil(2/2) = .75: heavy
          gt_ann(2, 2, [g, g, g], occlusion=["severe_occlusion", None, "slight_occlusion"])]
  r = evaluate(gt_json(anns, video_ids=(1, 2)), [pred(1, 0.9, [g, g])], ovis=True)
  assert list(r.stats) == ["AP", "AP50", "AP75", "APs", "APm", "APl", "APso", "APmo", "APho",
                           "AR1", "AR10", "AR100", "ARs", "ARm", "ARl", "ARso", "ARmo", "ARho"]
  # all: [TP], npig 2 -> 51/101. light: only GT1 -> 1. medium: no GT -> -1. heavy: the TP
  # matched GT1, which is ignored there -> 0.
  assert r.stats["AP"] == approx(51 / 101)
  assert (r.stats["APso"], r.stats["APmo"], r.stats["APho"]) == approx((1.0, -1.0, 0.0))
  assert (r.stats["ARso"], r.stats["ARmo"], r.stats["ARho"]) == approx((1.0, -1.0, 0.0))
  assert r.precision.shape == (10, 101, 1, 4, 4, 3)
  # n = 4 labels [0, 0, .25, .75]: top 2 -> .5, both "medium" and "heavy".
  assert _occ_score(["no_occlusion", "no_occlusion", "slight_occlusion", "severe_occlusion"],
                    "x") == 0.5
  with pytest.raises(EvalInputError, match="occlusion"):
    evaluate(gt_json([gt_ann(1, 1, [g])]), [pred(1, 0.9, [g])], ovis=True)


def _naive_iou(d_frames, g_frames) -> float:
  """Independent per-pair reference: the spec §4 loop with RLE merges."""
  inter = union = 0
  for d, g in zip(d_frames, g_frames, strict=False):
    if d and g:
      inter += int(mask_utils.area(mask_utils.merge([d, g], True)))
      union += int(mask_utils.area(mask_utils.merge([d, g], False)))
    elif d or g:
      union += int(mask_utils.area(d or g))
  return inter / union if union > 0 else 0.0


def _track(frames) -> Track:
  areas = np.array([int(mask_utils.area(f)) for f in frames if f], np.int64)
  present = np.array([bool(f) for f in frames])
  full, sizes = np.zeros(len(frames), np.int64), np.zeros((len(frames), 2), np.int64)
  full[present] = areas
  sizes[present] = [f["size"] for f in frames if f]
  return Track(0, 0.0, False, 0.0, None, [f or None for f in frames], present, full, sizes)


def test_video_iou_matches_direct_merges():
  rng = np.random.default_rng(0)

  def random_frames(n):
    out = []
    for _ in range(n):
      if rng.random() < 0.2:
        out.append(None)
        continue
      h = 12 if rng.random() < 0.9 else 13  # occasional size mismatch
      m = (rng.random((h, 16)) < rng.uniform(0, 0.6)).astype(np.uint8)
      out.append(rle(m))
    return out

  dts = [random_frames(int(rng.integers(1, 7))) for _ in range(7)]
  gts = [random_frames(int(rng.integers(1, 7))) for _ in range(4)]
  ious, _ = video_iou([_track(f) for f in dts], [_track(f) for f in gts])
  expected = np.array([[_naive_iou(d, g) for g in gts] for d in dts])
  np.testing.assert_array_equal(ious, expected)  # exact, not approximate


def test_submission_zip_round_trip(tmp_path):
  masks = np.zeros((2, 3, 12, 16), bool)
  masks[0, :, 2:6, 3:9] = True
  masks[1, :2, 7:11, 1:5] = True  # frame 2 empty: still written as an (empty) RLE
  gt = gt_json([gt_ann(1, 5, list(masks[0])), gt_ann(2, 5, list(masks[1][:2]) + [None],
                                                      category_id=3)],
               video_ids=(5,), category_ids=(1, 3), size=(12, 16))
  results = encode_results(5, masks, np.array([0.9, 0.4], np.float32), np.array([1, 3]))
  assert results[1]["segmentations"][2]["counts"] == rle(masks[1][2])["counts"]
  assert all(isinstance(s["counts"], str) for r in results for s in r["segmentations"])
  json_path, zip_path = write_submission(results, str(tmp_path / "sub"))
  with zipfile.ZipFile(zip_path) as zf:
    assert zf.namelist() == ["results.json"]
    loaded = json.loads(zf.read("results.json"))
  assert loaded == json.load(open(json_path)) == json.loads(json.dumps(results))
  assert evaluate(gt, loaded).stats["AP"] == approx(1.0)


def _write(path, obj) -> str:
  path.write_text(json.dumps(obj))
  return str(path)


def test_cli(tmp_path, capsys):
  g = box(10, 10, 0, 3, 0, 3)
  gt_path = _write(tmp_path / "gt.json", gt_json([gt_ann(1, 1, [g])]))
  res_path = _write(tmp_path / "res.json", [pred(1, 0.9, [g])])
  out = tmp_path / "out" / "metrics.json"
  assert main(["--gt", gt_path, "--results", res_path, "--per-category",
               "--output", str(out)]) == 0
  captured = capsys.readouterr()
  stats = json.loads(captured.out)
  assert list(stats) == YTVIS_KEYS and stats["AP"] == approx(1.0)
  assert "cat1" in captured.err and "100.00" in captured.err
  assert json.loads(out.read_text())["per_category"][0]["AP"] == approx(1.0)
  # Errors: exit code 2 and a message naming the file / the problem.
  assert main(["--gt", str(tmp_path / "nope.json"), "--results", res_path]) == 2
  assert "nope.json" in capsys.readouterr().err
  bad_path = _write(tmp_path / "bad.json", [pred(9, 0.9, [g])])
  assert main(["--gt", gt_path, "--results", bad_path]) == 2
  assert "bad.json" in capsys.readouterr().err
  (tmp_path / "broken.json").write_text("[{")
  assert main(["--gt", gt_path, "--results", str(tmp_path / "broken.json")]) == 2
  assert "not valid JSON" in capsys.readouterr().err


def test_cli_module_entry_point(tmp_path):
  g = box(10, 10, 0, 3, 0, 3)
  gt_path = _write(tmp_path / "gt.json", gt_json([gt_ann(1, 1, [g])]))
  res_path = _write(tmp_path / "res.json", [pred(1, 0.9, [g])])
  proc = subprocess.run([sys.executable, "-m", "vis_jax.evaluate", "--gt", gt_path,
                         "--results", res_path], capture_output=True, text=True, check=False,
                        cwd=pathlib.Path(__file__).resolve().parents[1])
  assert proc.returncode == 0, proc.stderr
  assert json.loads(proc.stdout)["AP"] == approx(1.0)
