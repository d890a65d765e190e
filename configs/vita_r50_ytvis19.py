"""VITA, ResNet-50, YouTube-VIS 2019 (+ COCO pseudo-videos):
the official recipe (``configs/vita_official.py``).

Variants: ``:smoke`` (tiny inputs, 10 steps), ``:no_coco`` (video data only), ``:paper``
(3 encoder / 6 decoder layers as the paper states; the official code uses 6 / 3).
"""

from configs import common, vita_official


def get_config(arg: str | None = None) -> common.ConfigDict:
  return vita_official.official("ytvis19", vita_official.variant_args(arg))
