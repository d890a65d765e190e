"""The whole Mask2Former model, its bundle, the convert CLI and the per-device matcher.

References:
* Hugging Face ``Mask2FormerForUniversalSegmentation`` (PyTorch, eval mode) with a ResNet and a
  Swin backbone, every tensor perturbed (BN statistics too), saved as ``.safetensors`` and
  converted by ``python -m vis_jax.convert`` (in-process ``main``): class and mask logits of every
  prediction set must match on the same image (ours gets uint8, HF the image normalised with
  our PIXEL_MEAN/STD). The same weights renamed to detectron2 names (rules written here) and
  stored as a model-zoo ``.pkl`` / a ``.pth`` must convert to the same tensors.
* ``scipy.optimize.linear_sum_assignment`` for the sharded matcher on 8 simulated devices.
* the 1-device trainer run for the 2-device one (same losses and gradient norms).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from tests import test_pixel_decoder as shared
from vis_jax import checkpointing, convert
from vis_jax.models import backbones, registry
from vis_jax.models.mask2former_model import Mask2FormerModel

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "mask2former_tiny_synthetic.py")
TOL = 1e-4
IMAGES = (2, 64, 96)  # multiples of 32: neither model pads
rel_err = shared.rel_err

# Compile-time knobs for the trainer subprocesses only: LLVM's expensive passes dominate CPU
# compile time and do not change the computation.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


# ---- trainer runs (started first: they overlap with the in-process tests) ------------------------


def _train_command(workdir) -> list[str]:
  return [sys.executable, "-m", "vis_jax.main", f"--config={TINY}:smoke", f"--workdir={workdir}",
          "--config.num_train_steps=2", "--config.input.size_buckets=((128, 128),)"]


@pytest.fixture(scope="module", autouse=True)
def trainer_runs(tmp_path_factory):
  """Starts the 1-device and 2-device runs; the trainer test collects them."""
  runs = {}
  for devices in (1, 2):
    workdir = tmp_path_factory.mktemp(f"train_{devices}dev")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}")
    runs[devices] = (workdir, subprocess.Popen(_train_command(workdir), env=env,
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                               text=True))
  yield runs
  for _, proc in runs.values():
    if proc.poll() is None:
      proc.kill()
      proc.wait()


# ---- HF references -------------------------------------------------------------------------------

HEADS = dict(feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64,
             encoder_layers=2, decoder_layers=4, num_attention_heads=2, dim_feedforward=64,
             num_queries=6, num_labels=3)
# (HF backbone config kwargs, our build_backbone config) with the same layout (see
# convert_backbones.py: downsample_in_first_stage=False is detectron2's ResNet).
BACKBONES = {
    "resnet": (dict(model_type="resnet", layer_type="bottleneck", embedding_size=16,
                    hidden_sizes=[32, 64, 128, 256], depths=[1, 2, 1, 1],
                    downsample_in_first_stage=False),
               dict(name="resnet50", num_blocks=(1, 2, 1, 1), stem_out_channels=16,
                    res2_out_channels=32, width_per_group=8)),
    "swin": (dict(model_type="swin", embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                  window_size=4, image_size=IMAGES[1]),
             dict(name="swin_tiny", embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
                  window_size=4, drop_path_rate=0.0)),
}

def config_template(base: str, extra: str = "") -> str:
  """Source of a config over ``configs/<base>.py`` whose detector has the sizes of ``HEADS``
  and a backbone (``str.format`` keys: ``backbone`` and the ``HEADS`` keys), plus ``extra``
  lines (indented two spaces, may use ``c``)."""
  return f"""
from configs import common, {base} as base

def get_config(arg=None):
  c = base.get_config(arg)
  c.model.backbone = common.ConfigDict({{backbone!r}})
  pd, dec = c.model.pixel_decoder, c.model.decoder
  pd.conv_dim = pd.mask_dim = dec.hidden_dim = {{feature_size}}
  pd.num_encoder_layers, pd.dim_feedforward = {{encoder_layers}}, {{encoder_feedforward_dim}}
  pd.num_heads = dec.num_heads = {{num_attention_heads}}
  pd.num_groups = 32  # HF hard-codes GroupNorm(32)
  dec.dim_feedforward, dec.dec_layers = {{dim_feedforward}}, {{decoder_layers}} - 1
  dec.num_queries = {{num_queries}}
  dec.peak_prior = False  # official models have none (the synthetic recipes turn it on)
{extra}  return c
"""


CONFIG_TEMPLATE = config_template("mask2former_tiny_synthetic")


def perturb_(model, seed: int) -> None:
  """Random values for every float tensor, BN statistics included (no zero-init hides a bug)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in model.state_dict().items():
      if not t.is_floating_point():
        continue
      noise = torch.randn(t.shape, generator=gen)
      if name.endswith("running_var"):
        t.copy_(0.5 + 1.5 * torch.rand(t.shape, generator=gen))
      elif name.endswith("running_mean"):
        t.copy_(0.1 * noise)
      else:
        t.add_(noise * 0.5 * max(float(t.std()) if t.numel() > 1 else 0.0, 0.1))
  model.eval()


def hf_to_detectron2(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """HF names → official detectron2 names (heads: the pixel-decoder test's table; ResNet: the
  detectron2 naming rules, spec §7.1)."""
  out = {}
  for key, value in shared.hf_to_official(sd).items():
    if key.startswith("backbone."):
      k = key[len("backbone."):]
      k = k.replace("embedder.embedder.convolution", "stem.conv1").replace(
          "embedder.embedder.normalization", "stem.conv1.norm")
      k = re.sub(r"encoder\.stages\.(\d)\.layers\.(\d+)\.",
                 lambda m: f"res{int(m.group(1)) + 2}.{m.group(2)}.", k)
      k = re.sub(r"\.layer\.(\d)\.", lambda m: f".conv{int(m.group(1)) + 1}.", k)
      key = "backbone." + k.replace(".convolution.weight", ".weight").replace(
          ".normalization.", ".norm.")
    out[key] = value
  return out


def convert_cli(*args: str) -> int:
  return convert.main([str(a) for a in args])


_CASES: dict[str, dict] = {}


def parity_case(family: str, tmp_path_factory) -> dict:
  """Builds (once per module) the HF model, converts it with the CLI and runs both."""
  if family not in _CASES:
    _CASES[family] = _build_parity_case(family, tmp_path_factory)
  return _CASES[family]


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def parity(request, tmp_path_factory):
  return parity_case(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def resnet_case(tmp_path_factory):
  return parity_case("resnet", tmp_path_factory)


@pytest.fixture(scope="module")
def swin_case(tmp_path_factory):
  return parity_case("swin", tmp_path_factory)


def hf_model(family: str):
  """The Hugging Face Mask2Former (eval mode, seed 0) with ``BACKBONES[family]`` and ``HEADS``."""
  bb_kwargs = dict(BACKBONES[family][0])
  bb_config = transformers.AutoConfig.for_model(
      bb_kwargs.pop("model_type"), out_features=["stage1", "stage2", "stage3", "stage4"],
      **bb_kwargs)
  torch.manual_seed(0)
  return transformers.Mask2FormerForUniversalSegmentation(
      transformers.Mask2FormerConfig(backbone_config=bb_config, **HEADS)).eval()


def _build_parity_case(family: str, tmp_path_factory) -> dict:
  ours_backbone = BACKBONES[family][1]
  tmp = tmp_path_factory.mktemp(f"parity_{family}")
  model = hf_model(family)
  perturb_(model, seed=1)
  sd = shared.state_dict_numpy(model)
  from safetensors.numpy import save_file
  weights = tmp / "model.safetensors"
  save_file(sd, str(weights))
  config_path = tmp / "config.py"
  config_path.write_text(CONFIG_TEMPLATE.format(backbone=ours_backbone, **HEADS))
  out_dir = tmp / "converted"
  # num_classes through a command-line override (the CLI takes them like vis_jax.main).
  status = convert_cli("--from", "hf_mask2former", "--input", weights, "--config", config_path,
                       "--output", out_dir, f"--config.data.num_classes={HEADS['num_labels']}")
  assert status == 0
  params, model_state = checkpointing.load_inference_params(str(out_dir))
  config = convert.load_config(str(config_path),
                               [f"--config.data.num_classes={HEADS['num_labels']}"])

  images = np.random.default_rng(2).integers(0, 256, (*IMAGES, 3), dtype=np.uint8)
  pixels = ((images.astype(np.float32) - np.float32(backbones.PIXEL_MEAN))
            / np.float32(backbones.PIXEL_STD))
  with torch.no_grad():
    ref = model(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()),
                output_auxiliary_logits=True)
  module = Mask2FormerModel.from_config(config.model, HEADS["num_labels"])
  out = jax.jit(module.apply)({"params": params, **model_state}, jnp.asarray(images))
  return dict(family=family, sd=sd, ref=ref, out=out, params=params, model_state=model_state,
              config=config, config_path=config_path, weights=weights, tmp=tmp, images=images,
              module=module)


def test_every_layer_matches_hf(parity):
  ref, out = parity["ref"], parity["out"]
  ref_sets = [*ref.auxiliary_logits, {"class_queries_logits": ref.class_queries_logits,
                                      "masks_queries_logits": ref.masks_queries_logits}]
  ours = [*out["aux_outputs"], out]
  assert len(ours) == len(ref_sets) == HEADS["decoder_layers"]
  errors = {}
  for i, (a, b) in enumerate(zip(ours, ref_sets, strict=True)):
    assert a["pred_masks"].shape == (IMAGES[0], HEADS["num_queries"], IMAGES[1] // 4,
                                     IMAGES[2] // 4)
    errors[f"logits_{i}"] = rel_err(a["pred_logits"], b["class_queries_logits"].numpy())
    errors[f"masks_{i}"] = rel_err(a["pred_masks"], b["masks_queries_logits"].numpy())
  print(f"{parity['family']} max rel errors:", errors)
  assert max(errors.values()) <= TOL, errors
  n = HEADS["decoder_layers"] - 1
  assert out["query_features"].shape == (n, IMAGES[0], HEADS["num_queries"], HEADS["hidden_dim"])
  assert out["pre_mask_features"].shape == (IMAGES[0], IMAGES[1] // 4, IMAGES[2] // 4,
                                            HEADS["feature_size"])
  # Masks are the einsum of the last layer's embedding with the returned mask features.
  assert out["mask_features"].shape[-1] == HEADS["mask_feature_size"]


def test_conversion_covers_the_model(parity):
  """Every model tensor came from the file, and the frozen BN statistics are model state."""
  bundle = registry.get_bundle(parity["config"])
  assert type(bundle).__name__ == "Mask2FormerImage"
  abstract_params, abstract_state = convert.abstract_variables(parity["config"])
  flat = lambda t: traverse_util.flatten_dict(t, sep="/")  # noqa: E731
  assert flat(parity["params"]).keys() == flat(abstract_params).keys()
  assert flat(parity["model_state"]).keys() == flat(abstract_state).keys()
  if parity["family"] == "resnet":
    stats = parity["model_state"]["frozen_bn"]["backbone"]["stem"]["conv1"]["norm"]
    np.testing.assert_array_equal(
        stats["running_var"],
        parity["sd"]["model.pixel_level_module.encoder.embedder.embedder.normalization."
                     "running_var"])
  else:
    assert parity["model_state"] == {}
  report = json.loads((parity["tmp"] / "converted" / "conversion.json").read_text())
  assert not (report["missing"] or report["unexpected"] or report["mismatched"])


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_detectron2_files_give_the_same_tensors(resnet_case, suffix, tmp_path):
  parity = resnet_case
  d2 = hf_to_detectron2(parity["sd"])
  d2["criterion.empty_weight"] = np.ones(HEADS["num_labels"] + 1, np.float32)
  path = tmp_path / f"model_final{suffix}"
  if suffix == ".pkl":  # model-zoo layout: numpy arrays + bookkeeping
    with open(path, "wb") as f:
      pickle.dump({"model": d2, "__author__": "test", "matching_heuristics": True}, f, protocol=2)
  else:  # DetectionCheckpointer layout
    torch.save({"model": {k: torch.from_numpy(v) for k, v in d2.items()}, "iteration": 7}, path)
  status = convert_cli("--from", "detectron2", "--input", path, "--config",
                       parity["config_path"], "--output", tmp_path / "out",
                       f"--config.data.num_classes={HEADS['num_labels']}")
  assert status == 0
  params, model_state = checkpointing.load_inference_params(str(tmp_path / "out"))
  for ours, ref in ((params, parity["params"]), (model_state, parity["model_state"])):
    a, b = traverse_util.flatten_dict(ours), traverse_util.flatten_dict(ref)
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))


# ---- convert CLI failures ----------------------------------------------------------------------


def test_missing_and_unexpected_keys_fail_with_a_report(resnet_case, tmp_path, capsys):
  parity = resnet_case
  from safetensors.numpy import save_file
  sd = dict(parity["sd"])
  dropped = "model.transformer_module.decoder.layers.0.fc1.weight"
  del sd[dropped]
  extra = "model.transformer_module.decoder.extra_head.weight"
  sd[extra] = np.zeros((2, 2), np.float32)
  path = tmp_path / "broken.safetensors"
  save_file(sd, str(path))
  common = ("--input", path, "--config", parity["config_path"],
            f"--config.data.num_classes={HEADS['num_labels']}", "--from", "hf_mask2former")

  assert convert_cli(*common, "--output", tmp_path / "a") == convert.EXIT_INCOMPLETE
  captured = capsys.readouterr()
  assert "missing: predictor/transformer_ffn_layers_0/linear1/kernel" in captured.out
  assert f"unexpected: {extra}" in captured.out
  assert "--allow-missing" in captured.err and "--allow-unexpected" in captured.err
  assert not (tmp_path / "a").exists()

  assert convert_cli(*common, "--allow-missing", "--output", tmp_path / "b") == 2
  assert not (tmp_path / "b").exists()
  assert convert_cli(*common, "--allow-missing", "--allow-unexpected",
                     "--output", tmp_path / "c") == 0
  params, _ = checkpointing.load_inference_params(str(tmp_path / "c"))
  ffn = params["predictor"]["transformer_ffn_layers_0"]["linear1"]
  assert "kernel" not in ffn and "bias" in ffn  # the gap keeps the run's own init

  # A wrong shape is refused too.
  sd = dict(parity["sd"])
  sd["class_predictor.weight"] = np.zeros((9, HEADS["hidden_dim"]), np.float32)
  save_file(sd, str(path))
  assert convert_cli(*common, "--output", tmp_path / "d") == 2
  assert "class_embed/kernel" in capsys.readouterr().out


class _Exploit:
  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path, capsys):
  marker = tmp_path / "pwned"
  path = tmp_path / "model_final.pkl"
  with open(path, "wb") as f:
    pickle.dump({"model": {"w": np.zeros(2, np.float32), "x": _Exploit(str(marker))}}, f)
  with pytest.raises(convert.UnsafePickleError, match=r"(posix|os)\.system"):
    convert.load_pickle(str(path))
  assert convert_cli("--from", "detectron2", "--input", path, "--config", f"{TINY}:smoke",
                     "--output", tmp_path / "out") == 2
  assert "refusing to unpickle" in capsys.readouterr().err
  assert not marker.exists() and not (tmp_path / "out").exists()
  # A benign model-zoo pickle loads (numpy arrays, scalars, OrderedDict, Python-2 bytes path).
  import collections
  good = collections.OrderedDict(a=np.arange(3, dtype=np.float32), n=np.float64(2.0))
  with open(path, "wb") as f:
    pickle.dump({"model": good, "__author__": "x"}, f, protocol=2)
  np.testing.assert_array_equal(convert.load_state_dict(str(path))["a"], [0, 1, 2])


# ---- model knobs -------------------------------------------------------------------------------


def test_remat_knobs_keep_parameters_and_function(swin_case):
  """remat_backbone + remat_decoder_layers: same parameter tree, same outputs.

  Swin, because its ``train`` flag must be a static argument of the remat-ed backbone.
  """
  parity = swin_case
  config = parity["config"].copy_and_resolve_references()
  config.model.remat_backbone = config.model.remat_decoder_layers = True
  remat = Mask2FormerModel.from_config(config.model, HEADS["num_labels"])
  images = jnp.asarray(parity["images"])
  variables = {"params": parity["params"], **parity["model_state"]}
  abstract = jax.eval_shape(remat.init, jax.random.key(0), images)
  flat = lambda t: traverse_util.flatten_dict(t, sep="/")  # noqa: E731
  assert flat(abstract["params"]).keys() == flat(parity["params"]).keys()
  # train=True only switches Swin's drop path, which is 0 here.
  out = jax.jit(lambda v, x: remat.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)})
                )(variables, images)
  for key in ("pred_logits", "pred_masks", "query_features", "pre_mask_features"):
    assert rel_err(out[key], parity["out"][key]) < 1e-6, key


# ---- per-device matching -------------------------------------------------------------------------


def test_sharded_matcher_one_host_call_per_device_equals_scipy():
  script = textwrap.dedent("""
      import numpy as np, jax
      from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
      from scipy.optimize import linear_sum_assignment
      from vis_jax.losses import matching
      calls = []
      original = matching._host_match
      def counting(cost, num_valid):
        calls.append(cost.shape)
        return original(cost, num_valid)
      matching._host_match = counting
      mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
      rng = np.random.default_rng(0)
      layers, b, q, g = 3, 16, 6, 4
      cost = rng.normal(size=(layers, b, q, g)).astype(np.float32)
      num_valid = rng.integers(0, g + 1, size=b).astype(np.int32)
      fn = jax.jit(lambda c, n: matching.match_all_layers_sharded(c, n, "scipy",
                                                                  ("data", "fsdp")))
      with jax.set_mesh(mesh):
        c = jax.device_put(cost, NamedSharding(mesh, P(None, ("data", "fsdp"))))
        n = jax.device_put(num_valid, NamedSharding(mesh, P(("data", "fsdp"))))
        out = np.asarray(fn(c, n))
      assert sorted(calls) == [(layers * b // 8, q, g)] * 8, calls  # one call per device
      calls.clear()
      plain = np.asarray(fn(cost, num_valid))  # no mesh: one call with everything
      assert calls == [(layers * b, q, g)], calls
      np.testing.assert_array_equal(out, plain)
      for l in range(layers):
        for i in range(b):
          rows, cols = linear_sum_assignment(cost[l, i, :, :num_valid[i]])
          k = len(rows)
          assert (out[l, i, 0, :k] == rows).all() and (out[l, i, 1, :k] == cols).all()
          assert (out[l, i, 1, k:] == -1).all()
      print("OK")
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


# ---- trainer end to end ------------------------------------------------------------------------


def _metrics(workdir) -> dict[int, dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r for r in map(json.loads, f)}


def test_trainer_two_steps_and_two_devices_equal_one(trainer_runs):
  results = {}
  for devices, (workdir, proc) in trainer_runs.items():
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-4000:]
    summary = json.loads(stdout[stdout.index("{"):])
    assert summary["devices"] == devices and summary["final_step"] == 2
    results[devices] = _metrics(workdir)
  for step in (1, 2):
    one, two = results[1][step], results[2][step]
    assert np.isfinite(one["loss"]) and one["finite"] == 1.0
    assert one["num_masks"] >= 1
    for key in ("loss", "grad_norm", "param_norm", "loss_mask_0", "loss_ce"):
      np.testing.assert_allclose(two[key], one[key], rtol=1e-4, err_msg=f"step {step} {key}")
