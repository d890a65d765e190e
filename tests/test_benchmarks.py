"""The benchmark scripts still run against the current model APIs (they are not imported by any
other test, and a changed return signature once broke the long-video benchmark silently)."""

import json

import pytest

from benchmarks import vita_long_video


@pytest.mark.slow
def test_vita_long_video_recompute_path_end_to_end(tmp_path):
  # 40 frames > keep_max_frames (36): the mask features are recomputed chunk by chunk, the path
  # the 10,000-frame run takes; chunk_size 18 → 3 chunks, the last one padded.
  out = tmp_path / "vita_long_video.json"
  assert vita_long_video.main(["--models", "synthetic", "--lengths", "40", "--no-merge",
                               "--output", str(out)]) == 0
  report = json.loads(out.read_text())
  (run,) = report["runs"]
  assert (run["model"], run["frames"], run["height"], run["width"]) == ("synthetic", 40, 360, 640)
  assert run["mask_features"] == "recompute"
  assert run["phase_calls"]["frame_queries"] == 3 and run["phase_calls"]["mask_features"] == 3
  # The synthetic config streams its masks with VITA's peak prior: one call per chunk.
  assert run["model_config"]["vita"]["peak_prior"]
  assert run["phase_calls"]["peak_prior_masks"] == 3 and "masks_from_features" not in run[
      "phase_calls"]
  assert run["phase_calls"]["video"] == 1
  top_k = run["model_config"]["inference"]["top_k"]
  assert run["output"]["tracks"] == top_k and run["output"]["rles"] == top_k * 40
  assert 0 < run["inference_peak_rss_mb"] <= run["peak_rss_mb"]
  assert report["models"]["synthetic"]["frames"] == [40]


def test_evaluate_benchmark_runs_on_a_tiny_dataset(tmp_path):
  from benchmarks import evaluate
  out = tmp_path / "evaluate.json"
  assert evaluate.main(["--videos", "3", "--frames", "4", "--preds", "2", "--height", "180",
                        "--width", "240", "--output", str(out)]) == 0
  report = json.loads(out.read_text())
  assert (report["videos"], report["frames"], report["predictions_per_video"]) == (3, 4, 2)
  assert report["seconds"] > 0


def test_input_pipeline_benchmark_smoke(tmp_path):
  from benchmarks import input_pipeline
  out = tmp_path / "input_pipeline.json"
  assert input_pipeline.main(["--smoke", "--root", str(tmp_path / "synthetic"), "--batches", "2",
                              "--warmup", "1", "--num-workers", "0", "--output", str(out)]) == 0
  report = json.loads(out.read_text())
  assert report["batches_timed"] == 2 and report["num_workers"] == 0
  batch, frames, height, width, _ = report["batch_shapes"]["images"][0]
  assert (batch, frames) == (report["local_batch_size"], 2)
  # Every timed batch landed in one of the smoke config's buckets.
  assert sum(report["buckets_seen"].values()) == 2
  assert set(report["buckets_seen"]) <= {"(64, 128)", "(128, 64)", "(128, 128)"}
  assert f"({height}, {width})" in report["buckets_seen"]


@pytest.mark.slow
def test_mask2former_benchmark_parity_fields(tmp_path):
  from benchmarks import mask2former
  out = tmp_path / "mask2former.json"
  assert mask2former.main(["--height", "64", "--width", "64", "--backbones", "resnet50",
                           "--warmup", "1", "--repeats", "1", "--output", str(out)]) == 0
  case = json.loads(out.read_text())["cases"]["resnet50"]
  parity = {k: v for k, v in case.items() if k.endswith("max_rel_diff")}
  assert parity and all(v < 1e-3 for v in parity.values()), parity
