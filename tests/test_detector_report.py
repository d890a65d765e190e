"""Detector report: frame AP and best-query IoU of oracle detectors with known answers."""

import numpy as np
import pytest

from configs import common
from configs import datasets as presets
from input_pipeline.frames import decode_segmentation
from vis_jax import detector_report
from vis_jax.models import mask2former_model

NUM_CLASSES = 7


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  c = common.base_config()
  presets.apply(c, "synthetic")
  common.apply_smoke(c)
  c.model_name = "mask2former"
  c.model = mask2former_model.default_config()
  c.data.synthetic.root = str(tmp_path_factory.mktemp("synthetic"))
  # Test size = stored size (short side 96), so stride 1 reproduces the frames' grid exactly.
  c.input.min_size_test = c.data.synthetic.short_side
  c.input.max_size_test = 1000
  return common.validate(c)


def _oracle(stride: int, wrong_class: bool = False):
  """A detector whose queries are the present GT masks taken to the output grid (one query
  per instance, class logit 10 on the true — or a wrong — class) plus two empty queries."""
  def predict_frame(video, index):
    h, w = video.original_size
    tracks = [t for t in video.tracks if t.segmentations[index] is not None]
    gt = np.stack([decode_segmentation(t.segmentations[index], h, w) for t in tracks]
                  ) if tracks else np.zeros((0, h, w), bool)
    grid = detector_report.ceiling_grid(gt, video, stride)
    grid_h, grid_w = grid.shape[1:]
    masks = np.concatenate([grid, np.full((2, grid_h, grid_w), -10.0)])
    logits = np.zeros((len(tracks) + 2, NUM_CLASSES + 1), np.float32)
    for i, t in enumerate(tracks):
      logits[i, (t.label + 1) % NUM_CLASSES if wrong_class else t.label] = 10.0
    logits[len(tracks):, -1] = 10.0
    return logits, masks
  return predict_frame


def test_exact_masks_score_100_and_wrong_classes_0(config):
  c = common.ConfigDict(config.to_dict())
  c.model.pixel_decoder.common_stride = 1
  right = detector_report.report(c, _oracle(1), every=3)
  assert right["instance_frames"] > 0
  assert right["best_query_iou"] == right["resolution_ceiling_iou"] == 1.0
  assert right["best_query_class_accuracy"] == 1.0
  assert right["frame_AP"] == right["frame_AP50"] == right["frame_AR10"] == 100.0
  # top-1: the true class, at probability ~1e-4, would otherwise be a (low-ranked) detection.
  wrong = detector_report.report(c, _oracle(1, wrong_class=True), every=3, top_k=1)
  assert wrong["best_query_iou"] == 1.0 and wrong["best_query_class_accuracy"] == 0.0
  assert wrong["frame_AP"] == 0.0
  assert wrong["frames"] == right["frames"] == sum(
      len(range(0, v.length, 3)) for v in detector_report.make_eval_source(
          c, detector_report.runner.eval_data_from_config(c).loaded))


def test_coarse_grid_best_query_iou_equals_resolution_ceiling(config):
  result = detector_report.report(config, _oracle(4), every=5)
  # The best query is at least the instance's own (ceiling) mask; a neighbour's mask rarely
  # overlaps an occluded instance more.
  assert 0.5 < result["resolution_ceiling_iou"] <= result["best_query_iou"] < 1.0
  assert result["best_query_iou"] == pytest.approx(result["resolution_ceiling_iou"], abs=0.01)
  quantiles = result["best_query_iou_quantiles"]
  assert quantiles["p10"] <= quantiles["p50"] <= quantiles["p90"] <= 1.0


def test_ious_hand_computed():
  pred = np.zeros((2, 4, 4), bool)
  pred[0, :2, :2] = True          # 4 pixels
  pred[1, :, :] = True            # 16 pixels
  gt = np.zeros((1, 4, 4), bool)
  gt[0, :2, :] = True             # 8 pixels; overlaps 4 and 8
  np.testing.assert_allclose(detector_report._ious(pred, gt), [[4 / 8], [8 / 16]])


def test_cli_names_a_missing_workdir(tmp_path, capsys):
  assert detector_report.main(["--workdir", str(tmp_path / "nowhere")]) == 2
  assert "nowhere" in capsys.readouterr().err


def test_failure_flags_hand_computed():
  gt = np.zeros((3, 10, 10), bool)
  gt[0, :5, :5] = True            # 25 px, class 1
  gt[1, :5, 5:] = True            # 25 px, class 1
  gt[2, 9, 9] = True              # 1 px (1% < 2%), class 2
  best = np.zeros((3, 10, 10), bool)
  best[0, :5, :8] = True          # covers instance 1 by 15/25 > 1/2: merged
  best[1, :5, 5:] = True          # exact
  best[2, 9, 8:] = True
  flags = detector_report.failure_flags(best, gt, [1, 1, 2])
  np.testing.assert_array_equal(flags["merged"], [True, False, False])
  np.testing.assert_array_equal(flags["same_class_neighbour"], [True, True, False])
  np.testing.assert_array_equal(flags["small"], [False, False, True])
  best[0, :5, 7:] = False         # now covers 10/25 of instance 1: not merged
  assert not detector_report.failure_flags(best, gt, [1, 1, 2])["merged"][0]


def test_failure_breakdown_of_a_union_detector(config):
  """Queries predicting the union of all instances merge exactly the instances of frames with
  two or more (non-empty) instances; the exact oracle merges none."""
  def union_frame(video, index):
    logits, masks = _oracle(1)(video, index)
    n = logits.shape[0] - 2
    masks[:n] = masks[:n].max(0, keepdims=True)
    return logits, masks

  c = common.ConfigDict(config.to_dict())
  c.model.pixel_decoder.common_stride = 1
  exact = detector_report.report(c, _oracle(1), every=3)["failure_breakdown"]
  assert exact["merged"]["in"]["instance_frames"] == 0
  union = detector_report.report(c, union_frame, every=3)
  merged, merged_ious, single = union["failure_breakdown"]["merged"], [], 0
  for video in detector_report.make_eval_source(
      c, detector_report.runner.eval_data_from_config(c).loaded):
    for index in range(0, video.length, 3):
      gt = [decode_segmentation(t.segmentations[index], *video.original_size)
            for t in video.tracks if t.segmentations[index] is not None]
      if len(gt) >= 2:  # IoU of an instance with the union = its share of the union
        merged_ious += [m.sum() / np.logical_or.reduce(gt).sum() for m in gt]
      single += len(gt) == 1
  assert merged["in"]["instance_frames"] == len(merged_ious) > 0
  assert merged["in"]["best_query_iou"] == pytest.approx(np.mean(merged_ious))
  assert merged["out"]["instance_frames"] == single
  total = merged["in"]["instance_frames"] + merged["out"]["instance_frames"]
  assert total == union["instance_frames"]
  same = union["failure_breakdown"]["same_class_neighbour"]
  assert same["in"]["instance_frames"] + same["out"]["instance_frames"] == total


def _instance_features(noise: float, informative: bool = True):
  """Mask features whose channel i is track i's ground truth on the output grid (or nothing),
  plus Gaussian noise: a linear embedding segments every instance exactly when informative."""
  rng = np.random.default_rng(0)

  def features(video, index):
    h, w = video.original_size
    gt = np.stack([decode_segmentation(t.segmentations[index], h, w)
                   if t.segmentations[index] is not None else np.zeros((h, w), bool)
                   for t in video.tracks])
    grid = (detector_report.ceiling_grid(gt, video, 4) + 1) / 2          # [g, h', w']
    feats = np.zeros((*grid.shape[1:], 8), np.float32)
    if informative:
      feats[..., :grid.shape[0]] = grid.transpose(1, 2, 0)
    return feats + noise * rng.normal(size=feats.shape).astype(np.float32)
  return features


def test_linear_probe_finds_separating_features_and_not_noise(config):
  exact = detector_report.report(config, _oracle(4), every=5,
                                 frame_features=_instance_features(0.01))
  probe = exact["linear_probe"]
  # The fitted mask thresholds the instance's own grid (near the resolution ceiling, 0.84;
  # the logistic fit's threshold on soft targets is not exactly 0.5), per frame and per track
  # (the same embedding works in every frame).
  assert 0.75 < probe["frame_iou"] <= exact["resolution_ceiling_iou"] + 0.01
  assert 0.7 < probe["track_iou"] <= exact["resolution_ceiling_iou"] + 0.01
  split = probe["frame_same_class_neighbour"]
  assert split["in"]["count"] + split["out"]["count"] == exact["instance_frames"]
  assert probe["track_same_class_neighbour"]["in"]["count"] + \
      probe["track_same_class_neighbour"]["out"]["count"] > 0
  noise = detector_report.report(config, _oracle(4), every=5,
                                 frame_features=_instance_features(1.0, informative=False))
  assert noise["linear_probe"]["frame_iou"] < 0.3
  assert "linear_probe" not in detector_report.report(config, _oracle(4), every=5)


def test_probe_fit_matches_scipy_logistic_regression():
  from scipy import optimize

  from vis_jax.evaluation import feature_probe
  rng = np.random.default_rng(1)
  feats = rng.normal(size=(1, 10, 12, 3)).astype(np.float32) * [1.0, 3.0, 0.2] + [0, 2, -1]
  targets = rng.uniform(size=(2, 1, 10, 12)).astype(np.float32)
  targets[0] = (feats[..., 0] + 0.5 * feats[..., 1] > 1.0)           # a separable one
  got = feature_probe.fit_masks(feats, targets, steps=4000)
  x = feats.reshape(-1, 3).astype(np.float64)
  x = np.concatenate([(x - x.mean(0)) / np.sqrt(x.var(0) + 1e-6), np.ones((len(x), 1))], 1)
  for row in range(2):
    t = targets[row].reshape(-1).astype(np.float64)

    def objective(w, t=t):
      z = x @ w
      return np.mean(np.logaddexp(0, z) - z * t) + feature_probe.L2 * np.sum(w[:-1] ** 2)
    w = optimize.minimize(objective, np.zeros(4), method="L-BFGS-B", tol=1e-12).x
    np.testing.assert_allclose(got[row].reshape(-1), x @ w, atol=0.05 * (1 + np.abs(x @ w).max()))


def test_vote_statistics_hand_computed():
  """A 1 × 8 strip: instance A covers cells 0–5 (centre x = 3/8), B cells 6–7 (7/8). Cell 5
  (x = 11/16) is nearer B's centre, so by position alone A is 5/6 pure; votes exactly at the
  centres are pure and error-free, and zero offsets are off by the cells' mean distance."""
  cover = np.zeros((2, 1, 8))
  cover[0, 0, :6] = 1.0
  cover[1, 0, 6:] = 1.0
  xs = (np.arange(8) + 0.5) / 8
  exact = np.zeros((1, 8, 2))
  exact[0, :, 0] = np.where(np.arange(8) < 6, 3 / 8, 7 / 8) - xs
  error, purity, position = detector_report.vote_statistics(exact, cover)
  np.testing.assert_allclose(error, [0.0, 0.0], atol=1e-12)
  np.testing.assert_array_equal(purity, [1.0, 1.0])
  np.testing.assert_allclose(position, [5 / 6, 1.0])
  error, purity, _ = detector_report.vote_statistics(np.zeros((1, 8, 2)), cover)
  np.testing.assert_allclose(error, [1.125 / 6, 1 / 16])
  np.testing.assert_allclose(purity, [5 / 6, 1.0])
  # One instance: no purity; an instance covering no cell by more than half: NaN.
  error, purity, _ = detector_report.vote_statistics(np.zeros((1, 8, 2)), cover[:1] * 0.4)
  assert np.isnan(error).all() and np.isnan(purity).all()


def test_centre_votes_of_exact_and_silent_offsets(config):
  """Offsets that point every cell at its majority instance's grid centre: error 0, purity 1;
  zero offsets: purity = position purity < 1 on crowded frames."""
  stride = 4

  def votes(exact):
    def frame_votes(video, index):
      h, w = video.original_size
      tracks = [t for t in video.tracks if t.segmentations[index] is not None]
      gt = np.stack([decode_segmentation(t.segmentations[index], h, w) for t in tracks]
                    ) if tracks else np.zeros((0, h, w), bool)
      cover = (detector_report.ceiling_grid(gt, video, stride) + 1) / 2
      grid_h, grid_w = cover.shape[1:]
      offsets = np.zeros((grid_h, grid_w, 2))
      if exact and len(cover):
        xs, ys = (np.arange(grid_w) + 0.5) / grid_w, (np.arange(grid_h) + 0.5) / grid_h
        cells = np.stack(np.broadcast_arrays(xs[None, :], ys[:, None]), -1)
        centres = np.einsum("ghw,hwc->gc", cover, cells) / cover.sum((1, 2))[:, None]
        owner = cover.argmax(0)
        offsets = np.where((cover.max(0) > 0.5)[..., None], centres[owner] - cells, 0.0)
      return offsets
    return frame_votes

  right = detector_report.report(config, _oracle(stride), every=5, frame_votes=votes(True))
  silent = detector_report.report(config, _oracle(stride), every=5, frame_votes=votes(False))
  assert "centre_votes" not in detector_report.report(config, _oracle(stride), every=5)
  exact, zero = right["centre_votes"], silent["centre_votes"]
  assert exact["vote_error"] < 1e-9 and exact["vote_purity"] == 1.0
  assert exact["count"] == zero["count"] > 0
  assert zero["vote_purity"] == zero["position_purity"] == exact["position_purity"] < 1.0
  assert zero["vote_error"] > 0.01
  split = exact["same_class_neighbour"]
  assert split["count"] <= exact["count"] and split["vote_purity"] == 1.0
