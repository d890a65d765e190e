"""Pixel-decoder options beyond the official module: masks at stride 2 from the ResNet stem,
and position-aware mask features. References: PyTorch ops on the same tensors, numpy max-pool."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import small_detector
from vis_jax.models.backbones import resnet
from vis_jax.models.layers.position import sine_position_2d
from vis_jax.models.mask2former_model import Mask2FormerModel
from vis_jax.models.pixel_decoder import NORM_EPS, MSDeformAttnPixelDecoder

torch = pytest.importorskip("torch")

IMAGES = (2, 64, 96, 3)
CONV_DIM = 16
STRIDES4 = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
STRIDES2 = {"stem": 2, **STRIDES4}


def _decoder(strides: dict[str, int], common_stride: int, mask_position: bool = False,
             memory_position: bool = False) -> MSDeformAttnPixelDecoder:
  return MSDeformAttnPixelDecoder(
      in_features=tuple(strides), feature_strides=tuple(strides.values()), conv_dim=CONV_DIM,
      mask_dim=CONV_DIM, num_encoder_layers=1, num_heads=2, dim_feedforward=32,
      common_stride=common_stride, num_groups=4, mask_position=mask_position,
      memory_position=memory_position)


def _features(seed: int = 0) -> dict[str, jax.Array]:
  rng = np.random.default_rng(seed)
  return {name: jnp.asarray(rng.normal(size=(2, 64 // s, 96 // s, 8 * s)), jnp.float32)
          for name, s in STRIDES2.items()}


def _torch_conv_gn(x: np.ndarray, params: dict, kernel: int, relu: bool) -> np.ndarray:
  """detectron2 ``Conv2d(norm=GN)`` in PyTorch, NHWC in and out."""
  t = torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2)
  w = torch.from_numpy(np.asarray(params["conv"]["kernel"])).permute(3, 2, 0, 1)
  y = torch.nn.functional.conv2d(t, w, padding=kernel // 2)
  y = torch.nn.functional.group_norm(y, 4, torch.from_numpy(np.asarray(params["norm"]["scale"])),
                                     torch.from_numpy(np.asarray(params["norm"]["bias"])),
                                     eps=NORM_EPS)
  return (torch.relu(y) if relu else y).permute(0, 2, 3, 1).numpy()


def _perturbed(params, seed: int):
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys, strict=True)])


@pytest.fixture(scope="module")
def decoders():
  feats = _features()
  dec4, dec2 = _decoder(STRIDES4, 4), _decoder(STRIDES2, 2)
  p2 = _perturbed(dec2.init(jax.random.key(0), feats)["params"], 1)
  # The stride-4 decoder is the stride-2 one without its finest level: res2's adapter/layer
  # are adapter_2/layer_2 there and adapter_1/layer_1 here.
  p4 = {k: v for k, v in p2.items() if k not in ("adapter_1", "layer_1")}
  p4["adapter_1"], p4["layer_1"] = p4.pop("adapter_2"), p4.pop("layer_2")
  p4 = dict(p4, mask_features=p2["mask_features"])
  out4 = jax.jit(dec4.apply)({"params": p4}, {k: feats[k] for k in STRIDES4})
  out2 = jax.jit(dec2.apply)({"params": p2}, feats)
  return dict(feats=feats, p2=p2, out4=out4, out2=out2)


def test_stride2_adds_one_fpn_level_from_the_stem(decoders):
  out4, out2, p2, feats = (decoders[k] for k in ("out4", "out2", "p2", "feats"))
  assert out2["mask_features"].shape == (2, 32, 48, CONV_DIM)
  for a, b in zip(out4["multi_scale_features"], out2["multi_scale_features"], strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The new level, re-derived in PyTorch from the stride-4 decoder's finest map.
  lateral = _torch_conv_gn(feats["stem"], p2["adapter_1"], 1, relu=False)
  up = torch.nn.functional.interpolate(
      torch.from_numpy(np.asarray(out4["pre_mask_features"])).permute(0, 3, 1, 2),
      size=(32, 48), mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
  expected = _torch_conv_gn(lateral + up, p2["layer_1"], 3, relu=True)
  np.testing.assert_allclose(np.asarray(out2["pre_mask_features"]), expected, atol=1e-4)


def test_mask_position_adds_a_linear_map_of_the_sine_encoding(decoders):
  feats, p2, out2 = decoders["feats"], decoders["p2"], decoders["out2"]
  dec = _decoder(STRIDES2, 2, mask_position=True)
  init = dec.init(jax.random.key(0), feats)["params"]
  assert not np.any(np.asarray(init["mask_position"]["kernel"]))   # identity at init
  kernel = np.random.default_rng(3).normal(size=(CONV_DIM, CONV_DIM)).astype(np.float32)
  out = jax.jit(dec.apply)({"params": dict(p2, mask_position={"kernel": kernel})}, feats)
  pos = np.asarray(sine_position_2d((2, 32, 48), CONV_DIM // 2))
  np.testing.assert_allclose(np.asarray(out["pre_mask_features"]),
                             np.asarray(out2["pre_mask_features"]) + pos @ kernel, atol=1e-4)


def test_memory_position_adds_a_linear_map_of_the_sine_encoding_to_each_decoder_level(
    decoders):
  feats, p2, out2 = decoders["feats"], decoders["p2"], decoders["out2"]
  dec = _decoder(STRIDES2, 2, memory_position=True)
  init = dec.init(jax.random.key(0), feats)["params"]
  names = [f"memory_position_{i}" for i in range(3)]
  assert all(not np.any(np.asarray(init[n]["kernel"])) for n in names)   # identity at init
  rng = np.random.default_rng(4)
  kernels = {n: rng.normal(size=(CONV_DIM, CONV_DIM)).astype(np.float32) for n in names}
  out = jax.jit(dec.apply)({"params": dict(p2, **{n: {"kernel": k}
                                                   for n, k in kernels.items()})}, feats)
  for n, got, base in zip(names, out["multi_scale_features"], out2["multi_scale_features"],
                          strict=True):
    pos = np.asarray(sine_position_2d(base.shape[:3], CONV_DIM // 2))
    np.testing.assert_allclose(np.asarray(got), np.asarray(base) + pos @ kernels[n], atol=1e-4)
  # Added after the FPN: the finer maps and the mask features do not see it.
  np.testing.assert_array_equal(np.asarray(out["mask_features"]),
                                np.asarray(out2["mask_features"]))


def test_resnet_stem_feature_is_the_pre_pool_map():
  net = resnet.ResNet(depth=50, num_blocks=(1, 1, 1, 1), stem_out_channels=8,
                      res2_out_channels=16, width_per_group=4, norm="GN", norm_groups=4,
                      stem_feature=True)
  x = jnp.asarray(np.random.default_rng(0).normal(size=IMAGES), jnp.float32)
  variables = net.init(jax.random.key(0), x)
  with_stem = net.apply(variables, x)
  plain = net.clone(stem_feature=False).apply(variables, x)
  assert with_stem["stem"].shape == (2, 32, 48, 8) and "stem" not in plain
  for name in resnet.STAGES:
    np.testing.assert_array_equal(np.asarray(with_stem[name]), np.asarray(plain[name]))
  # 3x3/2 max-pool (padding 1 with -inf) of the stem map = what res2 is computed from.
  stem = np.pad(np.asarray(with_stem["stem"]), ((0, 0), (1, 1), (1, 1), (0, 0)),
                constant_values=-np.inf)
  pooled = np.max([stem[:, i:i + 32:2, j:j + 48:2] for i in range(3) for j in range(3)], 0)
  stem_module = resnet.BasicStem(8, norm="GN", norm_groups=4)
  got, _ = stem_module.apply({"params": variables["params"]["stem"]}, x)
  np.testing.assert_allclose(np.asarray(got), pooled, atol=1e-6)


def test_model_predicts_masks_at_half_resolution_and_refuses_swin():
  cfg = small_detector.small_detector_config(1, 1)
  cfg.pixel_decoder.common_stride = 2
  cfg.decoder.num_queries = 4
  model = Mask2FormerModel.from_config(cfg, 3)
  images = jnp.zeros(IMAGES, jnp.uint8)
  shapes = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), images)[0])
  assert shapes["pred_masks"].shape == (2, 4, 32, 48)
  cfg.backbone = dict(name="swin_tiny")
  with pytest.raises(ValueError, match="common_stride=2"):
    jax.eval_shape(lambda: Mask2FormerModel.from_config(cfg, 3).init(jax.random.key(0), images))
