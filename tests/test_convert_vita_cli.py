"""``python -m vis_jax.convert --from vita``: an official VITA checkpoint → our VITA params.

The checkpoint is assembled from two independent references: a Hugging Face Mask2Former
(PyTorch) renamed to the official detectron2 keys (the rules of ``tests/test_mask2former_model.py``)
for the frame detector, and random tensors under the official ``vita_module.*`` names and shapes
(``tests/test_vita.py::official_state_dict``, written from spec §7.1), plus the criterion
buffers the official checkpoints carry.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flax import traverse_util

from vis_jax import checkpointing, convert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests import test_mask2former_model as m2f_tests  # noqa: E402
from tests import test_vita as vita_tests  # noqa: E402

HEADS = m2f_tests.HEADS

CONFIG_TEMPLATE = m2f_tests.config_template(
    "vita_synthetic", "  from vis_jax.models import vita\n"
    "  c.model.vita = vita.default_config(**{vita!r})\n")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("vita_convert")
  ours_backbone = m2f_tests.BACKBONES["resnet"][1]
  model = m2f_tests.hf_model("resnet")
  official = m2f_tests.hf_to_detectron2(m2f_tests.shared.state_dict_numpy(model))
  # The VITA module sees the detector's query width (C) and un-projected map (conv_dim).
  assert vita_tests.C == HEADS["hidden_dim"] and vita_tests.K == HEADS["num_labels"]
  vita_cfg = vita_tests.small_cfg()
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(vita_tests, "QF", HEADS["num_queries"])
    mp.setattr(vita_tests, "CONV", HEADS["feature_size"])
    official.update(vita_tests.official_state_dict(vita_cfg))
  official["criterion.empty_weight"] = np.ones(HEADS["num_labels"] + 1, np.float32)
  official["vita_criterion.empty_weight"] = np.ones(HEADS["num_labels"] + 1, np.float32)
  config_path = tmp / "config.py"
  config_path.write_text(CONFIG_TEMPLATE.format(backbone=ours_backbone,
                                                vita=vita_cfg.to_dict(), **HEADS))
  return dict(tmp=tmp, official=official, config=str(config_path),
              overrides=[f"--config.data.num_classes={HEADS['num_labels']}"])


def _convert(case, state_dict, name, *extra):
  weights = case["tmp"] / f"{name}.pth"
  torch.save({"model": {k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}},
             weights)
  return convert.main(["--from", "vita", "--input", str(weights), "--config", case["config"],
                       "--output", str(case["tmp"] / name), *case["overrides"], *extra])


def _shapes(tree):
  return {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(
      dict(tree), sep="/").items()}


def test_official_vita_checkpoint_converts_completely(checkpoint, capsys):
  assert _convert(checkpoint, checkpoint["official"], "full") == 0
  out = capsys.readouterr().out
  assert "missing 0, unexpected 0, shape-mismatched 0," in out
  report = json.loads((checkpoint["tmp"] / "full" / "conversion.json").read_text())
  # The criterion buffers and BatchNorm counters are known unused buffers, nothing else.
  assert {"criterion.empty_weight", "vita_criterion.empty_weight"} <= set(report["ignored"])
  assert all(k.endswith(("empty_weight", ".num_batches_tracked")) for k in report["ignored"])
  params, state = checkpointing.load_inference_params(str(checkpoint["tmp"] / "full"))
  abstract, abstract_state = convert.abstract_variables(
      convert.load_config(checkpoint["config"], checkpoint["overrides"]))
  # Every tensor of the model came from the file: parameters and the FrozenBN statistics.
  assert _shapes(params) == _shapes(abstract)
  assert _shapes(state) == _shapes(abstract_state) and "frozen_bn" in state
  sd, vita = checkpoint["official"], params["vita"]
  np.testing.assert_array_equal(
      state["frozen_bn"]["detector"]["backbone"]["stem"]["conv1"]["norm"]["running_var"],
      sd["backbone.stem.conv1.norm.running_var"])
  np.testing.assert_array_equal(  # conv [O, I, kh, kw] → [kh, kw, I, O]
      params["detector"]["backbone"]["res3"]["block0"]["conv2"]["kernel"],
      sd["backbone.res3.0.conv2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(vita["fq_pos_embed"]["embedding"],
                                sd["vita_module.fq_pos.weight"])
  np.testing.assert_array_equal(vita["class_embed"]["kernel"],
                                sd["vita_module.class_embed.weight"].T)
  qkv = sd["vita_module.enc_self_attn.0.self_attn.in_proj_weight"]
  c = qkv.shape[1]
  np.testing.assert_array_equal(vita["enc_self_attn_0"]["self_attn"]["k_proj"]["kernel"],
                                qkv[c:2 * c].T)
  np.testing.assert_array_equal(vita["vita_mask_features"]["kernel"],
                                sd["vita_module.vita_mask_features.weight"][:, :, 0, 0].T)
  np.testing.assert_array_equal(
      params["detector"]["predictor"]["class_embed"]["kernel"],
      sd["sem_seg_head.predictor.class_embed.weight"].T)


def test_missing_and_unknown_keys_refuse_the_conversion(checkpoint, capsys):
  sd = dict(checkpoint["official"])
  del sd["vita_module.fq_pos.weight"]
  del sd["sem_seg_head.predictor.query_feat.weight"]
  sd["vita_module.extra_head.weight"] = np.zeros(3, np.float32)
  sd["vita_head.weight"] = np.zeros(3, np.float32)  # outside every known prefix
  assert _convert(checkpoint, sd, "broken") == convert.EXIT_INCOMPLETE
  captured = capsys.readouterr()
  assert "missing: vita_module.fq_pos.weight" in captured.out
  assert "missing: detector/predictor/query_feat_embed/embedding" in captured.out
  assert "unexpected: vita_module.extra_head.weight" in captured.out
  assert "unexpected: vita_head.weight" in captured.out
  assert "--allow-missing --allow-unexpected" in captured.err
  assert not (checkpoint["tmp"] / "broken").exists()


def test_other_class_count_converts_with_allow_mismatched(checkpoint, capsys):
  """The documented path from a COCO VITA into a video config: both class heads (detector
  and VITA) mismatch; with ``--allow-mismatched`` everything else is written and the class
  heads are left out (they keep the run's initialisation), never written at the wrong shape."""
  case = dict(checkpoint, overrides=["--config.data.num_classes=5"])
  assert _convert(case, checkpoint["official"], "refused") == convert.EXIT_INCOMPLETE
  assert "shape-mismatched" in capsys.readouterr().err
  assert _convert(case, checkpoint["official"], "classes5", "--allow-mismatched") == 0
  out = capsys.readouterr().out
  mismatched = sorted(line.split(": ")[1] for line in out.splitlines()
                      if line.startswith("  mismatched:"))
  assert mismatched == [
      "sem_seg_head.predictor.class_embed.bias -> detector/predictor/class_embed/bias",
      "sem_seg_head.predictor.class_embed.weight -> detector/predictor/class_embed/kernel",
      "vita/class_embed/bias", "vita/class_embed/kernel"], out
  params, _ = checkpointing.load_inference_params(str(checkpoint["tmp"] / "classes5"))
  abstract, _ = convert.abstract_variables(
      convert.load_config(case["config"], case["overrides"]))
  written, expected = _shapes(params), _shapes(abstract)
  assert {k: expected[k] for k in written} == written     # nothing at a foreign shape
  assert set(expected) - set(written) == {
      "detector/predictor/class_embed/kernel", "detector/predictor/class_embed/bias",
      "vita/class_embed/kernel", "vita/class_embed/bias"}
