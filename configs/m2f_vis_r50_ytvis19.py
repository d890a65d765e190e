"""Mask2Former-VIS, ResNet-50, YouTube-VIS 2019: the official recipe (spec §2.2).

Architecture as COCO Mask2Former (100 queries, 9 decoder layers) with the 3-D video decoder;
clips of T = 2 frames within a range of 20, shorter side 360 or 480 per clip (longer ≤ 1333),
clip-level flip, no crop; batch 16, AdamW lr 1e-4 (backbone ×0.1), weight decay 0.05, full-model
clipping 0.01, 6,000 steps with ×0.1 at 4,000, no warmup; test shorter side 360; whole-video
inference, top-10, score = class probability. YouTube-VIS training data only (no COCO).

Initialisation: the official runs start from the COCO instance model (``model_final_3c8ec9.pkl``
for R50); without it accuracy drops by ~20 AP (facebookresearch/Mask2Former#24)::

  python -m vis_jax.convert --from detectron2 --input model_final_3c8ec9.pkl \\
      --config configs/m2f_vis_r50_ytvis19.py --output init/m2f_r50_coco --allow-mismatched
  python -m vis_jax.main --config configs/m2f_vis_r50_ytvis19.py --workdir runs/m2f_vis \\
      --config.init_from=init/m2f_r50_coco

(``--allow-mismatched``: the COCO model's 81-way class head does not fit 40 classes and keeps
its initialisation.) Official M2F-VIS checkpoints (same key names) convert with no flag.

``official(...)`` is shared by the other ``m2f_vis_*`` configs. Variant: ``:smoke``.
"""

from configs import common, datasets

# Padded (H, W) training sizes: shorter side 360 / 480 of 16:9 and 4:3 frames, plus the
# extreme 480 × 1333 the resize rule allows (landscape and portrait).
SIZE_BUCKETS = ((384, 704), (480, 864), (480, 1344), (704, 384), (864, 480), (1344, 480))


def official(dataset: str, backbone: str = "resnet50", num_queries: int = 100,
             min_size_test: int = 360, smoke: bool = False) -> common.ConfigDict:
  """The official Mask2Former-VIS recipe for ``dataset`` (``ytvis19`` or ``ytvis21``)."""
  from vis_jax.models import mask2former_model, mask2former_vis_model  # local: light import

  c = common.base_config()
  datasets.apply(c, dataset, with_coco=False)
  c.model_name = "mask2former_vis"
  c.model = mask2former_model.default_config()
  c.model.backbone.name = backbone
  c.model.decoder.num_queries = num_queries
  c.model.inference = mask2former_vis_model.default_inference_config()
  # False: the track's class for every present instance; True: the official last-frame quirk
  # (absent in the last frame → no-object). See vis_jax/models/mask2former_vis_model.py.
  c.loss.label_from_last_frame = False

  c.input.num_frames = 2
  c.input.sampling_frame_range = 20
  c.input.min_size_train = (360, 480)
  c.input.max_size_train = 1333
  c.input.crop.enabled = False
  c.input.size_buckets = SIZE_BUCKETS
  c.input.pseudo.min_size_train = c.input.min_size_train
  c.input.pseudo.max_size_train = c.input.max_size_train
  c.input.min_size_test = min_size_test
  c.input.max_size_test = 1333

  c.batch_size = 16
  c.optim.learning_rate = 1e-4
  c.optim.clip_grad_norm = 0.01
  if dataset == "ytvis21":
    c.num_train_steps, c.optim.decay_steps = 8000, (5500,)
  else:
    c.num_train_steps, c.optim.decay_steps = 6000, (4000,)
  c.optim.warmup_steps, c.optim.warmup_factor = 10, 1.0  # i.e. none
  if smoke:
    common.apply_smoke(c)
    c.input.pseudo.min_size_train = c.input.min_size_train
    c.input.pseudo.max_size_train = c.input.max_size_train
    c.loss.num_points = 1024
  return c


def get_config(arg: str | None = None) -> common.ConfigDict:
  args = common.parse_arg(arg, smoke=False)
  return official("ytvis19", smoke=args.smoke)
