"""VITA, ResNet-50, YouTube-VIS 2019 (+ COCO pseudo-videos), the official recipe.

Variants: ``configs/vita_r50_ytvis19.py:smoke`` (tiny sizes, 10 steps) and ``:no_coco``.
"""

from configs import common, datasets


def get_config(arg: str | None = None) -> common.ConfigDict:
  args = common.parse_arg(arg, smoke=False, no_coco=False)
  c = common.base_config()
  datasets.apply(c, "ytvis19", with_coco=not args.no_coco)
  if args.smoke:
    common.apply_smoke(c)
  return c
