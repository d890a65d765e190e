"""Masked-attention decoder vs Hugging Face ``Mask2FormerForUniversalSegmentation``.

Case A runs the whole HF model on an image (tiny Swin backbone), captures the backbone maps with a
hook and feeds them to our pixel decoder + decoder with converted weights (HF and official keys):
class and mask logits of every prediction set (initial queries + every layer) and the
LayerNorm'ed query features must match. Its ``mask_projection`` is rigged so that some queries'
masks are empty at some levels, so the fully-masked-row fallback is exercised against HF too.
Case B (pre-norm, input projections because the pixel decoder is wider than the decoder,
``mask_dim`` ≠ ``hidden_dim``) runs the HF transformer module alone.

The attention-mask function is also checked against a numpy re-derivation on a hand case.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import test_pixel_decoder as shared
from vis_jax import convert_mask2former_heads as convert
from vis_jax.models import mask2former

BATCH, IMAGE_HW, TOL = shared.BATCH, shared.IMAGE_HW, shared.TOL
nhwc, rel_err = shared.nhwc, shared.rel_err

torch = pytest.importorskip("torch")


def decoder_module(cfg) -> mask2former.MultiScaleMaskedTransformerDecoder:
  return mask2former.MultiScaleMaskedTransformerDecoder(
      num_classes=cfg.num_labels, hidden_dim=cfg.hidden_dim, num_queries=cfg.num_queries,
      num_heads=cfg.num_attention_heads, dim_feedforward=cfg.dim_feedforward,
      dec_layers=cfg.decoder_layers - 1, pre_norm=cfg.pre_norm, mask_dim=cfg.mask_feature_size,
      in_channels=cfg.feature_size, enforce_input_proj=cfg.enforce_input_projection)


def decoder_template(module, cfg):
  h, w = IMAGE_HW
  feats = [jnp.zeros((BATCH, h // s, w // s, cfg.feature_size)) for s in (32, 16, 8)]
  mask = jnp.zeros((BATCH, h // 4, w // 4, cfg.mask_feature_size))
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), feats, mask)["params"]


def stacked(out):
  """All prediction sets in order (initial queries, layer 1, ..., layer L)."""
  sets = [*out["aux_outputs"], out]
  return (np.stack([np.asarray(s["pred_logits"]) for s in sets]),
          np.stack([np.asarray(s["pred_masks"]) for s in sets]))


def np_layer_norm(x, scale, bias, eps=1e-5):
  x = np.asarray(x, np.float64)
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * scale + bias


@pytest.fixture(scope="module")
def case_a():
  model = shared.build_hf_model(seed=10)
  with torch.no_grad():
    # Channel 0 of the mask features becomes a constant, so queries whose mask embedding has a
    # large channel-0 component (of either sign: that output gets no bias) predict
    # all-background or all-foreground masks.
    proj = model.model.pixel_level_module.decoder.mask_projection
    proj.weight[0].zero_()
    proj.bias[0] = 6.0
    mask_embedder = model.model.transformer_module.decoder.mask_predictor.mask_embedder
    mask_embedder.layers[2].layers[0].bias[0] = 0
  captured = {}
  hooks = [model.model.pixel_level_module.encoder.register_forward_hook(
               lambda m, i, o: captured.update(features=o.feature_maps)),
           model.model.transformer_module.register_forward_hook(
               lambda m, i, o: captured.update(decoder=o))]
  pixels = torch.randn((BATCH, 3, *IMAGE_HW), generator=torch.Generator().manual_seed(11))
  with torch.no_grad():
    ref = model(pixel_values=pixels, output_hidden_states=True, output_auxiliary_logits=True)
  for hook in hooks:
    hook.remove()
  cfg = model.config
  feats = shared.as_feature_dict(captured["features"])
  pd_module, dec_module = shared.pixel_decoder_module(cfg), decoder_module(cfg)
  templates = {"pixel_decoder": jax.eval_shape(pd_module.init, jax.random.PRNGKey(0),
                                               feats)["params"],
               "predictor": decoder_template(dec_module, cfg)}
  sd = shared.state_dict_numpy(model)
  params, report = convert.convert_mask2former_heads(sd, "hf", templates=templates)

  @jax.jit
  def run(params, feats):
    pix = pd_module.apply({"params": params["pixel_decoder"]}, feats)
    return dec_module.apply({"params": params["predictor"]}, pix["multi_scale_features"],
                            pix["mask_features"])

  # The HF decoder on HF pixel-decoder outputs isolates the decoder's own error.
  hf_pix = ([jnp.asarray(nhwc(f)) for f in ref.pixel_decoder_hidden_states],
            jnp.asarray(nhwc(ref.pixel_decoder_last_hidden_state)))
  dec_only = jax.jit(dec_module.apply)({"params": params["predictor"]}, *hf_pix)

  ref_logits = [a["class_queries_logits"] for a in ref.auxiliary_logits] + [
      ref.class_queries_logits]
  ref_masks = [a["masks_queries_logits"] for a in ref.auxiliary_logits] + [
      ref.masks_queries_logits]
  return dict(model=model, sd=sd, ref=ref, decoder_ref=captured["decoder"], params=params,
              report=report, templates=templates, feats=feats, run=run, out=run(params, feats),
              dec_only=dec_only,
              ref_logits=np.stack([t.numpy() for t in ref_logits]),
              ref_masks=np.stack([t.numpy() for t in ref_masks]))


def test_conversion_is_complete(case_a):
  assert case_a["report"].ok, str(case_a["report"])
  used = set(case_a["report"].mapped.values())
  head_keys = {k for k in case_a["sd"]
               if k.startswith(("model.pixel_level_module.decoder.", "model.transformer_module.",
                                "class_predictor."))}
  assert used == head_keys


@pytest.mark.parametrize("which", ["end_to_end", "decoder_only"])
def test_every_layer_matches_hf(case_a, which):
  out = case_a["out"] if which == "end_to_end" else case_a["dec_only"]
  logits, masks = stacked(out)
  cfg = case_a["model"].config
  n_sets = cfg.decoder_layers  # initial queries + (decoder_layers - 1) layers
  assert logits.shape == (n_sets, BATCH, cfg.num_queries, cfg.num_labels + 1)
  assert masks.shape == (n_sets, BATCH, cfg.num_queries, IMAGE_HW[0] // 4, IMAGE_HW[1] // 4)
  errors = {}
  for i in range(n_sets):
    errors[f"logits_{i}"] = rel_err(logits[i], case_a["ref_logits"][i])
    errors[f"masks_{i}"] = rel_err(masks[i], case_a["ref_masks"][i])
  print(f"{which} max rel errors:", errors)
  assert max(errors.values()) <= TOL, errors


def test_fallback_was_exercised(case_a):
  """Some attention masks of case A have empty rows (unblocked) and some are full."""
  _, masks = stacked(case_a["out"])
  h, w = IMAGE_HW
  sizes = [(h // s, w // s) for s in (32, 16, 8)]
  empty = full = 0
  for i in range(masks.shape[0] - 1):  # the last prediction builds no mask
    resized = jax.image.resize(masks[i], (*masks[i].shape[:2], *sizes[i % 3]), "linear",
                               antialias=False)
    fg = np.asarray(jax.nn.sigmoid(resized) >= 0.5).reshape(*masks.shape[1:3], -1)
    empty += int((~fg.any(-1)).sum())
    full += int(fg.all(-1).sum())
  print(f"attention-mask rows: {empty} empty (unblocked), {full} full")
  assert empty > 0 and full > 0, (empty, full)


def test_query_features_are_layer_normed(case_a):
  qf = np.asarray(case_a["out"]["query_features"])
  cfg = case_a["model"].config
  n_layers = cfg.decoder_layers - 1
  assert qf.shape == (n_layers, BATCH, cfg.num_queries, cfg.hidden_dim)
  norm = case_a["params"]["predictor"]["decoder_norm"]
  # Against HF's per-layer LayerNorm'ed states (index 0 is the initial queries, not returned).
  inter = case_a["decoder_ref"].intermediate_hidden_states
  assert len(inter) == n_layers + 1
  for i in range(n_layers):
    want = inter[i + 1].transpose(0, 1).numpy()
    assert rel_err(qf[i], want) <= TOL
    # And it is LayerNorm(raw layer output) with the decoder_norm parameters.
    raw = case_a["decoder_ref"].hidden_states[i + 1].transpose(0, 1).numpy()
    assert rel_err(qf[i], np_layer_norm(raw, norm["scale"], norm["bias"])) <= TOL
  standardised = (qf - norm["bias"]) / norm["scale"]
  np.testing.assert_allclose(standardised.mean(-1), 0.0, atol=1e-4)
  np.testing.assert_allclose(standardised.std(-1), 1.0, atol=1e-3)


def test_official_keys_match_hf_keys(case_a):
  official = shared.hf_to_official(case_a["sd"])
  assert "sem_seg_head.predictor.transformer_self_attention_layers.0.self_attn.in_proj_weight" \
      in official
  params, report = convert.convert_mask2former_heads(official, templates=case_a["templates"])
  assert report.ok, str(report)
  flat = dict(jax.tree_util.tree_leaves_with_path(case_a["params"]))
  leaves = jax.tree_util.tree_leaves_with_path(params)
  assert len(leaves) == len(flat)
  for path, value in leaves:
    np.testing.assert_array_equal(value, flat[path], err_msg=str(path))


@pytest.fixture(scope="module")
def case_b():
  # Pre-norm layers, 64-channel pixel decoder (→ decoder input projections), mask_dim 48.
  model = shared.build_hf_model(seed=20, pre_norm=True, feature_size=64, mask_feature_size=48)
  cfg = model.config
  gen = torch.Generator().manual_seed(21)
  h, w = IMAGE_HW
  multi = [torch.randn((BATCH, cfg.feature_size, h // s, w // s), generator=gen)
           for s in (32, 16, 8)]
  mask_features = torch.randn((BATCH, cfg.mask_feature_size, h // 4, w // 4), generator=gen)
  with torch.no_grad():
    ref = model.model.transformer_module(multi, mask_features, output_hidden_states=True)
    ref_logits = np.stack([model.class_predictor(s.transpose(0, 1)).numpy()
                           for s in ref.intermediate_hidden_states])
  module = decoder_module(cfg)
  params, report = convert.convert_transformer_decoder(
      shared.state_dict_numpy(model), template=decoder_template(module, cfg))
  out = jax.jit(module.apply)({"params": params}, [jnp.asarray(nhwc(f)) for f in multi],
                              jnp.asarray(nhwc(mask_features)))
  return dict(ref=ref, ref_logits=ref_logits, params=params, report=report, out=out)


def test_prenorm_with_input_projection_matches_hf(case_b):
  assert case_b["report"].ok, str(case_b["report"])
  assert "input_proj_0" in case_b["params"]
  logits, masks = stacked(case_b["out"])
  ref_masks = np.stack([m.numpy() for m in case_b["ref"].masks_queries_logits])
  errors = {"logits": max(rel_err(a, b) for a, b in zip(logits, case_b["ref_logits"],
                                                         strict=True)),
            "masks": max(rel_err(a, b) for a, b in zip(masks, ref_masks, strict=True))}
  print("pre-norm max rel errors:", errors)
  assert max(errors.values()) <= TOL, errors


# ---- attention mask vs a numpy re-derivation ---------------------------------------------


def np_resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """PyTorch ``interpolate(bilinear, align_corners=False)`` on the last two axes, by formula."""
  def weights(n_in, n_out):
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
      src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
      i0 = min(int(np.floor(src)), n_in - 1)
      i1 = min(i0 + 1, n_in - 1)
      f = src - i0
      m[o, i0] += 1 - f
      m[o, i1] += f
    return m
  wy, wx = weights(x.shape[-2], size[0]), weights(x.shape[-1], size[1])
  return np.einsum("oh,...hw,pw->...op", wy, x.astype(np.float64), wx)


def np_attention_mask(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Official semantics, returned as True = may attend."""
  resized = np_resize_bilinear(logits, size)
  blocked = (1 / (1 + np.exp(-resized)) < 0.5).reshape(*logits.shape[:2], -1)
  blocked[blocked.all(-1)] = False  # fully blocked rows are unblocked
  return ~blocked


def test_attention_mask_hand_case():
  logits = np.full((1, 3, 4, 4), -3.0, np.float32)  # query 0: background everywhere
  logits[0, 1, :2, :2] = 5.0                          # query 1: top-left quadrant
  logits[0, 2] = 2.0                                  # query 2: foreground everywhere
  got = np.asarray(mask2former.attention_mask_from_logits(jnp.asarray(logits), (2, 2)))
  assert got.shape == (1, 3, 4)
  want = np.array([[[True] * 4,                        # empty row → attend everywhere
                    [True, False, False, False],
                    [True] * 4]])
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got, np_attention_mask(logits, (2, 2)))


@pytest.mark.parametrize("size", [(3, 5), (8, 6), (2, 2)])
def test_attention_mask_random_matches_numpy(size):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)
  logits[0, 1] = -np.abs(logits[0, 1]) - 0.1  # one all-background query
  got = np.asarray(mask2former.attention_mask_from_logits(jnp.asarray(logits), size))
  np.testing.assert_array_equal(got, np_attention_mask(logits, size))
  assert got[0, 1].all()


def test_attention_mask_video_layout():
  """``[B, Q, T, H, W]`` is resized per frame and flattened in (t, h, w) order."""
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(1, 2, 3, 8, 8)).astype(np.float32)
  got = np.asarray(mask2former.attention_mask_from_logits(jnp.asarray(logits), (4, 4)))
  resized = np_resize_bilinear(logits, (4, 4))
  fg = (1 / (1 + np.exp(-resized)) >= 0.5).reshape(1, 2, -1)
  np.testing.assert_array_equal(got, fg | ~fg.any(-1, keepdims=True))


def test_unblock_empty_rows():
  allowed = jnp.array([[False, False], [False, True], [True, True]])
  np.testing.assert_array_equal(np.asarray(mask2former.unblock_empty_rows(allowed)),
                                [[True, True], [False, True], [True, True]])


def test_no_decay_regex_matches_embeddings(case_a):
  """The query/level embeddings fall in the optimizer's no-decay group, like nn.Embedding."""
  import re

  from configs.common import base_config
  from vis_jax.optim import param_path
  patterns = base_config().optim.no_decay_patterns
  paths = [param_path(p) for p, _ in
           jax.tree_util.tree_leaves_with_path(case_a["params"]["predictor"])]
  no_decay = {p for p in paths if any(re.search(r, p) for r in patterns)}
  for name in ("query_feat_embed/embedding", "query_embed/embedding", "level_embed/embedding",
               "decoder_norm/scale", "transformer_ffn_layers_0/norm/bias"):
    assert name in no_decay, name
  for name in ("mask_embed/layers_0/kernel", "class_embed/bias",
               "transformer_self_attention_layers_0/self_attn/q_proj/kernel"):
    assert name not in no_decay, name
  # The pixel decoder's level_embed is a plain nn.Parameter officially, hence decayed; its
  # GroupNorms are not.
  pd_paths = {param_path(p) for p, _ in
              jax.tree_util.tree_leaves_with_path(case_a["params"]["pixel_decoder"])}
  assert "level_embed" in pd_paths and "input_proj_0/norm/scale" in pd_paths
  assert not any(re.search(r, "pixel_decoder/level_embed") for r in patterns)
  assert any(re.search(r, "pixel_decoder/input_proj_0/norm/scale") for r in patterns)


def test_bfloat16_runs_and_stays_close(case_a):
  """bf16 compute (params fp32): finite, bf16 outputs, first prediction close to fp32."""
  cfg = case_a["model"].config
  pd_module = shared.pixel_decoder_module(cfg, dtype=jnp.bfloat16)
  dec_module = decoder_module(cfg).clone(dtype=jnp.bfloat16)

  @jax.jit
  def run(params, feats):
    pix = pd_module.apply({"params": params["pixel_decoder"]}, feats)
    return dec_module.apply({"params": params["predictor"]}, pix["multi_scale_features"],
                            pix["mask_features"])

  out = run(case_a["params"], case_a["feats"])
  assert out["pred_masks"].dtype == jnp.bfloat16
  assert out["query_features"].dtype == jnp.bfloat16
  logits, masks = stacked(out)
  assert np.isfinite(logits.astype(np.float32)).all()
  assert np.isfinite(masks.astype(np.float32)).all()
  assert rel_err(masks[0].astype(np.float32), case_a["ref_masks"][0]) < 0.05
  assert rel_err(logits[0].astype(np.float32), case_a["ref_logits"][0]) < 0.05
