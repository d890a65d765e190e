"""VITA streaming inference on long videos: time and peak memory against the video length.

Each (model, length) runs ``Vita.predict_video`` once, in a fresh subprocess, on a procedural
360×640 video (moving ellipses and boxes on a gradient) whose frames are generated lazily when
``iter_frame_chunks`` reads them (``VideoRecord.frame_bytes`` is a lazy sequence of PPM
bytes), so the video is never held in memory. Weights are randomly initialised. Models:

* ``synthetic``: ``configs/vita_synthetic.py`` (toy widths), test size set to 360 (→ 360×640,
  padded 384×640); default lengths 100, 1,000, 10,000.
* ``r50``: ``configs/vita_r50_ytvis19.py`` (its ``model`` section when present, else the
  official sizes: ResNet-50, 100 frame queries, 256 wide, 6 + 3 VITA layers, 100 object
  queries; ``inference`` = ``default_inference_config()``); default lengths 50, 200.

Per run: wall time of ``predict_video`` (after compilation), split by phase (detector pass,
VITA, mask pass, mask upsampling, host: frame generation + RLE encoding), compile seconds (AOT
compilation of every jitted piece before the timed call: the timed call then finds them in
JAX's cache), XLA temp buffer sizes of the compiled pieces, and peak RSS. Peak RSS is read from
``/proc/self/status`` ``VmHWM``, which is reset (``/proc/self/clear_refs``) around each jitted
call, so the peak of every phase is known; ``peak_rss_mb`` is the process-lifetime maximum
(start-up, init and compilation included), ``inference_peak_rss_mb`` that of the timed call.
The output (top-k tracks × one RLE per frame) legitimately grows with the length; its size per
frame is reported separately (JSON bytes, Python object bytes, and the RSS the process still
holds after the call, measured after ``malloc_trim``).

Per model: ``growth_mb_per_frame`` = peak-RSS slope between its shortest and longest run, and
the acceptance check ``growth_ok`` = ``growth_mb_per_frame <= 0.5``. A phase whose peak is
below another's does not show in the total peak, so the per-phase slopes and the VITA call's
XLA temp bytes per frame are reported too.

  .venv/bin/python -m benchmarks.vita_long_video [--models synthetic,r50] [--lengths 100,1000]
      [--quick] [--max-minutes 40] [--output benchmarks/results/vita_long_video.json]

Results of earlier invocations in ``--output`` are kept (a rerun replaces the same model and
length), so long runs can be added later: ``--models synthetic --lengths 10000``.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEIGHT, WIDTH = 360, 640
DEFAULT_LENGTHS = {"synthetic": (100, 1000, 10000), "r50": (50, 200)}
QUICK_LENGTHS = {"synthetic": (100, 1000), "r50": (50,)}
GROWTH_LIMIT_MB_PER_FRAME = 0.5
MB = 2.0**20


# ---- the procedural video ----------------------------------------------------------------------


class ProceduralFrames(Sequence[bytes]):
  """Frame ``i`` of a moving-shapes video as PPM bytes, generated on access (nothing cached)."""

  def __init__(self, length: int, height: int, width: int, seed: int = 0, num_shapes: int = 6):
    self.length, self.height, self.width = length, height, width
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    self._background = np.stack([40 + 80 * yy / height, 60 + 60 * xx / width,
                                 np.full_like(xx, 90)], -1).astype(np.uint8)
    self._header = f"P6\n{width} {height}\n255\n".encode("ascii")
    # Per shape: centre, amplitude, angular speeds, phases, radii, colour, ellipse or box.
    n = num_shapes
    self._centre = rng.uniform(0.3, 0.7, (n, 2)) * (height, width)
    self._amp = rng.uniform(0.15, 0.3, (n, 2)) * (height, width)
    self._omega = rng.uniform(0.01, 0.05, (n, 2))
    self._phase = rng.uniform(0, 2 * np.pi, (n, 2))
    self._radius = rng.uniform(0.06, 0.15, (n, 2)) * (height, height)
    self._colour = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    self._ellipse = rng.random(n) < 0.6
    self.seconds = 0.0  # time spent generating frames

  def __len__(self) -> int:
    return self.length

  def frame(self, index: int) -> np.ndarray:
    """uint8 ``[H, W, 3]``."""
    image = self._background.copy()
    centres = self._centre + self._amp * np.sin(self._omega * index + self._phase)
    for (cy, cx), (ry, rx), colour, ellipse in zip(centres, self._radius, self._colour,
                                                   self._ellipse, strict=True):
      y0, y1 = max(int(cy - ry), 0), min(int(cy + ry) + 1, self.height)
      x0, x1 = max(int(cx - rx), 0), min(int(cx + rx) + 1, self.width)
      if y0 >= y1 or x0 >= x1:
        continue
      if ellipse:
        ys = ((np.arange(y0, y1) - cy) / ry)[:, None] ** 2
        xs = ((np.arange(x0, x1) - cx) / rx)[None, :] ** 2
        image[y0:y1, x0:x1][ys + xs <= 1.0] = colour
      else:
        image[y0:y1, x0:x1] = colour
    return image

  def __getitem__(self, index):  # type: ignore[override]
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(self.length))]
    if not -self.length <= index < self.length:
      raise IndexError(index)
    t0 = time.perf_counter()
    data = self._header + self.frame(index % self.length).tobytes()
    self.seconds += time.perf_counter() - t0
    return data


class FrameNames(Sequence[str]):
  """``frame_paths`` stand-in (names only appear in error messages)."""

  def __init__(self, length: int):
    self.length = length

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index):  # type: ignore[override]
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(self.length))]
    if not -self.length <= index < self.length:
      raise IndexError(index)
    return f"procedural://frame_{index % self.length:06d}.ppm"


def procedural_video(config: Any, length: int, seed: int = 0) -> tuple[Any, ProceduralFrames]:
  """An ``EvalVideo`` at the config's test size whose frames are generated lazily."""
  from input_pipeline import eval_source
  from input_pipeline.records import VideoRecord

  frames = ProceduralFrames(length, HEIGHT, WIDTH, seed)
  record = VideoRecord(source="procedural", video_id=1, frame_paths=FrameNames(length),  # type: ignore[arg-type]
                       height=HEIGHT, width=WIDTH, frame_bytes=frames)  # type: ignore[arg-type]
  source = eval_source.EvalSource([record], config.input.min_size_test, config.input.max_size_test,
                               config.input.size_divisibility)
  return source[0], frames


# ---- models ------------------------------------------------------------------------------------


def model_config(model: str) -> tuple[Any, str]:
  """(config, where the model section came from)."""
  from configs import vita_r50_ytvis19, vita_synthetic

  if model == "synthetic":
    config, origin = vita_synthetic.get_config(), "configs/vita_synthetic.py"
  elif model == "r50":
    config = vita_r50_ytvis19.get_config()
    origin = "configs/vita_r50_ytvis19.py"
    if config.model_name != "vita" or config.model.get("vita") is None:
      from vis_jax.models import mask2former_model, vita, vita_model

      config.model_name = "vita"
      config.model = mask2former_model.default_config()  # ResNet-50, 100 queries, 256 wide
      config.model.vita = vita.default_config()  # 6 enc / 3 dec layers, 100 object queries
      config.model.inference = vita_model.default_inference_config()
      origin = ("official sizes built in the benchmark (configs/vita_r50_ytvis19.py has no "
                "model section)")
  else:
    raise ValueError(f"unknown model {model!r}; known: {sorted(DEFAULT_LENGTHS)}")
  # 360×640 frames at the YouTube-VIS test size (shorter side 360) keep their size.
  config.input.min_size_test, config.input.max_size_test = HEIGHT, 1333
  return config, origin


def model_summary(config: Any) -> dict[str, Any]:
  m = config.model
  return {"backbone": dict(m.backbone), "frame_queries": int(m.decoder.num_queries),
          "hidden_dim": int(m.decoder.hidden_dim),
          "frame_decoder_layers": int(m.decoder.dec_layers),
          "vita": {k: m.vita[k] for k in ("hidden_dim", "enc_layers", "dec_layers",
                                          "enc_window_size", "num_object_queries", "mask_dim")
                   } | {k: m.vita.get(k, 0) for k in ("kv_chunk", "enc_window_chunk")}
                   | {"peak_prior": bool(m.vita.get("peak_prior", False))},
          "inference": dict(m.inference), "num_classes": int(config.data.num_classes),
          "dtype": config.dtype,
          # Per-frame state kept across the video: the frame queries (float32).
          "object_token_bytes_per_frame": 4 * int(m.decoder.num_queries)
          * int(m.decoder.hidden_dim)}


# ---- memory meter ------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
  with open("/proc/self/status") as f:
    match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
  return int(match.group(1)) if match else 0


def _trimmed_rss_kb() -> int:
  """RSS after ``malloc_trim(0)`` (freed heap pages returned: what the process still holds)."""
  try:
    import ctypes
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass
  return _status_kb("VmRSS")


class PhaseMeter:
  """Wall time and peak RSS per phase, from ``VmHWM`` reset around each metered call."""

  def __init__(self):
    self.seconds: dict[str, float] = collections.defaultdict(float)
    self.first_call_seconds: dict[str, float] = {}
    self.calls: collections.Counter[str] = collections.Counter()
    self.peak_kb: dict[str, int] = collections.defaultdict(int)
    self.lifetime_peak_kb = 0
    try:
      with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
      self.can_reset = True
    except OSError:
      self.can_reset = False

  def checkpoint(self, phase: str) -> None:
    """Attributes the peak since the last checkpoint to ``phase``, then resets the peak."""
    hwm = _status_kb("VmHWM")
    self.peak_kb[phase] = max(self.peak_kb[phase], hwm)
    self.lifetime_peak_kb = max(self.lifetime_peak_kb, hwm)
    if self.can_reset:
      with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := current RSS

  def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    import jax

    def metered(*args: Any, **kwargs: Any) -> Any:
      self.checkpoint("host")
      t0 = time.perf_counter()
      out = jax.block_until_ready(fn(*args, **kwargs))
      seconds = time.perf_counter() - t0
      self.first_call_seconds.setdefault(name, seconds)
      self.seconds[name] += seconds
      self.calls[name] += 1
      self.checkpoint(name)
      return out

    return metered


def deep_sizeof(obj: Any, seen: set[int] | None = None) -> int:
  """Bytes of Python objects reachable through dicts, lists and tuples (shared ones once)."""
  seen = set() if seen is None else seen
  if id(obj) in seen:
    return 0
  seen.add(id(obj))
  size = sys.getsizeof(obj)
  if isinstance(obj, dict):
    size += sum(deep_sizeof(k, seen) + deep_sizeof(v, seen) for k, v in obj.items())
  elif isinstance(obj, list | tuple):
    size += sum(deep_sizeof(v, seen) for v in obj)
  return size


def reference_rle_bytes(frames: ProceduralFrames, samples: int = 20) -> float:
  """Mean JSON bytes of one compressed RLE of a real (smooth) object mask of the video: the
  per-track per-frame output size of a trained model, for comparison with random weights."""
  from pycocotools import mask as mask_util

  sizes = []
  for index in np.linspace(0, len(frames) - 1, min(samples, len(frames))).astype(int):
    image = frames.frame(int(index))
    for colour in frames._colour:  # noqa: SLF001
      mask = np.asfortranarray(np.all(image == colour, -1).astype(np.uint8))
      if mask.any():
        rle = mask_util.encode(mask)
        sizes.append(len(json.dumps({"size": rle["size"], "counts": rle["counts"].decode()})))
  return round(float(np.mean(sizes)), 1) if sizes else 0.0


# ---- one run (child process) -------------------------------------------------------------------


def _mb(kb: int) -> float:
  return round(kb / 1024, 1)


def run_one(model: str, length: int, seed: int = 0) -> dict[str, Any]:
  """One ``predict_video`` call; returns the run's record."""
  import jax
  import jax.numpy as jnp

  from vis_jax.inference import postprocess
  from vis_jax.models import registry

  meter = PhaseMeter()
  t_start = time.perf_counter()
  config, origin = model_config(model)
  bundle = registry.get_bundle(config)
  dummy = {"images": jnp.zeros((1, 2, 64, 64, 3), jnp.uint8),
           "image_valid": jnp.ones((1, 64, 64), bool)}
  params, model_state = jax.jit(bundle.init)(jax.random.key(seed), dummy)
  variables = {"params": params, **model_state}
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
  init_seconds = time.perf_counter() - t_start
  meter.checkpoint("init")

  video, frames = procedural_video(config, length, seed)
  cfg = config.model.inference
  chunk = int(cfg.chunk_size)
  keep = cfg.mask_features == "keep" or (
      cfg.mask_features == "auto" and video.length <= int(cfg.keep_max_frames))
  bucket = max(int(cfg.length_bucket), 1)
  padded_t = -(-length // bucket) * bucket

  # AOT-compile every jitted piece with the exact argument types predict_video passes; the
  # compiled executables land in JAX's cache, so the timed call below does not compile.
  fns = bundle._jitted  # noqa: SLF001  (the bundle's jitted inference pieces)
  images = np.zeros((chunk, *video.padded_size, 3), np.uint8)
  valid = np.zeros((chunk, *video.padded_size), bool)
  # The chunk's features: (VITA mask features, the detector's centre offsets or None).
  q_shape, (f_shape, o_shape), _ = jax.eval_shape(fns["frame_queries"], variables, images,
                                                  valid)
  k = min(int(cfg.top_k), int(config.model.vita.num_object_queries) * int(config.data.num_classes))
  mask_embed = jnp.zeros((k, f_shape.shape[-1]), jnp.float32)
  low = jnp.zeros((k, chunk, *f_shape.shape[1:3]), jnp.float32)
  pieces: dict[str, tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = {
      "frame_queries": (fns["frame_queries"], (variables, images, valid), {}),
      "video": (fns["video"], (variables, np.zeros((padded_t, *q_shape.shape[1:]), np.float32),
                               np.arange(padded_t) < length), {}),
      "upsample": (postprocess.upsample_chunk,
                   (low, jnp.arange(chunk) < chunk),
                   {"padded_hw": tuple(video.padded_size), "resized_hw": tuple(video.resized_size),
                    "original_hw": tuple(video.original_size)}),
  }
  features = (jnp.zeros(f_shape.shape, f_shape.dtype),
              None if o_shape is None else jnp.zeros(o_shape.shape, o_shape.dtype))
  vita_cfg = config.model.vita
  if vita_cfg.get("peak_prior", False):  # the masks streamed per chunk
    side = int(vita_cfg.get("peak_prior_template", 0))
    votes = jnp.zeros((k, 1), jnp.float32) if vita_cfg.get("peak_prior_votes", False) else None
    pieces["peak_prior_masks"] = (fns["peak_prior_masks"], (
        mask_embed, mask_embed, jnp.zeros((k, 3 + side * side), jnp.float32), votes,
        features), {})
  else:
    pieces["masks_from_features"] = (fns["masks_from_features"], (mask_embed, features), {})
  if not keep:
    pieces["mask_features"] = (fns["mask_features"], (variables, images, valid), {})
  compile_seconds, temp_mb = {}, {}
  for name, (fn, args, kwargs) in pieces.items():
    t0 = time.perf_counter()
    compiled = fn.lower(*args, **kwargs).compile()
    compile_seconds[name] = round(time.perf_counter() - t0, 2)
    stats = compiled.memory_analysis()
    if stats is not None:
      temp_mb[name] = round(stats.temp_size_in_bytes / MB, 1)
    meter.checkpoint(f"compile_{name}")
  del images, valid, mask_embed, low, features, pieces, compiled

  # Meter the pieces predict_video calls (they block, as its np.asarray calls do anyway).
  for name in ("frame_queries", "video", "mask_features", "masks_from_features",
               "peak_prior_masks"):
    fns[name] = meter.wrap(name, fns[name])
  upsample = postprocess.upsample_chunk
  postprocess.upsample_chunk = meter.wrap("upsample", upsample)

  rss_before_trim_kb = _trimmed_rss_kb()
  meter.checkpoint("before_inference")
  rss_before_kb = _status_kb("VmRSS")
  inference_phases = ("host", "frame_queries", "video", "mask_features", "masks_from_features",
                      "peak_prior_masks", "upsample")
  for phase in inference_phases:
    meter.peak_kb.pop(phase, None)
  t0 = time.perf_counter()
  predictions = bundle.predict_video(params, model_state, video)
  seconds = time.perf_counter() - t0
  meter.checkpoint("host")
  postprocess.upsample_chunk = upsample
  rss_after_kb = _status_kb("VmRSS")
  rss_after_trim_kb = _trimmed_rss_kb()

  rles = [rle for p in predictions for rle in p["segmentations"]]
  assert all(len(p["segmentations"]) == length for p in predictions)
  json_bytes = sum(len(json.dumps(p["segmentations"])) for p in predictions)
  python_bytes = deep_sizeof(predictions)
  metered = sum(meter.seconds.values())
  inference_peak = max(meter.peak_kb[p] for p in inference_phases if p in meter.peak_kb)
  return {
      "model": model, "frames": length, "height": HEIGHT, "width": WIDTH,
      "padded_size": list(video.padded_size),
      "peak_rss_mb": _mb(meter.lifetime_peak_kb),
      "inference_peak_rss_mb": _mb(inference_peak),
      "rss_before_inference_mb": _mb(rss_before_kb),
      "rss_after_inference_mb": _mb(rss_after_kb),
      "rss_after_inference_trimmed_mb": _mb(rss_after_trim_kb),
      "seconds": round(seconds, 2),
      "seconds_per_frame": round(seconds / length, 4),
      "compile_seconds": round(sum(compile_seconds.values()), 2),
      "compile_seconds_by_piece": compile_seconds,
      "init_seconds": round(init_seconds, 2),
      "mask_features": "keep" if keep else "recompute",
      "padded_length": padded_t,
      "phase_seconds": {**{k: round(v, 2) for k, v in meter.seconds.items()},
                        "host": round(seconds - metered, 2),
                        "frame_generation": round(frames.seconds, 2)},
      "phase_calls": dict(meter.calls),
      "first_call_seconds": {k: round(v, 3) for k, v in meter.first_call_seconds.items()},
      "phase_peak_rss_mb": {k: _mb(v) for k, v in meter.peak_kb.items()},
      "xla_temp_mb": temp_mb,
      "output": {
          "tracks": len(predictions), "rles": len(rles),
          "json_bytes_per_frame": round(json_bytes / length, 1),
          "python_bytes_per_frame": round(python_bytes / length, 1),
          "mean_counts_chars": round(float(np.mean([len(r["counts"]) for r in rles])), 1)
          if rles else 0.0,
          "retained_rss_mb_per_frame": round((rss_after_kb - rss_before_kb) / 1024 / length, 4),
          "retained_rss_trimmed_mb_per_frame": round(
              (rss_after_trim_kb - rss_before_trim_kb) / 1024 / length, 4),
          "reference_object_rle_json_bytes": reference_rle_bytes(frames),
      },
      "num_params": num_params,
      "model_config_origin": origin,
      "model_config": model_summary(config),
      "vmhwm_reset": meter.can_reset,
  }


# ---- driver ------------------------------------------------------------------------------------


def run_child(model: str, length: int, timeout: float | None) -> dict[str, Any]:
  """``run_one`` in a fresh interpreter (per-run peak RSS)."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "run.json")
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "benchmarks.vita_long_video", "--child", f"{model}:{length}",
           "--child-output", out]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, timeout=timeout, check=False)
    if proc.returncode != 0:
      raise RuntimeError(f"{model} × {length} frames failed (exit {proc.returncode})")
    with open(out) as f:
      run = json.load(f)
    run["process_seconds"] = round(time.perf_counter() - t0, 1)
    return run


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Per model: peak-RSS growth per frame between its shortest and longest run."""
  by_model: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
  for run in runs:
    by_model[run["model"]].append(run)
  out = {}
  for model, rs in sorted(by_model.items()):
    rs = sorted(rs, key=lambda r: r["frames"])
    lo, hi = rs[0], rs[-1]
    entry: dict[str, Any] = {"frames": [r["frames"] for r in rs],
                             "seconds_per_frame": [r["seconds_per_frame"] for r in rs],
                             "peak_rss_mb": [r["peak_rss_mb"] for r in rs],
                             "output_json_bytes_per_frame": hi["output"]["json_bytes_per_frame"],
                             "output_python_bytes_per_frame":
                                 hi["output"]["python_bytes_per_frame"]}
    if hi["frames"] > lo["frames"]:
      span = hi["frames"] - lo["frames"]

      def slope(get: Callable[[dict[str, Any]], float], lo=lo, hi=hi, span=span) -> float:
        return round((get(hi) - get(lo)) / span, 4)

      growth = slope(lambda r: r["peak_rss_mb"])
      entry["growth_between_frames"] = [lo["frames"], hi["frames"]]
      entry["growth_mb_per_frame"] = growth
      entry["growth_ok"] = growth <= GROWTH_LIMIT_MB_PER_FRAME
      entry["inference_growth_mb_per_frame"] = slope(lambda r: r["inference_peak_rss_mb"])
      entry["phase_growth_mb_per_frame"] = {
          phase: slope(lambda r, phase=phase: r["phase_peak_rss_mb"][phase])
          for phase in ("frame_queries", "video", "mask_features", "masks_from_features",
                        "peak_prior_masks", "upsample", "host")
          if phase in lo["phase_peak_rss_mb"] and phase in hi["phase_peak_rss_mb"]}
      if "video" in lo["xla_temp_mb"] and "video" in hi["xla_temp_mb"]:
        entry["vita_xla_temp_mb_per_frame"] = slope(lambda r: r["xla_temp_mb"]["video"])
    out[model] = entry
  return out


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(x) for x in text.split(",") if x)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="synthetic,r50")
  parser.add_argument("--lengths", type=_ints, default=None,
                      help="comma-separated frame counts for every selected model "
                           f"(default: {DEFAULT_LENGTHS})")
  parser.add_argument("--quick", action="store_true", help=f"lengths {QUICK_LENGTHS}")
  parser.add_argument("--max-minutes", type=float, default=None,
                      help="skip a run whose projected time (from a shorter run of the same "
                           "model) exceeds this; it is recorded under 'skipped'")
  parser.add_argument("--timeout-minutes", type=float, default=None)
  parser.add_argument("--output",
                      default=os.path.join(REPO, "benchmarks", "results", "vita_long_video.json"))
  parser.add_argument("--no-merge", action="store_true",
                      help="drop the runs already in --output instead of keeping them")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--child-output", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  if args.child:
    model, length = args.child.split(":")
    run = run_one(model, int(length))
    with open(args.child_output, "w") as f:
      json.dump(run, f, indent=2)
    return 0

  import jax

  models = [m for m in args.models.split(",") if m]
  for model in models:
    if model not in DEFAULT_LENGTHS:
      parser.error(f"unknown model {model!r}; known: {sorted(DEFAULT_LENGTHS)}")
  report: dict[str, Any] = {"runs": [], "skipped": []}
  if not args.no_merge and os.path.exists(args.output):
    with open(args.output) as f:
      report = json.load(f)
  runs: list[dict[str, Any]] = report.get("runs", [])
  skipped: list[dict[str, Any]] = report.get("skipped", [])

  def plan(model: str) -> Iterator[int]:
    if args.lengths:
      yield from sorted(args.lengths)
    else:
      yield from (QUICK_LENGTHS if args.quick else DEFAULT_LENGTHS)[model]

  timeout = None if args.timeout_minutes is None else 60 * args.timeout_minutes
  for model in models:
    for length in plan(model):
      shorter = [r for r in runs if r["model"] == model and r["frames"] < length]
      projected = None
      if shorter:
        ref = max(shorter, key=lambda r: r["frames"])
        projected = ref["seconds_per_frame"] * length + ref["compile_seconds"] + ref["init_seconds"]
        print(f"{model} × {length}: projected {projected / 60:.1f} min "
              f"(from {ref['frames']} frames)", flush=True)
      runs = [r for r in runs if (r["model"], r["frames"]) != (model, length)]
      skipped = [s for s in skipped if (s["model"], s["frames"]) != (model, length)]
      if projected is not None and args.max_minutes and projected > 60 * args.max_minutes:
        skipped.append({"model": model, "frames": length,
                        "projected_minutes": round(projected / 60, 1),
                        "command": f".venv/bin/python -m benchmarks.vita_long_video --models "
                                   f"{model} --lengths {length}"})
        print(f"  skipped (> {args.max_minutes} min)", flush=True)
        continue
      run = run_child(model, length, timeout)
      run["date"] = datetime.datetime.now().isoformat(timespec="seconds")
      run["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
      runs.append(run)
      print(json.dumps({k: run[k] for k in ("model", "frames", "peak_rss_mb",
                                            "inference_peak_rss_mb", "seconds",
                                            "seconds_per_frame", "compile_seconds")}),
            flush=True)
      report.update(runs=runs, skipped=skipped, models=summarise(runs))
      report["host"] = {"cpu_count": os.cpu_count(), "machine": platform.machine(),
                        "python": platform.python_version(), "jax": jax.__version__,
                        "jax_backend": jax.default_backend()}
      os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
      with open(args.output, "w") as f:  # after every run: a long sweep keeps what it measured
        json.dump(report, f, indent=2)
  report.update(runs=runs, skipped=skipped, models=summarise(runs))
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(report, f, indent=2)
  print(json.dumps(report["models"], indent=2))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
