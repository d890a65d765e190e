"""The trainer's stand-in model (a tiny per-pixel classifier) on the synthetic dataset.

Exercises the whole training system — sharding, multi-host, checkpoints, resume — in seconds
per step on a CPU. Variant: ``:smoke``.
"""

from configs import common, datasets


def get_config(arg: str | None = None) -> common.ConfigDict:
  args = common.parse_arg(arg, smoke=False)
  c = common.base_config()
  datasets.apply(c, "synthetic")
  c.model_name = "pixel_baseline"
  c.model = common.ConfigDict(dict(width=16))
  c.optim.learning_rate = 1e-3
  c.optim.clip_grad_norm = 1.0
  c.optim.decay_steps = ()
  c.num_train_steps = 200
  c.checkpoint_every_steps = 50
  c.input.min_size_train = (96,)
  c.input.max_size_train = 160
  c.input.crop.enabled = False
  c.input.size_buckets = ((96, 160), (160, 96), (160, 160))
  c.input.num_frames = 2
  if args.smoke:
    common.apply_smoke(c)
  return c
