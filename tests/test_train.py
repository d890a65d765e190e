"""The training system end to end with the stand-in model (configs/pixel_baseline_synthetic.py).

Each run is a subprocess (``python -m vis_jax.main``) so device counts and process groups are
real: 1 device, 8 simulated devices (data parallel and FSDP), two processes joined with
``jax.distributed`` on loopback, and a run killed with SIGKILL and resumed.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from vis_jax import optim, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "pixel_baseline_synthetic.py") + ":smoke"
# One bucket: every run compiles the step once.
COMMON = ["--config.input.size_buckets=((128, 128),)", "--config.log_every_steps=1"]


def _env(devices: int = 1, **extra: str) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env.update(extra)
  return env


def _command(workdir, *overrides: str) -> list[str]:
  return [sys.executable, "-m", "vis_jax.main", f"--config={CONFIG}", f"--workdir={workdir}",
          "--mode=train", *COMMON, *overrides]


def _run(workdir, *overrides: str, devices: int = 1) -> dict:
  out = subprocess.run(_command(workdir, *overrides), env=_env(devices), capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]
  return json.loads(out.stdout[out.stdout.index("{"):])


def _metrics(workdir) -> dict[int, dict]:
  """step → last logged record (a resumed run re-logs the steps after its checkpoint)."""
  records = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      records[record["step"]] = record
  return records


def _assert_same_trajectory(a: dict, b: dict, steps, rtol: float) -> None:
  for step in steps:
    for key in ("loss", "grad_norm", "param_norm"):
      np.testing.assert_allclose(a[step][key], b[step][key], rtol=rtol,
                                 err_msg=f"step {step} {key}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """Three steps of batch 8 on one device."""
  workdir = tmp_path_factory.mktemp("one_device")
  summary = _run(workdir, "--config.batch_size=8", "--config.num_train_steps=3")
  return summary, _metrics(workdir)


def test_metrics_contract_and_checkpoints(reference, tmp_path):
  summary, metrics = reference
  assert summary["final_step"] == 3 and sorted(metrics) == [1, 2, 3]
  for record in metrics.values():
    for key in ("step", "loss", "learning_rate", "steps_per_sec"):
      assert key in record
  assert metrics[3]["loss"] < metrics[1]["loss"]


def test_eight_devices_data_parallel_equals_one_device(reference, tmp_path):
  summary = _run(tmp_path, "--config.batch_size=8", "--config.num_train_steps=3", devices=8)
  assert summary["devices"] == 8 and summary["mesh"]["data"] == 8
  assert summary["state_leaves"]["sharded"] == 0
  _assert_same_trajectory(_metrics(tmp_path), reference[1], [1, 2, 3], rtol=2e-5)


def test_eight_devices_fsdp_shards_state_and_agrees(reference, tmp_path):
  summary = _run(tmp_path, "--config.batch_size=8", "--config.num_train_steps=3",
                 "--config.sharding.mesh=(('data', -1), ('fsdp', 2), ('model', 1))",
                 "--config.sharding.param_rules=(('.*', 'fsdp'),)", devices=8)
  assert summary["mesh"] == {"data": 4, "fsdp": 2, "model": 1}
  # conv kernels [3, 3, C, 16] and their Adam moments have a dimension divisible by 2.
  assert summary["state_leaves"]["sharded"] >= 9, summary["state_leaves"]
  _assert_same_trajectory(_metrics(tmp_path), reference[1], [1, 2, 3], rtol=2e-5)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_agree_with_one(tmp_path):
  single = tmp_path / "single"
  _run(single, "--config.num_train_steps=2")
  multi = tmp_path / "multi"
  port = _free_port()
  procs = [subprocess.Popen(
      _command(multi, "--config.num_train_steps=2"),
      env=_env(1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i)),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs, strict=True):
    assert p.returncode == 0, err[-4000:]
  summary = json.loads(outputs[0][0][outputs[0][0].index("{"):])
  assert summary["devices"] == 2
  _assert_same_trajectory(_metrics(multi), _metrics(single), [1, 2], rtol=2e-5)


def test_sigkill_then_resume_continues_exactly(tmp_path):
  steps = ["--config.num_train_steps=40", "--config.checkpoint_every_steps=5"]
  straight = tmp_path / "straight"
  _run(straight, *steps)

  killed = tmp_path / "killed"
  proc = subprocess.Popen(_command(killed, *steps), env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  marker = killed / "checkpoints" / "10" / "commit_success.txt"
  deadline = time.time() + 300
  while not marker.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert marker.exists(), "the run never reached its step-10 checkpoint"
  killed_at = max(_metrics(killed))
  assert killed_at < 40, "the run finished before it could be killed"

  summary = _run(killed, *steps)
  assert summary["start_step"] >= 10 and summary["final_step"] == 40
  resumed = _metrics(killed)
  _assert_same_trajectory(resumed, _metrics(straight),
                          range(summary["start_step"] + 1, 41), rtol=1e-6)


class _NaNBundle:
  """Loss = mean((w - target)^2), NaN when the batch says so."""

  batch_keys = ("x", "poison")

  def init(self, rng, batch):
    return {"head": {"w": jnp.ones((4,))}}, {}

  def loss(self, params, model_state, batch, rng):
    loss = jnp.mean((params["head"]["w"] - batch["x"]) ** 2)
    return jnp.where(batch["poison"].any(), jnp.nan, loss), {}


def test_nonfinite_step_is_skipped_and_counted():
  cfg = common.base_config().optim
  cfg.update(dict(learning_rate=0.1, warmup_steps=0, clip_grad_norm=0.0))
  bundle = _NaNBundle()
  params, _ = bundle.init(None, None)
  tx, schedule = optim.make_optimizer(cfg, params, 10)
  state = train.make_init_fn(bundle, tx, None)(jax.random.key_data(jax.random.key(0)))
  step = jax.jit(train.make_train_step(bundle, tx, schedule))
  good = {"x": jnp.zeros((2, 4)), "poison": jnp.zeros((2,), bool)}
  bad = {"x": jnp.zeros((2, 4)), "poison": jnp.ones((2,), bool)}

  state, m = step(state, good)
  after_good = jax.tree_util.tree_map(np.asarray, (state.params, state.opt_state))
  state, m = step(state, bad)
  assert not bool(m["finite"]) and int(state.nonfinite_steps) == 1 and int(state.step) == 2
  for a, b in zip(jax.tree_util.tree_leaves(after_good),
                  jax.tree_util.tree_leaves((state.params, state.opt_state)), strict=True):
    np.testing.assert_array_equal(a, np.asarray(b))
  state, m = step(state, good)
  assert bool(m["finite"]) and np.isfinite(np.asarray(state.params["head"]["w"])).all()


def test_gradient_accumulation_equals_full_batch():
  cfg = common.base_config().optim
  cfg.update(dict(learning_rate=0.1, warmup_steps=0, clip_grad_norm=0.0))
  bundle = _NaNBundle()
  params, _ = bundle.init(None, None)
  tx, schedule = optim.make_optimizer(cfg, params, 10)
  init = train.make_init_fn(bundle, tx, None)
  batch = {"x": jnp.arange(16.0).reshape(4, 4), "poison": jnp.zeros((4,), bool)}
  full, m_full = jax.jit(train.make_train_step(bundle, tx, schedule))(
      init(jax.random.key_data(jax.random.key(0))), batch)
  accum, m_acc = jax.jit(train.make_train_step(bundle, tx, schedule, accum_steps=2))(
      init(jax.random.key_data(jax.random.key(0))), batch)
  np.testing.assert_allclose(m_full["loss"], m_acc["loss"], rtol=1e-6)
  np.testing.assert_allclose(full.params["head"]["w"], accum.params["head"]["w"], rtol=1e-6)


def test_export_then_init_from_loads_and_reports(tmp_path):
  workdir = tmp_path / "trained"
  _run(workdir, "--config.num_train_steps=2")
  exported = tmp_path / "exported"
  out = subprocess.run([sys.executable, "-m", "vis_jax.export", f"--workdir={workdir}",
                        f"--output={exported}"], env=_env(), capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads(out.stdout)["step"] == 2
  assert (exported / "config.json").exists()

  from vis_jax import checkpointing
  params, _ = checkpointing.load_inference_params(str(exported))
  assert set(params) == {"conv1", "conv2", "norm", "head"}

  started = subprocess.run(_command(tmp_path / "from_export", "--config.num_train_steps=1",
                                    f"--config.init_from={exported}"),
                           env=_env(), capture_output=True, text=True, timeout=600)
  assert started.returncode == 0, started.stderr[-3000:]
  assert "params: loaded 8 tensors" in started.stderr

  # A wider model: conv1/conv2/norm/head shapes differ → reported; strict mode refuses.
  strict = subprocess.run(_command(tmp_path / "strict", "--config.num_train_steps=1",
                                   "--config.model.width=8", f"--config.init_from={exported}",
                                   "--config.init_from_strict=True"),
                          env=_env(), capture_output=True, text=True, timeout=600)
  assert strict.returncode != 0 and "mismatched" in strict.stderr


def test_merge_params_report():
  from vis_jax import checkpointing
  initial = {"a": {"w": np.zeros((2, 3))}, "b": {"w": np.zeros((4,))}, "c": np.zeros(1)}
  loaded = {"a": {"w": np.ones((2, 3))}, "b": {"w": np.ones((5,))}, "d": np.ones(2)}
  merged, report = checkpointing.merge_params(initial, loaded)
  np.testing.assert_array_equal(merged["a"]["w"], np.ones((2, 3)))
  np.testing.assert_array_equal(merged["b"]["w"], np.zeros((4,)))
  assert report.loaded == ["a/w"] and report.missing == ["c"] and report.unexpected == ["d"]
  assert report.mismatched == ["b/w (5,) vs (4,)"]
  # --config.init_from_prefix: an image model's tree loaded under VITA's "detector".
  nested, report = checkpointing.merge_params(
      {"detector": initial, "vita": {"q": np.zeros(3)}},
      checkpointing.nest_under(loaded, "detector"))
  np.testing.assert_array_equal(nested["detector"]["a"]["w"], np.ones((2, 3)))
  assert report.loaded == ["detector/a/w"]
  assert sorted(report.missing) == ["detector/c", "vita/q"]
  assert report.unexpected == ["detector/d"]
  assert checkpointing.nest_under({"x": 1}, "") == {"x": 1}
  assert checkpointing.nest_under({"x": 1}, "a/b") == {"a": {"b": {"x": 1}}}


def test_eval_modes_refuse_a_model_without_video_inference(tmp_path):
  out = subprocess.run(_command(tmp_path, "--mode=train_and_eval"), env=_env(),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 2 and "has no video inference" in out.stderr
