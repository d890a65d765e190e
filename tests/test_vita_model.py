"""VITA end to end: training + evaluation through the CLI, and the streaming inference modes."""

import importlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from input_pipeline import datasets, eval_source
from vis_jax.models import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_and_eval_two_steps(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  out = subprocess.run(
      [sys.executable, "-m", "vis_jax.main", f"--config={REPO}/configs/vita_synthetic.py:smoke",
       f"--workdir={tmp_path}", "--mode=train_and_eval", "--config.num_train_steps=2"],
      env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-4000:]
  summary = json.loads(out.stdout[out.stdout.index("{"):])
  assert np.isfinite(summary["final_metrics"]["loss"])
  for key in ("loss_vita_ce", "loss_vita_sim", "loss_frame_total"):
    assert np.isfinite(summary["final_metrics"][key]), key
  assert 0.0 <= summary["eval"]["AP"] <= 100.0
  lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert any("AP" in line and line["step"] == 2 for line in lines)
  results = json.load(open(tmp_path / "eval" / "step_2" / "results.json"))
  assert results and all(len(r["segmentations"]) > 0 for r in results)


@pytest.fixture(scope="module")
def vita_setup():
  config = importlib.import_module("configs.vita_synthetic").get_config("smoke")
  bundle = registry.get_bundle(config)
  loaded = datasets.build_source("__eval__", config.data.eval, config, for_training=False)
  video = eval_source.make_eval_source(config, loaded)[0]
  b, t = 1, config.input.num_frames
  h, w = video.padded_size
  dummy = {"images": jnp.zeros((b, t, h, w, 3), jnp.uint8),
           "image_valid": jnp.ones((b, h, w), bool)}
  params, model_state = bundle.init(jax.random.key(0), dummy)
  return config, bundle, params, model_state, video


def _predict(vita_setup, **inference):
  config, _, params, model_state, video = vita_setup
  config = config.copy_and_resolve_references()
  config.unlock()
  config.model.inference.update(inference)
  bundle = registry.get_bundle(config)
  return bundle.predict_video(params, model_state, video)


def test_inference_modes_agree(vita_setup):
  video = vita_setup[-1]
  assert video.length > 4  # several chunks of 4 frames
  keep = _predict(vita_setup, mask_features="keep", length_bucket=1)
  recompute = _predict(vita_setup, mask_features="recompute", length_bucket=8)
  assert len(keep) == len(recompute) == 10
  for a, b in zip(keep, recompute, strict=True):
    assert a["label"] == b["label"]
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-4)
    assert len(a["segmentations"]) == video.length
    assert a["segmentations"][0]["size"] == list(video.original_size)
    assert [s["counts"] for s in a["segmentations"]] == [s["counts"] for s in b["segmentations"]]


def test_inference_vita_chunking_agrees(vita_setup):
  """Chunked decoder keys and scanned encoder windows give the dense path's predictions."""
  dense = _predict(vita_setup, vita_kv_chunk=0, vita_enc_window_chunk=0, length_bucket=1)
  chunked = _predict(vita_setup, vita_kv_chunk=8, vita_enc_window_chunk=1, length_bucket=1)
  for a, b in zip(dense, chunked, strict=True):
    assert a["label"] == b["label"]
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-4)


def test_token_pruning_at_inference(vita_setup):
  """``token_keep_ratio``: keeping every query (in no-object order, through the pruning path)
  reproduces the unpruned predictions; keeping half changes them."""
  full = _predict(vita_setup, length_bucket=1)
  keep_all = 1.0 - 0.4 / vita_setup[0].model.decoder.num_queries  # rounds to every query, < 1
  reordered = _predict(vita_setup, length_bucket=1, token_keep_ratio=keep_all)
  half = _predict(vita_setup, length_bucket=1, token_keep_ratio=0.5)
  for a, b in zip(full, reordered, strict=True):
    assert a["label"] == b["label"]
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-4)
  assert len(half) == len(full)
  assert max(abs(a["score"] - b["score"]) for a, b in zip(full, half, strict=True)) > 1e-4


def test_mask_pooling_streams_as_the_whole_video(vita_setup):
  """``vita.mask_pooling`` at inference pools chunk by chunk (two passes over the frames): the
  pooled embeddings equal the module's on the whole video at once, and the kept-features and
  recompute paths give identical predictions."""
  config, _, params, model_state, video = vita_setup
  config = config.copy_and_resolve_references()
  config.unlock()
  config.model.vita.mask_pooling = True
  config.model.vita.peak_prior = False  # the synthetic config's; the two do not combine
  config.model.inference.length_bucket = 1
  d = int(config.model.vita.mask_dim)
  kernel = np.asarray(jax.random.normal(jax.random.key(3), (d, d))) * 0.3
  params = dict(params, vita=dict(params["vita"], mask_pool_proj={"kernel": kernel}))

  bundle, streamed = _assert_paths_agree(config, params, model_state, video, "pooled_embed")
  streamed = np.asarray(streamed[0])
  _, _, whole = _whole_video_outputs(bundle, params, model_state, video)
  reference = np.asarray(whole["pred_mask_embed"])[0, 0]               # [Nv, D]
  # Every selected (query, class) pair's pooled embedding is its query's whole-video one.
  distance = np.abs(streamed[:, None] - reference[None]).max(-1).min(1)
  assert distance.max() < 1e-4, distance
  first = np.asarray(bundle._jitted["video"](
      {"params": params, **model_state}, *_frame_queries(bundle, params, model_state, video))
      ["pred_mask_embed"])[0, 0]
  assert np.abs(reference - first).max() > 1e-2  # the pooled term is not vacuous


def test_peak_prior_streams_as_the_whole_video(vita_setup):
  """``vita.peak_prior`` at inference: each frame chunk's masks (the last layer's plus the prior
  centred on the previous layer's peaks in that frame, and with ``peak_prior_votes`` the vote
  prior on the detector's centre offsets — kept with the features, or recomputed from the pixel
  decoder by the detector's offset head) equal the module's whole-video masks, and the
  kept-features and recompute paths give identical predictions."""
  config, _, _, model_state, video = vita_setup
  config = config.copy_and_resolve_references()
  config.unlock()
  config.model.vita.peak_prior = True
  # A non-default σ₀, a shape template and the centre votes reach the streamed prior too.
  config.model.vita.peak_prior_scale = 0.1
  config.model.vita.peak_prior_template = 2
  config.model.decoder.peak_prior_votes = True
  config.model.vita.peak_prior_votes = True
  config.model.inference.length_bucket = 1
  config.model.inference.chunk_size = 2
  c, d = int(config.model.vita.hidden_dim), int(config.model.pixel_decoder.mask_dim)
  rng = np.random.default_rng(5)
  h, w = video.padded_size
  params, _ = registry.get_bundle(config).init(jax.random.key(0), {
      "images": jnp.zeros((1, config.input.num_frames, h, w, 3), jnp.uint8),
      "image_valid": jnp.ones((1, h, w), bool)})
  predictor = dict(params["detector"]["predictor"], centre_offset_head={
      "kernel": rng.normal(size=(d, 2)).astype(np.float32) * 0.05,
      "bias": np.array([0.02, -0.03], np.float32)})
  params = dict(params, detector=dict(params["detector"], predictor=predictor), vita=dict(
      params["vita"],
      peak_prior_head={"kernel": np.asarray(jax.random.normal(jax.random.key(4), (c, 7))),
                       "bias": np.array([0.0, 0.0, -2.0, 0, 0, 0, 0], np.float32)},
      vote_prior_head={"kernel": rng.normal(size=(c, 1)).astype(np.float32),
                       "bias": np.array([2.0], np.float32)}))

  bundle, chunks = _assert_paths_agree(config, params, model_state, video, "peak_prior_masks")
  assert len(chunks) == -(-video.length // 2)
  streamed = np.concatenate([np.asarray(m) for m in chunks], 1)[:, :video.length]
  frames, valid, whole = _whole_video_outputs(bundle, params, model_state, video)
  reference = np.asarray(whole["pred_masks"])[0, 0]                     # [Nv, T, h, w]
  distance = np.abs(streamed[:, None] - reference[None]).max((2, 3, 4)).min(1)
  # float32 logits reach several hundred here (random prior coefficients; the chunked and the
  # whole-video passes round the mask features differently): relative tolerance.
  assert distance.max() < 5e-5 * np.abs(reference).max() + 1e-4, (distance, reference.max())
  plain = np.einsum("qd,thwd->qthw", np.asarray(whole["pred_mask_embed"])[0, 0],
                    np.asarray(bundle.module.apply(
                        {"params": params, **model_state}, jnp.asarray(frames[0]),
                        jnp.asarray(np.repeat(valid, video.length, 0)),
                        method=lambda m, *a: m.mask_features(*a))[0]))
  assert np.abs(reference - plain).max() > 1.0   # the prior is not vacuous
  # Nor is the vote term: without it (w → −∞) the whole-video masks differ.
  silent = dict(params, vita=dict(params["vita"], vote_prior_head={
      "kernel": np.zeros((c, 1), np.float32), "bias": np.array([-60.0], np.float32)}))
  _, _, no_votes = _whole_video_outputs(bundle, silent, model_state, video)
  assert np.abs(np.asarray(no_votes["pred_masks"])[0, 0] - reference).max() > 1.0


def _assert_paths_agree(config, params, model_state, video, jitted_name):
  """Predicts ``video`` with the kept-features and the recompute paths (``config`` is changed
  in place), asserts identical predictions, and returns the kept-path bundle and the outputs of
  its ``_jitted[jitted_name]`` calls in call order."""
  def run(mode):
    config.model.inference.mask_features = mode
    bundle = registry.get_bundle(config)
    captured = []
    fn = bundle._jitted[jitted_name]
    bundle._jitted[jitted_name] = lambda *a: captured.append(fn(*a)) or captured[-1]
    return bundle, bundle.predict_video(params, model_state, video), captured

  bundle, keep, captured = run("keep")
  _, recompute, _ = run("recompute")
  for a, b in zip(keep, recompute, strict=True):
    assert a["label"] == b["label"]
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-4)
    assert [s["counts"] for s in a["segmentations"]] == [s["counts"] for s in b["segmentations"]]
  return bundle, captured


def _whole_video_outputs(bundle, params, model_state, video):
  """The module on the whole video at once: ``(frames [1, T, H, W, 3], valid [1, H, W],
  outputs)``."""
  frames = np.stack([part.images for part in eval_source.iter_frame_chunks(video, video.length)])
  valid = np.zeros((1, *video.padded_size), bool)
  valid[:, :video.resized_size[0], :video.resized_size[1]] = True
  _, whole = bundle.module.apply({"params": params, **model_state}, jnp.asarray(frames),
                                 jnp.asarray(valid), train=False)
  return frames, valid, whole


def _frame_queries(bundle, params, model_state, video):
  variables = {"params": params, **model_state}
  valid = np.zeros((video.length, *video.padded_size), bool)
  valid[:, :video.resized_size[0], :video.resized_size[1]] = True
  (part,) = eval_source.iter_frame_chunks(video, video.length)
  queries, _, _ = bundle._jitted["frame_queries"](variables, part.images, valid)
  return np.asarray(queries), np.ones(video.length, bool)


def test_frozen_detector_leaves_detector_bit_identical():
  """``model.vita.freeze_detector``: two optimizer steps (the trainer's optimizer construction)
  change VITA's parameters and leave every detector parameter bit-identical; the detector gets
  exactly zero gradient (no backward pass through it)."""
  from vis_jax import optim

  config = importlib.import_module("configs.vita_synthetic").get_config("smoke")
  with config.unlocked():
    config.model.vita.freeze_detector = True
    config.optim.warmup_steps = 0
  bundle = registry.get_bundle(config)
  assert bundle.frozen_patterns() == (r"^detector/",)
  b, g, t, h, w = 1, 2, config.input.num_frames, 64, 64
  masks = np.zeros((b, g, t, h, w), bool)
  masks[0, 0, :, 8:30, 10:28] = True
  masks[0, 1, :, 36:60, 30:58] = True
  batch = {"images": jnp.asarray(np.random.default_rng(0).integers(0, 255, (b, t, h, w, 3)),
                                 jnp.uint8),
           "image_valid": jnp.ones((b, h, w), bool), "masks": jnp.asarray(masks),
           "labels": jnp.array([[1, 3]]), "present": jnp.ones((b, g, t), bool),
           "instance_valid": jnp.ones((b, g), bool), "track_ids": jnp.array([[5, 9]])}
  params, model_state = bundle.init(jax.random.key(0), batch)
  assert set(params) == {"detector", "vita"}
  tx, _ = optim.make_optimizer(optim.with_frozen_patterns(config.optim, bundle.frozen_patterns()),
                               params, 10)

  @jax.jit
  def step(params, opt_state, key):
    (_, metrics), grads = jax.value_and_grad(bundle.loss, has_aux=True)(
        params, model_state, batch, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return jax.tree_util.tree_map(jnp.add, params, updates), opt_state, grads, metrics

  new, opt_state = params, tx.init(params)
  for i in range(2):
    new, opt_state, grads, metrics = step(new, opt_state, jax.random.key(i))
    assert np.isfinite(float(metrics["loss_total"]))
  for leaf in jax.tree_util.tree_leaves(grads["detector"]):
    assert not np.any(np.asarray(leaf))
  same = jax.tree_util.tree_map(lambda a, c: np.array_equal(np.asarray(a), np.asarray(c)),
                                params["detector"], new["detector"])
  assert all(jax.tree_util.tree_leaves(same))
  changed = jax.tree_util.tree_map(lambda a, c: not np.array_equal(np.asarray(a), np.asarray(c)),
                                   params["vita"], new["vita"])
  assert sum(jax.tree_util.tree_leaves(changed)) > 0.9 * len(jax.tree_util.tree_leaves(changed))
