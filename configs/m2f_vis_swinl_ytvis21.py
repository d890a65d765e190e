"""Mask2Former-VIS, Swin-L (IN-21k, 384), YouTube-VIS 2021: the official recipe (spec §2.2).

As ``m2f_vis_swinl_ytvis19.py`` but 8,000 steps (×0.1 at 5,500) and test shorter side 360 (the
official config keeps 360 for YTVIS-2021: 480 ran out of memory). Variant: ``:smoke``.
"""

from configs import common
from configs.m2f_vis_r50_ytvis19 import official


def get_config(arg: str | None = None) -> common.ConfigDict:
  args = common.parse_arg(arg, smoke=False)
  return official("ytvis21", backbone="swin_large", num_queries=200, min_size_test=360,
                  smoke=args.smoke)
