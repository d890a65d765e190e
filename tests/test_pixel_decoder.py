"""Pixel decoder vs Hugging Face ``Mask2FormerPixelDecoder`` on the same (converted) weights.

The reference is a tiny randomly initialised HF ``Mask2FormerForUniversalSegmentation`` whose
weights are perturbed (so zero-initialised tensors such as the deformable ``sampling_offsets``
matter) and fed random backbone features. The official-key converter path is checked by renaming
the HF state dict to the official names of spec §7.1 with an independent table written here.

The helpers at the top are shared with ``tests/test_mask2former_decoder.py``.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vis_jax import convert_mask2former_heads as convert
from vis_jax.models.pixel_decoder import MSDeformAttnPixelDecoder, resize_bilinear

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

BATCH = 2
IMAGE_HW = (64, 96)  # non-square; features at 1/4..1/32 are 16x24 .. 2x3
BACKBONE_CHANNELS = (16, 32, 64, 128)  # tiny Swin (embed 16)
TOL = 1e-4


def rel_err(a, b) -> float:
  """Scale-aware error: ``max|a − b| / max|b|``."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def nhwc(t) -> np.ndarray:
  """NCHW torch tensor → NHWC numpy."""
  return t.detach().numpy().transpose(0, 2, 3, 1)


def hf_config(**overrides):
  backbone = transformers.SwinConfig(
      embed_dim=BACKBONE_CHANNELS[0], depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4,
      image_size=IMAGE_HW[0], out_features=["stage1", "stage2", "stage3", "stage4"])
  kw = dict(backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
            encoder_feedforward_dim=64, encoder_layers=2, decoder_layers=4,
            num_attention_heads=2, dim_feedforward=64, num_queries=6, num_labels=3)
  kw.update(overrides)
  return transformers.Mask2FormerConfig(**kw)


def build_hf_model(seed: int = 0, **overrides):
  """A tiny HF model in eval mode with every float parameter perturbed."""
  torch.manual_seed(seed)
  model = transformers.Mask2FormerForUniversalSegmentation(hf_config(**overrides)).eval()
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for p in model.parameters():
      scale = max(float(p.std()) if p.numel() > 1 else 0.0, 0.1)
      p.add_(torch.randn(p.shape, generator=gen) * 0.5 * scale)
  return model


def state_dict_numpy(model) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


# HF name → official name (spec §7.1), independent of the converter's rule tables.
_PD_RENAMES = [
    (r"input_projections\.(\d+)\.", r"input_proj.\1."),
    (r"^level_embed$", "transformer.level_embed"),
    (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"transformer.encoder.layers.\1.norm1."),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.", r"transformer.encoder.layers.\1.norm2."),
    (r"^encoder\.layers\.(\d+)\.fc(\d)\.", r"transformer.encoder.layers.\1.linear\2."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.", r"transformer.encoder.layers.\1.self_attn."),
    (r"^mask_projection\.", "mask_features."),
    (r"^(adapter|layer)_(\d+)\.0\.", r"\1_\2."),
    (r"^(adapter|layer)_(\d+)\.1\.", r"\1_\2.norm."),
]
_DEC_RENAMES = [
    (r"^queries_features\.", "query_feat."),
    (r"^queries_embedder\.", "query_embed."),
    (r"^input_projections\.", "input_proj."),
    (r"^decoder\.layernorm\.", "decoder_norm."),
    (r"^decoder\.mask_predictor\.mask_embedder\.(\d+)\.0\.", r"mask_embed.layers.\1."),
    (r"^decoder\.layers\.(\d+)\.self_attn_layer_norm\.",
     r"transformer_self_attention_layers.\1.norm."),
    (r"^decoder\.layers\.(\d+)\.self_attn\.out_proj\.",
     r"transformer_self_attention_layers.\1.self_attn.out_proj."),
    (r"^decoder\.layers\.(\d+)\.cross_attn_layer_norm\.",
     r"transformer_cross_attention_layers.\1.norm."),
    (r"^decoder\.layers\.(\d+)\.cross_attn\.",
     r"transformer_cross_attention_layers.\1.multihead_attn."),
    (r"^decoder\.layers\.(\d+)\.fc(\d)\.", r"transformer_ffn_layers.\1.linear\2."),
    (r"^decoder\.layers\.(\d+)\.final_layer_norm\.", r"transformer_ffn_layers.\1.norm."),
]


def hf_to_official(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Renames a HF state dict to official detectron2 keys, packing self-attention q/k/v."""
  out = {}
  for key, value in sd.items():
    for hf_prefix, off_prefix, renames in (
        ("model.pixel_level_module.decoder.", "sem_seg_head.pixel_decoder.", _PD_RENAMES),
        ("model.transformer_module.", "sem_seg_head.predictor.", _DEC_RENAMES)):
      if key.startswith(hf_prefix):
        rest = key[len(hf_prefix):]
        m = re.match(r"decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", rest)
        if m:
          if m.group(2) == "q":  # pack q, k, v row blocks like nn.MultiheadAttention
            base = f"{hf_prefix}decoder.layers.{m.group(1)}.self_attn."
            packed = np.concatenate([sd[f"{base}{p}_proj.{m.group(3)}"] for p in "qkv"], 0)
            name = "in_proj_weight" if m.group(3) == "weight" else "in_proj_bias"
            out[f"{off_prefix}transformer_self_attention_layers.{m.group(1)}.self_attn."
                f"{name}"] = packed
          break
        for pattern, repl in renames:
          rest = re.sub(pattern, repl, rest)
        out[off_prefix + rest] = value
        break
    else:
      if key.startswith("class_predictor."):
        out["sem_seg_head.predictor.class_embed." + key.split(".", 1)[1]] = value
      elif key.startswith("model.pixel_level_module.encoder."):
        out["backbone." + key.split("encoder.", 1)[1]] = value  # ignored by the converter
      else:
        out[key] = value
  return out


def pixel_decoder_module(cfg, **kw) -> MSDeformAttnPixelDecoder:
  return MSDeformAttnPixelDecoder(conv_dim=cfg.feature_size, mask_dim=cfg.mask_feature_size,
                                  num_encoder_layers=cfg.encoder_layers,
                                  num_heads=cfg.num_attention_heads,
                                  dim_feedforward=cfg.encoder_feedforward_dim, **kw)


def random_features(seed: int = 0) -> list:
  gen = torch.Generator().manual_seed(seed)
  return [torch.randn((BATCH, c, IMAGE_HW[0] // s, IMAGE_HW[1] // s), generator=gen)
          for c, s in zip(BACKBONE_CHANNELS, (4, 8, 16, 32), strict=True)]


def as_feature_dict(features) -> dict[str, jnp.ndarray]:
  return {f"res{i + 2}": jnp.asarray(nhwc(f)) for i, f in enumerate(features)}


@pytest.fixture(scope="module")
def case():
  model = build_hf_model(seed=0)
  features = random_features(seed=1)
  hf_decoder = model.model.pixel_level_module.decoder
  captured = {}
  hook = hf_decoder.layer_1.register_forward_hook(lambda m, i, o: captured.update(fpn=o))
  with torch.no_grad():
    ref = hf_decoder(features)
  hook.remove()
  module = pixel_decoder_module(model.config)
  feats = as_feature_dict(features)
  template = jax.eval_shape(module.init, jax.random.PRNGKey(0), feats)["params"]
  sd = state_dict_numpy(model)
  params, report = convert.convert_pixel_decoder(sd, "hf", template=template)
  out = jax.jit(module.apply)({"params": params}, feats)
  return dict(model=model, sd=sd, ref=ref, fpn=captured["fpn"], module=module, feats=feats,
              template=template, params=params, report=report, out=out)


def test_hf_conversion_is_complete(case):
  assert case["report"].ok, str(case["report"])
  # Every pixel-decoder tensor of the HF model was used.
  used = set(case["report"].mapped.values())
  hf_keys = {k for k in case["sd"] if k.startswith("model.pixel_level_module.decoder.")}
  assert used == hf_keys


def test_outputs_match_hf(case):
  out, ref = case["out"], case["ref"]
  h4, w4 = IMAGE_HW[0] // 4, IMAGE_HW[1] // 4
  assert out["mask_features"].shape == (BATCH, h4, w4, case["model"].config.mask_feature_size)
  errors = {"mask_features": rel_err(out["mask_features"], nhwc(ref.mask_features)),
            "pre_mask_features": rel_err(out["pre_mask_features"], nhwc(case["fpn"]))}
  assert len(out["multi_scale_features"]) == len(ref.multi_scale_features) == 3
  for i, (a, b) in enumerate(zip(out["multi_scale_features"], ref.multi_scale_features,
                                 strict=True)):
    errors[f"multi_scale_{i}"] = rel_err(a, nhwc(b))
  # Coarsest first: 1/32, 1/16, 1/8.
  assert [f.shape[1] for f in out["multi_scale_features"]] == [IMAGE_HW[0] // s
                                                               for s in (32, 16, 8)]
  print("pixel decoder max rel errors:", errors)
  assert max(errors.values()) <= TOL, errors


def test_official_keys_give_the_same_params(case):
  official = hf_to_official(case["sd"])
  assert "sem_seg_head.pixel_decoder.adapter_1.norm.weight" in official  # spec §7.1 naming
  params, report = convert.convert_pixel_decoder(official, template=case["template"])
  assert report.ok, str(report)
  flat_a = jax.tree_util.tree_leaves_with_path(params)
  flat_b = dict(jax.tree_util.tree_leaves_with_path(case["params"]))
  assert len(flat_a) == len(flat_b)
  for path, value in flat_a:
    np.testing.assert_array_equal(value, flat_b[path], err_msg=str(path))


def test_report_flags_missing_unexpected_and_shape(case):
  sd = dict(case["sd"])
  prefix = "model.pixel_level_module.decoder."
  del sd[prefix + "level_embed"]
  sd[prefix + "encoder.layers.0.fc1.weight"] = np.zeros((5, 5), np.float32)
  sd[prefix + "encoder.layers.0.bogus.weight"] = np.zeros(3, np.float32)
  sd[prefix + "encoder.layers.7.fc1.weight"] = np.zeros((64, 32), np.float32)  # not in template
  _, report = convert.convert_pixel_decoder(sd, template=case["template"])
  assert report.missing == ["level_embed"]
  assert [m[0] for m in report.shape_mismatch] == ["encoder_layers_0/linear1/kernel"]
  assert prefix + "encoder.layers.0.bogus.weight" in report.unexpected
  assert any(u.endswith("-> encoder_layers_7/linear1/kernel") for u in report.unexpected)
  assert not report.ok


def test_detect_source():
  assert convert.detect_source({"sem_seg_head.predictor.query_feat.weight": 0}) == "official"
  assert convert.detect_source({"model.transformer_module.level_embed.weight": 0}) == "hf"
  with pytest.raises(ValueError, match="neither"):
    convert.detect_source({"backbone.stem.conv1.weight": 0})


@pytest.mark.parametrize("src,dst", [((5, 7), (10, 14)), ((16, 24), (2, 3)), ((13, 9), (5, 4)),
                                     ((4, 6), (7, 11))])
def test_resize_bilinear_matches_torch(src, dst):
  x = np.random.default_rng(0).normal(size=(2, 3, *src)).astype(np.float32)
  want = torch.nn.functional.interpolate(torch.from_numpy(x), size=dst, mode="bilinear",
                                         align_corners=False).numpy()
  got = resize_bilinear(jnp.asarray(x), dst, axes=(-2, -1))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
  # Channels-last, the layout of the pixel decoder's FPN fusion.
  got = resize_bilinear(jnp.asarray(x.transpose(0, 2, 3, 1)), dst)
  np.testing.assert_allclose(np.asarray(got), want.transpose(0, 2, 3, 1), atol=1e-5)


def test_init_follows_official_initialisers(case):
  params = jax.jit(case["module"].init)(jax.random.PRNGKey(3), case["feats"])["params"]
  attn = params["encoder_layers_0"]["self_attn"]
  assert not np.any(np.asarray(attn["sampling_offsets"]["kernel"]))
  assert not np.any(np.asarray(attn["attention_weights"]["kernel"]))
  np.testing.assert_array_equal(params["input_proj_0"]["conv"]["bias"], 0)
  assert "bias" not in params["adapter_1"]["conv"] and "bias" not in params["layer_1"]["conv"]
  # level_embed ~ N(0, 1).
  assert 0.5 < float(np.std(params["level_embed"])) < 1.5
