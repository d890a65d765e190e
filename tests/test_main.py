"""The command line: --mode=data end to end, and one-line errors for bad input."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args: str, cache: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, VIS_JAX_CACHE=cache)
  return subprocess.run([sys.executable, "-m", "vis_jax.main", *args], env=env,
                        capture_output=True, text=True, timeout=600)


def test_data_mode_generates_data_and_reports(tmp_path):
  out = _main(f"--config={REPO}/configs/vita_synthetic.py:smoke", f"--workdir={tmp_path}/w",
              "--mode=data", "--num_batches=4", cache=str(tmp_path / "cache"))
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.load(open(tmp_path / "w" / "data_report.json"))
  summary = report["summary"]
  assert summary["sources"] == {"synthetic": 8}
  from configs import vita_synthetic
  smoke = vita_synthetic.get_config("smoke")
  b, t, g = smoke.batch_size, smoke.input.num_frames, smoke.input.max_instances
  assert summary["batch_shapes"]["images"][:2] == [b, t]
  assert summary["batch_shapes"]["masks"][:3] == [b, g, t]
  assert summary["clips_per_source"] == {"synthetic": 4 * b}
  assert summary["bad_samples"]["skipped"] == 0
  assert report["load_reports"]["synthetic"]["videos"] == 8
  sheet = np.asarray(Image.open(tmp_path / "w" / "data_batch.png"))
  assert sheet.ndim == 3 and sheet.shape[2] == 3 and sheet.std() > 0
  assert os.path.exists(tmp_path / "cache" / "synthetic_smoke" / "train.json")


def test_bad_inputs_are_one_line_errors(tmp_path):
  cache = str(tmp_path / "cache")
  config = f"--config={REPO}/configs/vita_synthetic.py:smoke"
  out = _main(config, f"--workdir={tmp_path}/w", "--config.input.num_framez=3", cache=cache)
  assert out.returncode == 2 and 'Did you mean "num_frames"' in out.stderr
  # A new key under a nested dict: ml_collections says only KeyError('xyzzy').
  out = _main(config, f"--workdir={tmp_path}/w", "--config.model.backbone.xyzzy=1", cache=cache)
  assert out.returncode == 2
  assert "unknown config key 'xyzzy' in --config.model.backbone.xyzzy" in out.stderr
  out = _main(config, f"--workdir={tmp_path}/w", "--config.input.num_frames=0", cache=cache)
  assert out.returncode == 2
  assert "config.input.num_frames: must be >= 1" in out.stderr
  assert "Traceback" not in out.stderr


def test_truncated_frame_names_the_file(tmp_path):
  cache = tmp_path / "cache"
  config = f"--config={REPO}/configs/vita_synthetic.py:smoke"
  assert _main(config, f"--workdir={tmp_path}/w", "--mode=data", "--num_batches=1",
               cache=str(cache)).returncode == 0
  frames = sorted((cache / "synthetic_smoke" / "train" / "JPEGImages").rglob("*.jpg"))
  for frame in frames:  # truncate every frame: whichever clip comes first hits one
    data = frame.read_bytes()
    frame.write_bytes(data[: len(data) // 3])
  out = _main(config, f"--workdir={tmp_path}/w2", "--mode=data", "--num_batches=1",
              cache=str(cache))
  assert out.returncode == 2, out.stderr[-2000:]
  assert ".jpg" in out.stderr and "Traceback" not in out.stderr
