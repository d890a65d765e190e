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
  assert run["phase_calls"]["frame_queries"] == 3 and run["phase_calls"]["masks"] == 3
  assert run["phase_calls"]["video"] == 1
  top_k = run["model_config"]["inference"]["top_k"]
  assert run["output"]["tracks"] == top_k and run["output"]["rles"] == top_k * 40
  assert 0 < run["inference_peak_rss_mb"] <= run["peak_rss_mb"]
  assert report["models"]["synthetic"]["frames"] == [40]
