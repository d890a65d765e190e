"""Mask2Former-VIS, Swin-L (IN-21k, 384), YouTube-VIS 2019: the official recipe (spec §2.2).

As ``m2f_vis_r50_ytvis19.py`` with the Swin-L backbone (window 12, drop path 0.3), 200 queries
and test shorter side 480; initialise from the COCO model ``model_final_e5f453.pkl`` (see the R50
config for the convert command). Variant: ``:smoke`` (config checks only: still Swin-L).
"""

from configs import common
from configs.m2f_vis_r50_ytvis19 import official


def get_config(arg: str | None = None) -> common.ConfigDict:
  args = common.parse_arg(arg, smoke=False)
  return official("ytvis19", backbone="swin_large", num_queries=200, min_size_test=480,
                  smoke=args.smoke)
