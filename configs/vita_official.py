"""The official VITA recipes (spec §3.7), shared by the ``vita_{r50,swinl}_*`` configs.

Frame detector: Mask2Former as in COCO (ResNet-50 with 100 queries, Swin-L with 200; 9 decoder
layers); VITA: 6 encoder / 3 decoder layers (the paper's text says 3 / 6: variant ``:paper``),
window W = 6, 100 object queries, λ_v = λ_f = 1, λ_sim = 0.5, L = 3 frame layers. Solver: batch
8 clips, AdamW lr 5e-5 (backbone ×0.1), weight decay 0.05, full-model clipping 0.01;
YTVIS19 140k steps (×0.1 at 75k), YTVIS21 187.5k (100k), OVIS 150k (50k, 125k). Test shorter
side 360 (R50) / 448 (Swin-L); top 10 detections per video, 20 for OVIS. Clips and data mixing
(T / range, COCO pseudo-videos) come from ``configs/datasets.py``.

Initialisation: the official runs start from the whole VITA pretrained on COCO
(``vita_r50_coco.pth``, ``configs/vita_r50_coco.py``); convert official VITA checkpoints with
``python -m vis_jax.convert --from vita --input vita_r50_coco.pth --config CONFIG --output DIR
--allow-mismatched`` (the COCO class head does not fit) and pass ``--config.init_from=DIR``.
"""

from __future__ import annotations

from configs import common, datasets

_SOLVER = {"ytvis19": (140_000, (75_000,)), "ytvis21": (187_500, (100_000,)),
           "ovis": (150_000, (50_000, 125_000))}


def variant_args(arg: str | None) -> common.ConfigDict:
  """``smoke`` (tiny inputs, 10 steps; the model stays full size), ``no_coco``, ``paper``."""
  return common.parse_arg(arg, smoke=False, no_coco=False, paper=False)


def official(dataset: str, args: common.ConfigDict, backbone: str = "resnet50",
             num_queries: int = 100, min_size_test: int = 360) -> common.ConfigDict:
  """The official VITA recipe for ``dataset`` (``ytvis19``, ``ytvis21``, ``ovis`` or ``coco``)."""
  from vis_jax.models import mask2former_model, vita, vita_model  # local: light import

  c = common.base_config()
  if dataset != "coco":
    datasets.apply(c, dataset, with_coco=not args.no_coco)
  c.model_name = "vita"
  c.model = mask2former_model.default_config()
  c.model.backbone.name = backbone
  c.model.decoder.num_queries = num_queries
  c.model.vita = (vita.default_config(enc_layers=3, dec_layers=6) if args.paper
                  else vita.default_config())
  c.model.inference = vita_model.default_inference_config()
  c.model.inference.top_k = 20 if dataset == "ovis" else 10
  c.input.min_size_test = min_size_test
  if dataset in _SOLVER:
    c.num_train_steps, c.optim.decay_steps = _SOLVER[dataset]
  if args.smoke:
    common.apply_smoke(c)
    # COCO pseudo-videos at the smoke sizes too (else resized to 288–512, then shrunk to fit).
    c.input.pseudo.min_size_train = c.input.min_size_train
    c.input.pseudo.max_size_train = c.input.max_size_train
  return c
