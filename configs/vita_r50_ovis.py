"""VITA, ResNet-50, OVIS (+ COCO pseudo-videos), the official recipe.

Variants: ``configs/vita_r50_ovis.py:smoke`` (tiny sizes, 10 steps) and ``:no_coco``.
"""

from configs import common, datasets


def get_config(arg: str | None = None) -> common.ConfigDict:
  args = common.parse_arg(arg, smoke=False, no_coco=False)
  c = common.base_config()
  datasets.apply(c, "ovis", with_coco=not args.no_coco)
  if args.smoke:
    common.apply_smoke(c)
  return c
