"""VITA, Swin-L (IN-21k, 384), YouTube-VIS 2019 (+ COCO pseudo-videos): the official recipe
(``configs/vita_official.py``) with 200 frame queries and test shorter side 448.

Variants: ``:smoke`` (config checks only: still Swin-L), ``:no_coco``, ``:paper``.
"""

from configs import common, vita_official


def get_config(arg: str | None = None) -> common.ConfigDict:
  return vita_official.official("ytvis19", vita_official.variant_args(arg), backbone="swin_large",
                                num_queries=200, min_size_test=448)
