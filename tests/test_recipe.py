"""Staged recipes: the VITA stage starts from the detector stage's export; a rerun resumes."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_vita_recipe_two_stages_and_resume(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  command = [sys.executable, "-m", "vis_jax.recipe", "--recipe=vita_synthetic",
             f"--workdir={tmp_path}", "--variant=smoke", "--detector_steps=2", "--steps=2"]
  out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
  assert out.returncode == 0, out.stderr[-4000:]
  # Every detector tensor came from stage 1; only VITA's own parameters were missing, and the
  # only stage-1 tensors VITA has no use for are the detector's training-only parts: the
  # auxiliary class head and the mask-piloted queries' embeddings.
  line = next(x for x in out.stderr.splitlines() if x.startswith("init_from "))
  params_part = line.split("params:", 1)[1].split("; model state:", 1)[0]
  assert params_part.lstrip().startswith("loaded")
  missing = params_part.split("missing", 1)[1].split("; unexpected", 1)[0]
  unexpected = params_part.split("unexpected", 1)[1] if "unexpected" in params_part else ""
  assert "detector/" not in missing and "vita/" in missing
  assert set(unexpected.split(":", 1)[1].replace(",", " ").split()) == {
      "detector/semantic_classifier/bias", "detector/semantic_classifier/kernel",
      "detector/predictor/pilot_label_embed/embedding",
      "detector/predictor/pilot_pos_embed/embedding"}
  summary = json.load(open(tmp_path / "recipe.json"))
  assert list(summary["stages"]) == ["detector", "vita"]
  assert summary["stages"]["detector"]["steps"] == 2
  report = summary["stages"]["detector"]["report"]
  assert report == {k: v for k, v in json.load(open(tmp_path / "detector" / "report.json")
                                               ).items() if k in report}
  assert 0.0 <= report["best_query_iou"] <= 1.0 and 0.0 <= report["frame_AP"] <= 100.0
  assert 0.0 <= summary["stages"]["vita"]["eval"]["AP"] <= 100.0
  assert json.loads(out.stdout[out.stdout.rindex("{\n"):])["AP"] == summary["stages"]["vita"][
      "eval"]["AP"]

  again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-4000:]
  assert again.stdout.count("already complete") == 2
  assert "vis_jax.detector_report" not in again.stdout

  # The other recipe in the same workdir reuses the detector stage; the summary then names it
  # and totals only its own stages.
  m2f = [*command[:3], "--recipe=m2f_vis_synthetic", *command[4:]]
  other = subprocess.run(m2f, env=env, capture_output=True, text=True, timeout=900)
  assert other.returncode == 0, other.stderr[-4000:]
  assert other.stdout.count("already complete") == 1
  summary = json.load(open(tmp_path / "recipe.json"))
  assert summary["recipe"] == "m2f_vis_synthetic"
  assert list(summary["stages"]) == ["detector", "vita", "m2f_vis"]
  own = [summary["stages"][s] for s in ("detector", "m2f_vis")]
  assert summary["total_seconds"] == pytest.approx(
      sum(s["seconds"] + s.get("report_seconds", 0.0) for s in own), abs=0.2)
  assert json.loads(other.stdout[other.stdout.rindex("{\n"):])["AP"] == summary["stages"][
      "m2f_vis"]["eval"]["AP"]


def test_unknown_recipe_and_flags_are_refused(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO)
  bad = subprocess.run([sys.executable, "-m", "vis_jax.recipe", "--recipe=nope",
                        f"--workdir={tmp_path}"], env=env, capture_output=True, text=True)
  assert bad.returncode != 0 and "unknown recipe 'nope'" in bad.stderr
  flag = subprocess.run([sys.executable, "-m", "vis_jax.recipe", f"--workdir={tmp_path}",
                         "--lr=3"], env=env, capture_output=True, text=True)
  assert flag.returncode != 0 and "--lr=3" in flag.stderr


def test_data_flags_reach_every_stage_and_model_flags_only_the_last():
  from vis_jax import recipe
  extra = ["--config.data.synthetic.object_radius=(0.12,0.24)", "--config.model.vita.enc_layers=1"]
  assert recipe.stage_flags(extra, last=False) == extra[:1]
  assert recipe.stage_flags(extra, last=True) == extra
  detector, vita = recipe.RECIPES["vita_synthetic"]
  first = recipe.stage_command(detector, "/w", None, recipe.stage_flags(extra, last=False))
  assert extra[0] in first and extra[1] not in first
