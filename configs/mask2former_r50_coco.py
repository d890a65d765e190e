"""Mask2Former, ResNet-50, COCO instance segmentation: the image pretraining of the VIS models.

Official recipe (spec §1.5): 100 queries, 9 decoder layers, batch 16, AdamW lr 1e-4 (backbone
×0.1), weight decay 0.05, full-model clipping 0.01, 368,750 steps with ×0.1 at 327,778 and
355,092, no warmup (10 steps at factor 1.0), 12,544 points.

Deviation: the official large-scale-jitter augmentation (LSJ: scale 0.1–2.0 of 1024, fixed
1024×1024 crop) is not implemented yet. This config uses the existing clip pipeline with ``T = 1``:
shorter side uniform in 480..800 (step 32), longer side ≤ 1024, random flip, no crop or
pseudo-video rotation, padded into one 1024×1024 bucket (LSJ's canvas, one compilation).

Data: ``$VIS_JAX_DATA/coco/annotations/instances_train2017.json`` and ``coco/train2017``; the
json's own 80 categories (sorted-id order, ``category_map=""``). Image models have no video
evaluation, so only ``--mode=train`` applies. Variant: ``:smoke`` (tiny sizes, 10 steps).
"""

import os

from configs import common, datasets
from vis_jax.models import mask2former_model


def get_config(arg: str | None = None) -> common.ConfigDict:
  args = common.parse_arg(arg, smoke=False)
  c = common.base_config()
  c.model_name = "mask2former"
  c.model = mask2former_model.default_config()
  c.model.backbone.name = "resnet50"

  c.data.num_classes = 80
  c.data.sources.coco = common.source(
      "coco", os.path.join(datasets.data_root(), "coco/annotations/instances_train2017.json"),
      os.path.join(datasets.data_root(), "coco/train2017"), ratio=1.0, category_map="")

  sizes = tuple(range(480, 801, 32))
  c.input.num_frames = 1
  c.input.sampling_frame_range = 0
  c.input.min_size_train = sizes
  c.input.max_size_train = 1024
  c.input.crop.enabled = False
  c.input.pseudo.min_size_train = sizes
  c.input.pseudo.max_size_train = 1024
  c.input.pseudo.rotation_degrees = 0.0
  c.input.size_buckets = ((1024, 1024),)
  c.input.max_instances = 100   # = queries: more targets than queries could not all be matched

  c.batch_size = 16
  c.num_train_steps = 368_750
  c.optim.learning_rate = 1e-4
  c.optim.decay_steps = (327_778, 355_092)
  c.checkpoint_every_steps = 5000
  if args.smoke:
    common.apply_smoke(c)
    c.input.num_frames = 1
    c.input.pseudo.min_size_train = c.input.min_size_train
    c.input.pseudo.max_size_train = c.input.max_size_train
    c.loss.num_points = 1024
  return c
