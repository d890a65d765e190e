"""VITA on the synthetic YouTube-VIS-format dataset: the project's default run on a CPU.

The dataset is generated on first use under ``config.data.synthetic.root``. Sizes are small so
that a run finishes in minutes on two CPU cores. Variant: ``configs/vita_synthetic.py:smoke``.
"""

from configs import common, datasets


def get_config(arg: str | None = None) -> common.ConfigDict:
  args = common.parse_arg(arg, smoke=False)
  c = common.base_config()
  datasets.apply(c, "synthetic")
  c.batch_size = 8
  c.input.num_frames = 4
  c.input.sampling_frame_range = 6
  c.input.min_size_train = (128, 144, 160)
  c.input.max_size_train = 288
  c.input.crop = common.ConfigDict(dict(
      enabled=True, prob=0.5, resize_min_sizes=(192, 224, 240), resize_max_size=432,
      min_size=128, max_size=192, moving=True))
  c.input.size_buckets = ((160, 288), (288, 160))
  c.input.max_instances = 8
  c.input.min_size_test = 160
  c.input.max_size_test = 288
  c.input.pseudo.min_size_train = (128, 144, 160)
  c.input.pseudo.max_size_train = 288
  if args.smoke:
    common.apply_smoke(c)
  return c
