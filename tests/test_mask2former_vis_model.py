"""Mask2Former-VIS end to end: official-key conversion, T = 1 equality with the image model,
targets, the inference modes, and training + evaluation + prediction through the CLIs.

References:
* Hugging Face ``Mask2FormerForUniversalSegmentation`` (PyTorch, eval mode, every tensor
  perturbed), its weights renamed to the official detectron2 / M2F-VIS keys (``sem_seg_head.*``,
  ``backbone.res*``; the rules of ``tests/test_mask2former_model.py``) and stored as a model-zoo
  ``.pkl``: ``python -m vis_jax.convert --from detectron2`` into a ``mask2former_vis`` config
  must report nothing missing / unexpected, and the video model on one-frame clips must give HF's
  image outputs. (The official video decoder has the image decoder's key names; its 3-D sine
  encoding has no parameters, so there is no video-specific key to convert.)
* our image model (``Mask2FormerModel``) on the same converted parameters, for ``T = 1``.
* whole-video inference, for the chunked mode with a single clip and for length padding.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import common
from input_pipeline import datasets, eval_source
from vis_jax import checkpointing, convert
from vis_jax.inference import clip_linker
from vis_jax.models import registry
from vis_jax.models.mask2former_model import Mask2FormerModel
from vis_jax.models.mask2former_vis_model import Mask2FormerVISModel, video_targets

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests import test_mask2former_model as m2f_tests  # noqa: E402  (module, not its fixtures)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTH = os.path.join(REPO, "configs", "m2f_vis_synthetic.py")
FAST_COMPILE = m2f_tests.FAST_COMPILE
HEADS, IMAGES = m2f_tests.HEADS, m2f_tests.IMAGES
rel_err = m2f_tests.rel_err

CONFIG_TEMPLATE = m2f_tests.config_template("m2f_vis_synthetic")


# ---- official keys → mask2former_vis, vs HF and vs the image model ------------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("m2f_vis_convert")
  ours_backbone = m2f_tests.BACKBONES["resnet"][1]
  model = m2f_tests.hf_model("resnet")
  m2f_tests.perturb_(model, seed=3)
  sd = m2f_tests.shared.state_dict_numpy(model)
  official = m2f_tests.hf_to_detectron2(sd)
  official["criterion.empty_weight"] = np.ones(HEADS["num_labels"] + 1, np.float32)
  assert any(k.startswith("sem_seg_head.predictor.transformer_cross_attention_layers.")
             for k in official)
  weights = tmp / "model_final.pkl"
  with open(weights, "wb") as f:
    pickle.dump({"model": official, "__author__": "test"}, f, protocol=2)
  config_path = tmp / "config.py"
  config_path.write_text(CONFIG_TEMPLATE.format(backbone=ours_backbone, **HEADS))
  overrides = [f"--config.data.num_classes={HEADS['num_labels']}"]
  status = convert.main(["--from", "detectron2", "--input", str(weights), "--config",
                         str(config_path), "--output", str(tmp / "out"), *overrides])
  assert status == 0
  params, model_state = checkpointing.load_inference_params(str(tmp / "out"))
  config = convert.load_config(str(config_path), overrides)

  images = np.random.default_rng(2).integers(0, 256, (*IMAGES, 3), dtype=np.uint8)
  pixels = ((images.astype(np.float32) - np.float32(m2f_tests.backbones.PIXEL_MEAN))
            / np.float32(m2f_tests.backbones.PIXEL_STD))
  with torch.no_grad():
    ref = model(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()),
                output_auxiliary_logits=True)
  variables = {"params": params, **model_state}
  video = Mask2FormerVISModel.from_config(config.model, HEADS["num_labels"])
  image = Mask2FormerModel.from_config(config.model, HEADS["num_labels"])
  clips = jnp.asarray(images)[:, None]  # B = 2 clips of T = 1 frame
  return dict(config=config, tmp=tmp, params=params, model_state=model_state, ref=ref,
              video_out=jax.jit(video.apply)(variables, clips),
              image_out=jax.jit(image.apply)(variables, jnp.asarray(images)))


def test_official_keys_convert_completely(converted):
  report = json.loads((converted["tmp"] / "out" / "conversion.json").read_text())
  assert not (report["missing"] or report["unexpected"] or report["mismatched"]), report
  abstract_params, abstract_state = convert.abstract_variables(converted["config"])
  flat = lambda t: traverse_util.flatten_dict(t, sep="/")  # noqa: E731
  assert flat(converted["params"]).keys() == flat(abstract_params).keys()
  assert flat(converted["model_state"]).keys() == flat(abstract_state).keys()
  assert "criterion.empty_weight" in report["ignored"]


def test_one_frame_clips_match_hf(converted):
  ref, out = converted["ref"], converted["video_out"]
  ref_sets = [*ref.auxiliary_logits, {"class_queries_logits": ref.class_queries_logits,
                                      "masks_queries_logits": ref.masks_queries_logits}]
  ours = [*out["aux_outputs"], out]
  assert len(ours) == len(ref_sets) == HEADS["decoder_layers"]
  for i, (a, b) in enumerate(zip(ours, ref_sets, strict=True)):
    assert a["pred_masks"].shape == (IMAGES[0], HEADS["num_queries"], 1, IMAGES[1] // 4,
                                     IMAGES[2] // 4)
    assert rel_err(a["pred_logits"], b["class_queries_logits"].numpy()) < m2f_tests.TOL, i
    assert rel_err(a["pred_masks"][:, :, 0], b["masks_queries_logits"].numpy()) < m2f_tests.TOL


def test_one_frame_clips_equal_the_image_model(converted):
  """Same weights, T = 1: the temporal code is one vector added to every key, which the
  attention softmax ignores, so the video model computes the image model's function."""
  video, image = converted["video_out"], converted["image_out"]
  for a, b in zip([*video["aux_outputs"], video], [*image["aux_outputs"], image], strict=True):
    assert rel_err(a["pred_logits"], b["pred_logits"]) < 1e-5
    assert rel_err(a["pred_masks"][:, :, 0], b["pred_masks"]) < 1e-5
  assert rel_err(video["query_features"], image["query_features"]) < 1e-5


# ---- targets ------------------------------------------------------------------------------------


def test_label_choice_and_official_quirk():
  """Instance 0 present in both frames, 1 only in frame 0, 2 only in frame 1, 3 padding."""
  present = np.array([[[True, True], [True, False], [False, True], [False, False]]])
  batch = {"masks": jnp.zeros((1, 4, 2, 4, 4), bool), "labels": jnp.array([[3, 1, 2, -1]]),
           "present": jnp.asarray(present), "instance_valid": jnp.array([[1, 1, 1, 0]], bool)}
  ours = video_targets(batch, num_classes=5)
  np.testing.assert_array_equal(ours["labels"], [[3, 1, 2, -1]])
  quirk = video_targets(batch, num_classes=5, label_from_last_frame=True)
  np.testing.assert_array_equal(quirk["labels"], [[3, 5, 2, 5]])   # absent at the end → K
  np.testing.assert_array_equal(quirk["instance_valid"], batch["instance_valid"])


# ---- inference modes ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vis_setup():
  config = importlib.import_module("configs.m2f_vis_synthetic").get_config("smoke")
  bundle = registry.get_bundle(config)
  loaded = datasets.build_source("__eval__", config.data.eval, config, for_training=False)
  video = max(eval_source.make_eval_source(config, loaded), key=lambda v: v.length)
  t = config.input.num_frames
  h, w = video.padded_size
  dummy = {"images": jnp.zeros((1, t, h, w, 3), jnp.uint8), "image_valid": jnp.ones((1, h, w),
                                                                                     bool)}
  params, model_state = bundle.init(jax.random.key(0), dummy)
  return config, bundle, params, model_state, video


def _predict(vis_setup, **inference):
  """One bundle for every variant, so its jitted functions (and compilations) are shared."""
  config, bundle, params, model_state, video = vis_setup
  base = config.model.inference
  bundle.inference = base.copy_and_resolve_references()
  bundle.inference.unlock()
  bundle.inference.update(inference)
  try:
    return bundle.predict_video(params, model_state, video)
  finally:
    bundle.inference = base


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    assert x["label"] == y["label"]
    np.testing.assert_allclose(x["score"], y["score"], rtol=1e-5)
    assert [s["counts"] for s in x["segmentations"]] == [s["counts"] for s in y["segmentations"]]


def test_whole_video_padding_and_single_clip_chunked_agree(vis_setup):
  video = vis_setup[-1]
  assert video.length > 8
  whole = _predict(vis_setup, max_frames_whole=100, length_bucket=8)
  assert len(whole) == 10
  assert [r["score"] for r in whole] == sorted((r["score"] for r in whole), reverse=True)
  for r in whole:
    assert len(r["segmentations"]) == video.length
    assert r["segmentations"][0]["size"] == list(video.original_size)
  _assert_same(whole, _predict(vis_setup, max_frames_whole=100, length_bucket=1))
  # Chunked with one clip covering the video = whole-video inference.
  _assert_same(whole, _predict(vis_setup, max_frames_whole=0, clip_length=16,
                               length_bucket=8, clip_candidates=20))


def test_chunked_overlapping_clips(vis_setup):
  video = vis_setup[-1]
  out = _predict(vis_setup, max_frames_whole=0, clip_length=8, clip_overlap=3, length_bucket=8,
                 clip_candidates=10)
  assert len(clip_linker.clip_starts(video.length, 8, 5)) >= 2
  assert len(out) == 10
  assert all(0.0 <= r["score"] <= 1.0 for r in out)
  for r in out:
    assert len(r["segmentations"]) == video.length
    assert all(s["size"] == list(video.original_size) for s in r["segmentations"])


def test_piloted_training_adds_the_weighted_track_losses(vis_setup):
  """``decoder.mask_piloting`` in the video bundle: same params and rng, the matching queries'
  losses are unchanged and the total grows by the weight times the piloted queries' losses
  (one query per track, every layer)."""
  config, _, _, _, video = vis_setup
  config = config.copy_and_resolve_references()
  config.model.decoder.mask_piloting = True
  config.loss.mask_piloting_weight = 2.0
  common.validate(config)
  piloted = registry.get_bundle(config)
  config.model.decoder.mask_piloting = False
  plain = registry.get_bundle(config)
  rng = np.random.default_rng(3)
  t, size = config.input.num_frames, 64
  masks = np.zeros((1, 2, t, size, size), bool)
  masks[0, 0, :, 8:30, 10:40] = True
  masks[0, 1, 0, 40:60, 20:50] = True
  batch = dict(images=jnp.asarray(rng.integers(0, 255, (1, t, size, size, 3)), jnp.uint8),
               image_valid=jnp.ones((1, size, size), bool), masks=jnp.asarray(masks),
               labels=jnp.asarray([[0, 2]]), present=jnp.asarray(masks.any((3, 4))),
               instance_valid=jnp.ones((1, 2), bool))
  key = jax.random.key(0)
  params, state = piloted.init(key, batch)
  assert "pilot_label_embed" in params["predictor"]
  total, metrics = piloted.loss(params, state, batch, key)
  plain_total, plain_metrics = plain.loss(params, state, batch, key)
  for name in ("loss_ce", "loss_mask", "loss_dice", "loss_dice_0"):
    np.testing.assert_allclose(float(metrics[name]), float(plain_metrics[name]), rtol=1e-5)
  weights = {"ce": config.loss.class_weight, "mask": config.loss.mask_weight,
             "dice": config.loss.dice_weight}
  pilot_sum = sum(w * float(v) for k, v in metrics.items() for part, w in weights.items()
                  if k == f"loss_pilot_{part}" or k.startswith(f"loss_pilot_{part}_"))
  assert pilot_sum > 0
  np.testing.assert_allclose(float(total), float(plain_total) + 2.0 * pilot_sum, rtol=1e-4)
  np.testing.assert_allclose(float(metrics["loss_total"]), float(total), rtol=1e-6)


# ---- CLIs ---------------------------------------------------------------------------------------


def test_train_and_eval_two_steps_then_predict(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, XLA_FLAGS=FAST_COMPILE)
  out = subprocess.run(
      [sys.executable, "-m", "vis_jax.main", f"--config={SYNTH}:smoke", f"--workdir={tmp_path}",
       "--mode=train_and_eval", "--config.num_train_steps=2"],
      env=env, capture_output=True, text=True, timeout=1200)
  assert out.returncode == 0, out.stderr[-4000:]
  summary = json.loads(out.stdout[out.stdout.index("{"):])
  for key in ("loss", "loss_ce", "loss_mask", "loss_dice", "loss_dice_0"):
    assert np.isfinite(summary["final_metrics"][key]), key
  assert 0.0 <= summary["eval"]["AP"] <= 100.0
  lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert any("AP" in line and line["step"] == 2 for line in lines)
  results = json.load(open(tmp_path / "eval" / "step_2" / "results.json"))
  assert results and all(len(r["segmentations"]) > 0 for r in results)

  config = importlib.import_module("configs.m2f_vis_synthetic").get_config("smoke")
  paths = common.resolve_paths(config)["__eval__"]
  pred = subprocess.run(
      [sys.executable, "-m", "vis_jax.predict", f"--workdir={tmp_path}", "--input",
       paths["json"], "--frames", paths["frames"], "--output", str(tmp_path / "pred"),
       "--max-videos", "1", "--quiet"],
      env=env, capture_output=True, text=True, timeout=600)
  assert pred.returncode == 0, pred.stderr[-4000:]
  predicted = json.load(open(tmp_path / "pred" / "results.json"))
  assert len(predicted) == config.model.inference.top_k
  assert {"video_id", "category_id", "score", "segmentations"} <= set(predicted[0])
