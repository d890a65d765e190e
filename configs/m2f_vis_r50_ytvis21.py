"""Mask2Former-VIS, ResNet-50, YouTube-VIS 2021: the official recipe (spec §2.2).

As ``m2f_vis_r50_ytvis19.py`` (see it for the COCO initialisation) with 8,000 steps and the ×0.1
step at 5,500. Variant: ``:smoke``.
"""

from configs import common
from configs.m2f_vis_r50_ytvis19 import official


def get_config(arg: str | None = None) -> common.ConfigDict:
  args = common.parse_arg(arg, smoke=False)
  return official("ytvis21", smoke=args.smoke)
