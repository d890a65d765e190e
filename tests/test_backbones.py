"""Backbones vs independent references.

References: Hugging Face ``ResNetBackbone`` / ``SwinBackbone`` (PyTorch, eval mode) with random
weights *and* random BN statistics / position-bias tables, converted with ``convert_backbones``
and run on the same input; detectron2 / Mask2Former state-dict names generated here from the
official naming rules (not from our modules); ``preprocess`` against a numpy re-derivation.

HF vs detectron2 layout: HF's ``ResNetBackbone`` with ``downsample_in_first_stage=False`` equals
detectron2's layout; ``downsample_in_bottleneck`` is detectron2's ``stride_in_1x1``. HF
``SwinBackbone`` runs with ``always_partition=True``, so (unlike ``SwinModel``) it never shrinks
the window on small maps and matches ``D2SwinTransformer`` at any input size.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from ml_collections import ConfigDict

from vis_jax import convert_backbones as cb
from vis_jax.models import backbones
from vis_jax.models.backbones import BACKBONE_CHANNELS, FROZEN_BN, ResNet, SwinTransformer
from vis_jax.optim import param_path

STAGES = ("res2", "res3", "res4", "res5")
TOL = 1e-5  # measured ~7e-7; brief asks ≤ 1e-4


def rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


def nhwc_to_nchw(x: np.ndarray):
  import torch
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def hf_features(model, images: np.ndarray) -> dict[str, np.ndarray]:
  import torch
  with torch.no_grad():
    maps = model(nhwc_to_nchw(images)).feature_maps
  return {s: m.numpy().transpose(0, 2, 3, 1) for s, m in zip(STAGES, maps, strict=True)}


def state_dict_numpy(model) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def randomize_(model, seed: int) -> None:
  """Random values for everything HF initialises to constants (BN stats, LN affine, tables)."""
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in model.state_dict().items():
      if not t.is_floating_point():
        continue
      rand = torch.randn(t.shape, generator=gen)
      if name.endswith("running_var"):
        t.copy_(0.5 + torch.rand(t.shape, generator=gen) * 1.5)
      elif name.endswith("running_mean") or name.endswith("bias"):
        t.copy_(0.1 * rand)
      elif "norm" in name and name.endswith("weight"):
        t.copy_(1.0 + 0.2 * rand)
      elif name.endswith("relative_position_bias_table"):
        t.copy_(0.5 * rand)
      elif t.ndim >= 2:  # unit-variance pre-activations, so GELU/ReLU curvature matters
        t.copy_(rand / np.sqrt(np.prod(t.shape[1:])))
  model.eval()


def images(shape, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ---- ResNet vs HF ---------------------------------------------------------------------------

RESNET_CASES = {
    # name: (HF config kwargs, our ResNet kwargs)
    "bottleneck": (dict(layer_type="bottleneck", embedding_size=16,
                        hidden_sizes=[64, 128, 256, 512], depths=[2, 1, 2, 1]),
                   dict(depth=50, num_blocks=(2, 1, 2, 1), stem_out_channels=16,
                        res2_out_channels=64, width_per_group=16)),
    "stride_in_1x1": (dict(layer_type="bottleneck", embedding_size=16,
                           hidden_sizes=[64, 128, 256, 512], depths=[1, 1, 1, 1],
                           downsample_in_bottleneck=True),
                      dict(depth=50, num_blocks=(1, 1, 1, 1), stem_out_channels=16,
                           res2_out_channels=64, width_per_group=16, stride_in_1x1=True)),
    "basic": (dict(layer_type="basic", embedding_size=16, hidden_sizes=[16, 32, 64, 128],
                   depths=[2, 1, 1, 1]),
              dict(depth=18, num_blocks=(2, 1, 1, 1), stem_out_channels=16,
                   res2_out_channels=16)),
}
RESNET_INPUT = (2, 80, 112, 3)  # not a multiple of 32: odd maps at res4/res5 test the padding


@functools.cache
def build_resnet_case(name: str) -> dict:
  """HF model (random weights and BN statistics), our module and the converted variables."""
  pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  hf_kwargs, our_kwargs = RESNET_CASES[name]
  config = transformers.ResNetConfig(out_features=["stage1", "stage2", "stage3", "stage4"],
                                     downsample_in_first_stage=False, **hf_kwargs)
  hf = transformers.ResNetBackbone(config)
  randomize_(hf, seed=1)
  module = ResNet(**our_kwargs)
  x = images(RESNET_INPUT)
  template = jax.eval_shape(module.init, jax.random.key(0), x)
  variables, report = cb.convert_resnet_hf(state_dict_numpy(hf), template, prefix="")
  return dict(name=name, hf=hf, module=module, x=x, variables=variables, report=report,
              template=template)


@pytest.fixture(scope="module", params=sorted(RESNET_CASES))
def resnet_case(request):
  return build_resnet_case(request.param)


@pytest.fixture(scope="module")
def bottleneck_case():
  return build_resnet_case("bottleneck")


def test_resnet_hf_conversion_is_complete(resnet_case):
  report = resnet_case["report"]
  assert report.ok, report.summary()
  assert all(k.endswith("num_batches_tracked") for k in report.ignored)
  n_leaves = len(jax.tree_util.tree_leaves(resnet_case["template"]))
  assert report.converted == n_leaves


def test_resnet_matches_hf(resnet_case):
  module, x = resnet_case["module"], resnet_case["x"]
  ours = jax.jit(module.apply)(resnet_case["variables"], x)
  ref = hf_features(resnet_case["hf"], x)
  for s in STAGES:
    assert ours[s].shape == ref[s].shape, s
    err = rel_err(ours[s], ref[s])
    print(f"resnet[{resnet_case['name']}] {s} max rel err {err:.2e}")
    assert err <= TOL, (s, err)


def test_resnet_bf16_close_to_fp32(bottleneck_case):
  module, x, variables = (bottleneck_case[k] for k in ("module", "x", "variables"))
  ours = jax.jit(module.clone(dtype=jnp.bfloat16).apply)(variables, x)
  ref = hf_features(bottleneck_case["hf"], x)
  for s in STAGES:
    assert ours[s].dtype == jnp.bfloat16
    assert rel_err(ours[s], ref[s]) < 5e-2, s
  assert jax.tree_util.tree_leaves(variables)[0].dtype == np.float32


# ---- detectron2 names (generated from the official rules) -----------------------------------

def d2_resnet_shapes(depth: int) -> dict[str, tuple[int, ...]]:
  """detectron2 ResNet state-dict names/shapes (stem.conv1, res{k}.{i}.conv{j}[.norm], shortcut)."""
  blocks = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
  bottleneck = depth >= 50
  shapes: dict[str, tuple[int, ...]] = {}

  def conv_norm(name, out_c, in_c, k):
    shapes[f"{name}.weight"] = (out_c, in_c, k, k)
    for stat in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{name}.norm.{stat}"] = (out_c,)

  conv_norm("stem.conv1", 64, 3, 7)
  in_c = 64
  for stage, n in zip(range(2, 6), blocks, strict=True):
    out_c = (256 if bottleneck else 64) * 2 ** (stage - 2)
    mid = 64 * 2 ** (stage - 2)
    for i in range(n):
      prefix = f"res{stage}.{i}"
      if in_c != out_c:
        conv_norm(f"{prefix}.shortcut", out_c, in_c, 1)
      if bottleneck:
        conv_norm(f"{prefix}.conv1", mid, in_c, 1)
        conv_norm(f"{prefix}.conv2", mid, mid, 3)
        conv_norm(f"{prefix}.conv3", out_c, mid, 1)
      else:
        conv_norm(f"{prefix}.conv1", out_c, in_c, 3)
        conv_norm(f"{prefix}.conv2", out_c, out_c, 3)
      in_c = out_c
  return shapes


def d2_swin_shapes(embed=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), window=7
                   ) -> dict[str, tuple[int, ...]]:
  """Mask2Former D2SwinTransformer state-dict names/shapes."""
  shapes = {"patch_embed.proj.weight": (embed, 3, 4, 4), "patch_embed.proj.bias": (embed,),
            "patch_embed.norm.weight": (embed,), "patch_embed.norm.bias": (embed,)}
  for s, (depth, h) in enumerate(zip(depths, heads, strict=True)):
    c = embed * 2**s
    for b in range(depth):
      p = f"layers.{s}.blocks.{b}"
      for norm in ("norm1", "norm2"):
        shapes[f"{p}.{norm}.weight"] = shapes[f"{p}.{norm}.bias"] = (c,)
      shapes[f"{p}.attn.relative_position_bias_table"] = ((2 * window - 1) ** 2, h)
      shapes[f"{p}.attn.relative_position_index"] = (window**2, window**2)
      shapes[f"{p}.attn.qkv.weight"], shapes[f"{p}.attn.qkv.bias"] = (3 * c, c), (3 * c,)
      shapes[f"{p}.attn.proj.weight"], shapes[f"{p}.attn.proj.bias"] = (c, c), (c,)
      shapes[f"{p}.mlp.fc1.weight"], shapes[f"{p}.mlp.fc1.bias"] = (4 * c, c), (4 * c,)
      shapes[f"{p}.mlp.fc2.weight"], shapes[f"{p}.mlp.fc2.bias"] = (c, 4 * c), (c,)
    if s < len(depths) - 1:
      shapes[f"layers.{s}.downsample.reduction.weight"] = (2 * c, 4 * c)
      shapes[f"layers.{s}.downsample.norm.weight"] = (4 * c,)
      shapes[f"layers.{s}.downsample.norm.bias"] = (4 * c,)
    shapes[f"norm{s}.weight"] = shapes[f"norm{s}.bias"] = (c,)
  return shapes


def zeros_state_dict(shapes, prefix="backbone."):
  sd = {prefix + k: np.zeros(v, np.float32) for k, v in shapes.items()}
  sd["sem_seg_head.predictor.query_feat.weight"] = np.zeros((100, 256), np.float32)  # not ours
  return sd


@pytest.mark.parametrize("depth", [18, 50, 101])
def test_resnet_d2_names_complete(depth):
  module = backbones.build_backbone({"name": f"resnet{depth}"})
  template = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  shapes = d2_resnet_shapes(depth)
  variables, report = cb.convert_resnet_d2(zeros_state_dict(shapes), template)
  assert report.ok, report.summary()
  assert report.converted == len(shapes) == len(jax.tree_util.tree_leaves(template))
  assert variables["params"]["stem"]["conv1"]["kernel"].shape == (7, 7, 3, 64)

  # The report must catch every kind of defect.
  broken = zeros_state_dict(shapes)
  del broken["backbone.res3.0.conv2.weight"]
  broken["backbone.res3.1.conv1.norm.running_var"] = np.zeros((7,), np.float32)
  broken["backbone.res5.0.conv4.weight"] = np.zeros((1,), np.float32)
  broken["backbone.stem.conv1.norm.num_batches_tracked"] = np.zeros((), np.int64)
  _, report = cb.convert_resnet_d2(broken, template)
  assert report.missing == ["backbone.res3.0.conv2.weight"]
  assert report.unexpected == ["backbone.res5.0.conv4.weight"]
  assert [m[0] for m in report.mismatched] == ["backbone.res3.1.conv1.norm.running_var"]
  assert report.ignored == ["backbone.stem.conv1.norm.num_batches_tracked"]
  with pytest.raises(ValueError, match="incomplete"):
    report.raise_if_incomplete()


def test_swin_d2_names_complete():
  module = backbones.build_backbone({"name": "swin_tiny"})
  template = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  shapes = d2_swin_shapes()
  _, report = cb.convert_swin_d2(zeros_state_dict(shapes), template)
  assert report.ok, report.summary()
  index_keys = [k for k in shapes if k.endswith("relative_position_index")]
  assert sorted(report.ignored) == sorted("backbone." + k for k in index_keys)
  assert report.converted == len(shapes) - len(index_keys)
  # An ImageNet Swin .pkl (no prefix): classifier norm/head unexpected, out norms missing.
  pretrained = {k: np.zeros(v, np.float32) for k, v in shapes.items() if not k.startswith("norm")}
  pretrained.update({"norm.weight": np.zeros(768), "head.weight": np.zeros((1000, 768))})
  _, report = cb.convert_swin_d2(pretrained, template, prefix="")
  assert sorted(report.unexpected) == ["head.weight", "norm.weight"]
  assert sorted(report.missing) == sorted(
      f"norm{i}.{p}" for i in range(4) for p in ("bias", "weight"))


# ---- Swin vs HF -----------------------------------------------------------------------------

SWIN_KW = dict(embed_dim=24, depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 4), window_size=4)
# 70×102: padded to the patch (72×104), windows pad every stage, odd maps exercise patch merging.
SWIN_INPUT = (2, 70, 102, 3)


@pytest.fixture(scope="module")
def swin_case():
  pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config = transformers.SwinConfig(
      embed_dim=SWIN_KW["embed_dim"], depths=list(SWIN_KW["depths"]),
      num_heads=list(SWIN_KW["num_heads"]), window_size=SWIN_KW["window_size"],
      drop_path_rate=0.3, out_features=["stage1", "stage2", "stage3", "stage4"])
  hf = transformers.SwinBackbone(config)
  randomize_(hf, seed=2)
  module = SwinTransformer(**SWIN_KW, drop_path_rate=0.3)
  x = images(SWIN_INPUT, seed=3)
  template = jax.eval_shape(module.init, jax.random.key(0), x)
  sd = state_dict_numpy(hf)
  variables, report = cb.convert_swin_hf(sd, template, prefix="")
  return dict(hf=hf, module=module, x=x, variables=variables, report=report, sd=sd,
              template=template)


def test_swin_hf_conversion_is_complete(swin_case):
  report = swin_case["report"]
  assert report.ok, report.summary()
  assert sorted(report.ignored) == ["swin.layernorm.bias", "swin.layernorm.weight"]
  assert report.converted == len(jax.tree_util.tree_leaves(swin_case["template"]))


def test_swin_matches_hf(swin_case):
  module, x = swin_case["module"], swin_case["x"]
  ours = jax.jit(module.apply)(swin_case["variables"], x)
  ref = hf_features(swin_case["hf"], x)
  for s in STAGES:
    assert ours[s].shape == ref[s].shape, s
    err = rel_err(ours[s], ref[s])
    print(f"swin {s} max rel err {err:.2e}")
    assert err <= TOL, (s, err)


def test_swin_bf16_close_to_fp32(swin_case):
  module, x, variables = swin_case["module"], swin_case["x"], swin_case["variables"]
  ours = jax.jit(module.clone(dtype=jnp.bfloat16).apply)(variables, x)
  ref = hf_features(swin_case["hf"], x)
  for s in STAGES:
    assert ours[s].dtype == jnp.bfloat16
    assert rel_err(ours[s], ref[s]) < 5e-2, s


def to_legacy_hf(sd):
  """transformers-4 Hub names of a SwinBackbone (as in facebook/mask2former-swin-* files)."""
  legacy = {}
  for k, v in sd.items():
    k = k.removeprefix("swin.")
    for new, old in ((".attention.q_proj.", ".attention.self.query."),
                     (".attention.k_proj.", ".attention.self.key."),
                     (".attention.v_proj.", ".attention.self.value."),
                     (".attention.relative_position_bias.relative_position_bias_table",
                      ".attention.self.relative_position_bias_table"),
                     (".attention.o_proj.", ".attention.output.dense."),
                     (".mlp.fc1.", ".intermediate.dense."),
                     (".mlp.fc2.", ".output.dense.")):
      k = k.replace(new, old)
    legacy[cb.HF_MASK2FORMER_PREFIX + k] = v
  return legacy


def hf_to_d2_swin(sd):
  """Rename/merge a SwinBackbone state dict into Mask2Former D2SwinTransformer names."""
  d2 = {}
  for k, v in sd.items():
    k = k.removeprefix("swin.")
    if k.startswith("layernorm.") or ".k_proj." in k or ".v_proj." in k:
      continue
    if ".q_proj." in k:
      v = np.concatenate([v] + [sd["swin." + k.replace("q_proj", p)] for p in ("k_proj", "v_proj")])
      k = k.replace("attention.q_proj", "attn.qkv")
    k = re.sub(r"^hidden_states_norms\.stage(\d)", lambda m: f"norm{int(m.group(1)) - 1}", k)
    for new, old in (("embeddings.patch_embeddings.projection", "patch_embed.proj"),
                     ("embeddings.norm", "patch_embed.norm"), ("encoder.layers", "layers"),
                     ("layernorm_before", "norm1"), ("layernorm_after", "norm2"),
                     ("attention.o_proj", "attn.proj"),
                     ("attention.relative_position_bias.relative_position_bias_table",
                      "attn.relative_position_bias_table")):
      k = k.replace(new, old)
    d2["backbone." + k] = v
  return d2


def assert_same_tree(a, b):
  fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=str(k))


def test_swin_legacy_hf_and_d2_names_give_same_params(swin_case):
  template, variables = swin_case["template"], swin_case["variables"]
  legacy, report = cb.convert_swin_hf(to_legacy_hf(swin_case["sd"]), template)
  assert report.ok, report.summary()
  assert_same_tree(legacy, variables)
  d2_sd = hf_to_d2_swin(swin_case["sd"])
  assert set(k.removeprefix("backbone.") for k in d2_sd) == set(
      d2_swin_shapes(24, (1, 1, 2, 1), (1, 2, 3, 4), 4)) - {
          k for k in d2_swin_shapes(24, (1, 1, 2, 1), (1, 2, 3, 4), 4)
          if k.endswith("relative_position_index")}
  d2, report = cb.convert_swin_d2(d2_sd, template)
  assert report.ok, report.summary()
  assert_same_tree(d2, variables)


def test_resnet_d2_names_give_same_params(resnet_case):
  """HF → detectron2 renaming (official rules), then the d2 converter: same tree as via HF."""
  d2 = {}
  for k, v in state_dict_numpy(resnet_case["hf"]).items():
    k = k.replace("embedder.embedder.convolution", "stem.conv1").replace(
        "embedder.embedder.normalization", "stem.conv1.norm")
    k = re.sub(r"encoder\.stages\.(\d)\.layers\.(\d+)\.",
               lambda m: f"res{int(m.group(1)) + 2}.{m.group(2)}.", k)
    k = re.sub(r"\.layer\.(\d)\.", lambda m: f".conv{int(m.group(1)) + 1}.", k)
    k = k.replace(".convolution.weight", ".weight").replace(".normalization.", ".norm.")
    d2["backbone." + k] = v
  variables, report = cb.convert_resnet_d2(d2, resnet_case["template"])
  assert report.ok, report.summary()
  assert_same_tree(variables, resnet_case["variables"])


def test_swin_drop_path(swin_case):
  module, x, variables = swin_case["module"], swin_case["x"], swin_case["variables"]
  apply = jax.jit(module.apply, static_argnames="train")
  eval_out = apply(variables, x)
  train_out = apply(variables, x, train=True, rngs={"dropout": jax.random.key(0)})
  assert any(not np.allclose(train_out[s], eval_out[s]) for s in STAGES)
  no_drop = module.clone(drop_path_rate=0.0)
  same = jax.jit(no_drop.apply, static_argnames="train")(
      variables, x, train=True, rngs={"dropout": jax.random.key(0)})
  for s in STAGES:
    np.testing.assert_allclose(same[s], eval_out[s], rtol=1e-5, atol=1e-5)


# ---- freezing -------------------------------------------------------------------------------

def grads_by_path(module, variables, x, **kwargs):
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}

  def loss(p):
    out = module.apply({"params": p, **state}, x, **kwargs)
    return sum(jnp.sum(v**2) for v in out.values())

  grads = jax.jit(jax.grad(loss))(params)
  return {"backbone/" + param_path(p): np.asarray(g)
          for p, g in jax.tree_util.tree_leaves_with_path(grads)}


def test_resnet_freeze_at_2_zero_grads_and_patterns(bottleneck_case):
  module = bottleneck_case["module"].clone(freeze_at=2)
  variables = bottleneck_case["variables"]
  grads = grads_by_path(module, variables, bottleneck_case["x"])
  patterns = backbones.frozen_patterns(module)
  assert set(variables) == {"params", FROZEN_BN}  # BN statistics are state, never trained
  assert not any("norm" in p for p in grads)
  for path, g in grads.items():
    frozen = path.startswith(("backbone/stem/", "backbone/res2/"))
    assert any(re.search(p, path) for p in patterns) == frozen, path
    if frozen:
      assert not g.any(), path
  assert all(np.abs(g).max() > 0 for p, g in grads.items() if p.startswith("backbone/res3/"))


def test_swin_frozen_stages_zero_grads_and_patterns(swin_case):
  module = swin_case["module"].clone(frozen_stages=2)
  grads = grads_by_path(module, swin_case["variables"], swin_case["x"])
  patterns = backbones.frozen_patterns(module)
  for path, g in grads.items():
    frozen = path.startswith(("backbone/patch_embed/", "backbone/layers_0/"))
    assert any(re.search(p, path) for p in patterns) == frozen, path
    if frozen:
      assert not g.any(), path
  assert np.abs(grads["backbone/norm0/scale"]).max() > 0
  assert np.abs(grads["backbone/layers_1/blocks_0/attn/qkv/kernel"]).max() > 0


# ---- factory and preprocessing --------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18", "resnet101", "swin_tiny", "swin_base"])
def test_build_backbone_shapes(name):
  module = backbones.build_backbone({"name": name, "dtype": "bfloat16"})
  x = jnp.zeros((1, 64, 96, 3))
  out = jax.eval_shape(module.apply, jax.eval_shape(module.init, jax.random.key(0), x), x)
  for s, c in zip(STAGES, BACKBONE_CHANNELS[name], strict=True):
    stride = backbones.FEATURE_STRIDES[s]
    assert out[s].shape == (1, 64 // stride, 96 // stride, c), s
    assert out[s].dtype == jnp.bfloat16
  assert module.feature_channels == dict(zip(STAGES, BACKBONE_CHANNELS[name], strict=True))


def test_build_backbone_rejects_bad_config():
  with pytest.raises(ValueError, match="not one of"):
    backbones.build_backbone({"name": "resnet51"})
  with pytest.raises(ValueError, match="window_size"):
    backbones.build_backbone({"name": "resnet50", "window_size": 7})
  m = backbones.build_backbone(
      ConfigDict(dict(name="resnet50", freeze_at=2, num_blocks=[1, 1, 1, 1], dtype="bfloat16")))
  assert (m.freeze_at, m.num_blocks, m.dtype) == (2, (1, 1, 1, 1), jnp.bfloat16)
  m = backbones.build_backbone({"name": "swin_large", "drop_path_rate": 0.1})
  assert (m.window_size, m.embed_dim, m.drop_path_rate) == (12, 192, 0.1)


@pytest.mark.parametrize("hw", [(50, 70), (64, 96)])
def test_preprocess_matches_numpy(hw):
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 256, size=(2, 3, *hw, 3), dtype=np.uint8)
  out = np.asarray(jax.jit(backbones.preprocess)(imgs))
  mean = np.array([123.675, 116.28, 103.53])
  std = np.array([58.395, 57.12, 57.375])
  hp, wp = -(-hw[0] // 32) * 32, -(-hw[1] // 32) * 32
  ref = np.zeros((2, 3, hp, wp, 3))
  ref[:, :, :hw[0], :hw[1]] = (imgs.astype(np.float64) - mean) / std
  assert out.shape == ref.shape and out.dtype == np.float32
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_preprocess_zeroes_pipeline_padding():
  """uint8 clips padded by the input pipeline: the padding must be 0 after normalisation."""
  rng = np.random.default_rng(1)
  imgs = np.zeros((2, 3, 64, 64, 3), np.uint8)
  valid = np.zeros((2, 64, 64), bool)
  imgs[0, :, :40, :50] = rng.integers(0, 256, size=(3, 40, 50, 3))
  valid[0, :40, :50] = True
  imgs[1] = rng.integers(0, 256, size=(3, 64, 64, 3))
  valid[1] = True
  out = np.asarray(backbones.preprocess(imgs, valid=valid[:, None]))
  ref = (imgs.astype(np.float64) - np.array([123.675, 116.28, 103.53])) / np.array(
      [58.395, 57.12, 57.375])
  ref[0, :, 40:] = 0.0
  ref[0, :, :, 50:] = 0.0
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_resnet_group_norm_matches_torch():
  """``norm="GN"``: every conv is followed by a trainable GroupNorm (gcd(groups, C) groups)."""
  import torch
  import torch.nn.functional as F

  model = ResNet(depth=50, num_blocks=(1, 1, 1, 1), stem_out_channels=8, res2_out_channels=16,
                 width_per_group=4, norm="GN", norm_groups=8)
  x = images((2, 64, 64, 3), seed=3)
  variables = model.init(jax.random.key(0), jnp.asarray(x))
  assert FROZEN_BN not in variables  # no frozen statistics left
  flat = traverse_util.flatten_dict(variables["params"], sep="/")
  rng = np.random.default_rng(0)
  flat = {k: np.asarray(v) + 0.1 * rng.normal(size=v.shape).astype(np.float32)
          for k, v in flat.items()}  # GN scale/bias away from (1, 0)
  ours = model.apply({"params": traverse_util.unflatten_dict(flat, sep="/")}, jnp.asarray(x))

  def conv_gn(t, path, stride, pad):
    w = torch.from_numpy(flat[f"{path}/kernel"]).permute(3, 2, 0, 1)
    y = F.conv2d(t, w, stride=stride, padding=pad)
    c = y.shape[1]
    return F.group_norm(y, int(np.gcd(8, c)), torch.from_numpy(flat[f"{path}/norm/scale"]),
                        torch.from_numpy(flat[f"{path}/norm/bias"]), eps=1e-5)

  t = nhwc_to_nchw(x)
  with torch.no_grad():
    t = F.max_pool2d(F.relu(conv_gn(t, "stem/conv1", 2, 3)), 3, 2, 1)
    for i, stage in enumerate(("res2", "res3", "res4", "res5")):
      p, s = f"{stage}/block0", (1 if i == 0 else 2)
      y = F.relu(conv_gn(t, f"{p}/conv1", 1, 0))
      y = F.relu(conv_gn(y, f"{p}/conv2", s, 1))
      t = F.relu(conv_gn(y, f"{p}/conv3", 1, 0) + conv_gn(t, f"{p}/shortcut", s, 0))
      ref = t.permute(0, 2, 3, 1).numpy()
      assert rel_err(ours[stage], ref) < 1e-5, stage


@pytest.mark.parametrize("size,k,stride,padding", [
    ((17, 22), 7, 2, 3), ((16, 16), 7, 2, 3), ((9, 12), 3, 1, 1), ((10, 11), 4, 4, 0),
    ((8, 9), 3, 2, 0)])
def test_im2col_conv_equals_xla_convolution(size, k, stride, padding):
  """The patch-matmul path of ``resnet.conv2d`` (RGB inputs) against XLA's convolution run
  directly, values and kernel gradients, on odd/even sizes, strides and paddings."""
  from vis_jax.models.backbones import resnet
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, *size, 3)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k, k, 3, 5)), jnp.float32)

  def reference(kernel):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((padding, padding),) * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def ours(kernel):
    return resnet.conv2d(x, kernel, stride, padding)

  assert 3 <= resnet.IM2COL_MAX_CHANNELS  # the path under test is the patch matmul
  np.testing.assert_allclose(ours(kernel), reference(kernel), rtol=1e-5, atol=1e-5)
  weights = jnp.asarray(rng.normal(size=reference(kernel).shape), jnp.float32)
  grad = lambda f: jax.grad(lambda w: jnp.sum(f(w) * weights))(kernel)  # noqa: E731
  np.testing.assert_allclose(grad(ours), grad(reference), rtol=1e-4, atol=1e-4)
