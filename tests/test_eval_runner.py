"""Evaluation plumbing: local-validation hold-out and the runner, with oracle predictors."""

import json
import os
import zipfile

import numpy as np
import pytest
from pycocotools import mask as mask_util

from configs import common
from configs import datasets as presets
from input_pipeline import datasets, holdout
from input_pipeline.frames import decode_segmentation
from vis_jax.evaluation import runner


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  c = common.base_config()
  presets.apply(c, "synthetic")
  common.apply_smoke(c)
  c.data.synthetic.root = str(tmp_path_factory.mktemp("synthetic"))
  c.data.synthetic.num_train_videos = 10
  c.data.local_val.source = "synthetic"
  c.data.local_val.num_videos = 3
  return common.validate(c)


def _oracle(shuffle_labels: bool = False):
  """Predicts every GT track exactly (optionally with a wrong class)."""
  def predict(video):
    preds = []
    for track in video.tracks:
      h, w = video.original_size
      rles = []
      for seg in track.segmentations:
        mask = decode_segmentation(seg, h, w)
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        rles.append(rle)
      label = (track.label + 1) % 7 if shuffle_labels else track.label
      preds.append({"score": 0.9, "label": label, "segmentations": rles})
    return preds
  return predict


def test_holdout_is_seeded_and_disjoint(config):
  ids = list(range(1, 21))
  a = holdout.holdout_video_ids(ids, 5, seed=0)
  assert a == holdout.holdout_video_ids(ids, 5, seed=0) and len(a) == 5
  assert a != holdout.holdout_video_ids(ids, 5, seed=1)
  with pytest.raises(ValueError, match="num_videos=20"):
    holdout.holdout_video_ids(ids, 20, seed=0)

  sources = {"synthetic": datasets.build_source("synthetic", config.data.sources.synthetic,
                                                config)}
  before = {r.video_id for r in sources["synthetic"].records}
  data = runner.split_local_validation(config, sources)
  train_ids = {r.video_id for r in sources["synthetic"].records}
  val_ids = {r.video_id for r in data.loaded.records}
  assert len(val_ids) == 3 and not train_ids & val_ids and train_ids | val_ids == before
  assert {v["id"] for v in data.gt["videos"]} == val_ids
  assert {a["video_id"] for a in data.gt["annotations"]} == val_ids


@pytest.mark.parametrize("wrong_class,expected_ap", [(False, 100.0), (True, 0.0)])
def test_runner_scores_oracle_and_writes_submission(config, tmp_path, wrong_class,
                                                    expected_ap):
  sources = {"synthetic": datasets.build_source("synthetic", config.data.sources.synthetic,
                                                config)}
  data = runner.split_local_validation(config, sources)
  metrics = runner.run(_oracle(wrong_class), data, config, str(tmp_path / "step_5"))
  assert metrics["AP"] == pytest.approx(expected_ap, abs=1e-6)
  assert metrics["eval_videos"] == 3
  results = json.load(open(tmp_path / "step_5" / "results.json"))
  assert len(results) == metrics["eval_predictions"] > 0
  with zipfile.ZipFile(tmp_path / "step_5" / "results.zip") as z:
    assert z.namelist() == ["results.json"]
  stats = json.load(open(tmp_path / "step_5" / "metrics.json"))["stats"]
  assert stats["AP"] == pytest.approx(expected_ap / 100)
  assert not [f for f in os.listdir(tmp_path / "step_5") if f.startswith("results_process")]
