"""ResNet stem convolution: XLA's native convolution vs the im2col patch matmul, side by side.

``vis_jax.models.backbones.resnet.conv2d`` runs convolutions over inputs with at most
``IM2COL_MAX_CHANNELS`` channels (the RGB stem's 7×7/2 conv) as one patch matrix times the
reshaped kernel. This benchmark times the whole backbone both ways in one process, alternating
the two so machine load affects both alike (median of ``--repeats``): the forward pass and the
forward + gradient w.r.t. the parameters (what a training step does), for the synthetic
recipe's small detector backbone at its training batch (8 frames) and VITA's frozen-detector batch
(4 clips × 5 frames = 20 frames), and for the official ResNet-50 at one 384×640 frame. The
outputs of the two paths are also compared (max relative difference, fp32 noise expected).

  .venv/bin/python -m benchmarks.stem_conv [--output benchmarks/results/stem_conv.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from configs import small_detector
from vis_jax.models import backbones
from vis_jax.models.backbones import resnet

OFFICIAL_R50 = dict(name="resnet50")


def _timed(fn: Callable[[], object]) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def _with_path(max_channels: int, fn: Callable[..., object]) -> Callable[..., object]:
  """``fn`` jitted while ``IM2COL_MAX_CHANNELS`` = ``max_channels`` (read at trace time)."""
  # A fresh function object: jit caches traces per function, and each path needs its own.
  jitted = jax.jit(lambda *args: fn(*args))

  def run(*args):
    saved = resnet.IM2COL_MAX_CHANNELS
    resnet.IM2COL_MAX_CHANNELS = max_channels
    try:
      return jitted(*args)
    finally:
      resnet.IM2COL_MAX_CHANNELS = saved
  return run


def time_case(backbone_cfg: dict, shape: tuple[int, ...], repeats: int) -> dict:
  module = backbones.build_backbone(backbone_cfg)
  images = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  variables = module.init(jax.random.key(0), images[:1])
  params = variables["params"]
  rest = {k: v for k, v in variables.items() if k != "params"}

  def forward(p, x):
    return module.apply({"params": p, **rest}, x)

  def grad(p, x):
    return jax.grad(lambda q: sum(jnp.mean(f ** 2) for f in forward(q, x).values()))(p)

  paths = {"native": 0, "im2col": resnet.IM2COL_MAX_CHANNELS}
  fns = {(path, kind): _with_path(limit, fn) for path, limit in paths.items()
         for kind, fn in (("forward", forward), ("forward_and_grad", grad))}
  for fn in fns.values():  # compile + warm up
    jax.block_until_ready(fn(params, images))
  times: dict[tuple[str, str], list[float]] = {key: [] for key in fns}
  for _ in range(repeats):
    for key, fn in fns.items():
      times[key].append(_timed(lambda fn=fn: fn(params, images)))
  outputs = {path: fns[(path, "forward")](params, images) for path in paths}
  rel = max(float(jnp.max(jnp.abs(outputs["im2col"][k] - outputs["native"][k]))
                  / jnp.max(jnp.abs(outputs["native"][k]))) for k in outputs["native"])
  result: dict = {"input": list(shape), "max_rel_diff": rel}
  for kind in ("forward", "forward_and_grad"):
    native = statistics.median(times[("native", kind)])
    im2col = statistics.median(times[("im2col", kind)])
    result[kind] = {"native_ms": round(1e3 * native, 2), "im2col_ms": round(1e3 * im2col, 2),
                    "speedup": round(native / im2col, 3)}
  return result


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--output", default=os.path.join("benchmarks", "results",
                                                       "stem_conv.json"))
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args(argv)
  small = dict(small_detector.small_detector_config(1, 3).backbone)
  cases = {
      "small_detector_train_8x160x160": (small, (8, 160, 160, 3)),
      "small_detector_vita_20x160x160": (small, (20, 160, 160, 3)),
      "resnet50_1x384x640": (OFFICIAL_R50, (1, 384, 640, 3)),
  }
  report = {"repeats": args.repeats, "jax_backend": jax.default_backend(),
            "cpu_count": os.cpu_count(), "machine": platform.machine(), "jax": jax.__version__,
            "cases": {}}
  for name, (cfg, shape) in cases.items():
    report["cases"][name] = time_case(cfg, shape, args.repeats)
    print(name, json.dumps(report["cases"][name]), flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(report, f, indent=2)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
