"""Per-frame forward time: our jitted Mask2Former vs Hugging Face's PyTorch model, same weights.

For each backbone (ResNet-50, Swin-T; official head sizes: 256-wide pixel decoder with 6
encoder layers, 9 decoder layers, 100 queries, 80 classes) a randomly initialised HF
``Mask2FormerForUniversalSegmentation`` is converted with ``vis_jax.convert`` (the
``hf_mask2former`` converter, in memory) and both models run on the same ``H×W`` frame(s): ours
takes uint8 pixels (normalisation + padding inside the jitted function), HF the normalised
float tensor. After warm-up (compilation for ours) the two are timed alternately, so machine
load affects both alike; the median of ``--repeats`` is reported, with the ratio ours / HF.

As a check that both ran the same net, the largest relative differences of the mask logits are
reported for the initial queries (backbone + pixel decoder + first heads: fp32 noise, ~1e-6) and
for the last layer. The latter can be much larger with HF's default initialisation: many mask
logits sit within 1e-7 of 0, where masked attention thresholds sigmoid at 0.5, so fp32-level
differences flip single attention-mask entries and later layers diverge legitimately.

HF's Mask2Former officially supports only Swin backbones; a ResNet ``backbone_config`` is
accepted with a warning and builds the detectron2 layout (``downsample_in_first_stage=False``).

  .venv/bin/python -m benchmarks.mask2former [--output benchmarks/results/mask2former.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import mask2former_r50_coco
from vis_jax import convert
from vis_jax.models.backbones import PIXEL_MEAN, PIXEL_STD
from vis_jax.models.mask2former_model import Mask2FormerModel

NUM_CLASSES = 80
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def hf_backbone_config(name: str):
  import transformers
  if name == "resnet50":
    return transformers.ResNetConfig(layer_type="bottleneck", embedding_size=64,
                                     hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3],
                                     downsample_in_first_stage=False, out_features=STAGES)
  if name == "swin_tiny":
    return transformers.SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                                   window_size=7, drop_path_rate=0.0, out_features=STAGES)
  raise ValueError(name)


def build_pair(backbone: str, seed: int = 0):
  """(HF model, our module, our variables) with identical weights."""
  import torch
  import transformers
  torch.manual_seed(seed)
  hf = transformers.Mask2FormerForUniversalSegmentation(transformers.Mask2FormerConfig(
      backbone_config=hf_backbone_config(backbone), num_labels=NUM_CLASSES)).eval()
  config = mask2former_r50_coco.get_config()
  config.model.backbone = type(config.model.backbone)(dict(name=backbone))
  state_dict = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  abstract_params, abstract_state = convert.abstract_variables(config)
  conversion = convert.CONVERTERS["hf_mask2former"](state_dict, abstract_params, abstract_state,
                                                    config)
  report = conversion.report
  if report.missing or report.unexpected or report.mismatched:
    raise RuntimeError("conversion incomplete:\n" + "\n".join(report.lines()))
  module = Mask2FormerModel.from_config(config.model, NUM_CLASSES, config.dtype)
  variables = {"params": conversion.params, **conversion.model_state}
  return hf, module, jax.device_put(variables)


def time_pair(hf, module, variables, images: np.ndarray, warmup: int, repeats: int) -> dict:
  import torch

  @jax.jit
  def ours(v, x):
    out = module.apply(v, x)
    # The initial-query masks are computed anyway (they gate layer 1's attention).
    return out["pred_logits"], out["pred_masks"], out["aux_outputs"][0]["pred_masks"]

  pixels = torch.from_numpy(((images.astype(np.float32) - np.float32(PIXEL_MEAN))
                             / np.float32(PIXEL_STD)).transpose(0, 3, 1, 2).copy())
  x = jnp.asarray(images)

  def run_ours():
    return jax.block_until_ready(ours(variables, x))

  def run_hf():
    with torch.inference_mode():
      return hf(pixel_values=pixels)

  t0 = time.perf_counter()
  ours_out = run_ours()
  compile_s = time.perf_counter() - t0
  with torch.inference_mode():
    ref = hf(pixel_values=pixels, output_auxiliary_logits=True)
  for _ in range(warmup):
    run_ours()
    run_hf()
  t_ours, t_hf = [], []
  for _ in range(repeats):
    for fn, times in ((run_ours, t_ours), (run_hf, t_hf)):
      t0 = time.perf_counter()
      fn()
      times.append(time.perf_counter() - t0)
  n = images.shape[0]

  def rel(a, b):
    a, b = np.asarray(a, np.float64), b.numpy().astype(np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())

  ours_ms = 1e3 * statistics.median(t_ours) / n
  hf_ms = 1e3 * statistics.median(t_hf) / n
  return {"ours_ms_per_frame": round(ours_ms, 2), "hf_ms_per_frame": round(hf_ms, 2),
          "ratio_ours_over_hf": round(ours_ms / hf_ms, 3),
          "ours_first_call_s": round(compile_s, 2),
          "ours_ms_all": [round(1e3 * t / n, 1) for t in t_ours],
          "hf_ms_all": [round(1e3 * t / n, 1) for t in t_hf],
          "initial_query_mask_logits_max_rel_diff": rel(
              ours_out[2], ref.auxiliary_logits[0]["masks_queries_logits"]),
          "final_mask_logits_max_rel_diff": rel(ours_out[1], ref.masks_queries_logits)}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--output",
                      default=os.path.join("benchmarks", "results", "mask2former.json"))
  parser.add_argument("--height", type=int, default=384)
  parser.add_argument("--width", type=int, default=640)
  parser.add_argument("--frames", type=int, default=1, help="frames per forward call")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--backbones", default="resnet50,swin_tiny")
  args = parser.parse_args(argv)

  import torch
  images = np.random.default_rng(0).integers(0, 256, (args.frames, args.height, args.width, 3),
                                             dtype=np.uint8)
  report = {"input": [args.frames, args.height, args.width], "warmup": args.warmup,
            "repeats": args.repeats, "jax_backend": jax.default_backend(),
            "jax_devices": len(jax.devices()), "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "jax": jax.__version__, "torch": torch.__version__, "cases": {}}
  for name in args.backbones.split(","):
    hf, module, variables = build_pair(name)
    report["cases"][name] = time_pair(hf, module, variables, images, args.warmup, args.repeats)
    print(name, json.dumps(report["cases"][name]), flush=True)
    del hf, module, variables
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(report, f, indent=2)
  print(json.dumps({k: v for k, v in report.items() if k != "cases"}))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
