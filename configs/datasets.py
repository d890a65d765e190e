"""Dataset presets: sources, class count, clip sampling and test settings per benchmark.

Paths are relative to ``$VIS_JAX_DATA`` (default ``datasets/``) laid out as the official repos
expect::

  datasets/ytvis_2019/{train,valid}.json  datasets/ytvis_2019/{train,valid}/JPEGImages/
  datasets/ytvis_2021/{train,valid}.json  datasets/ytvis_2021/{train,valid}/JPEGImages/
  datasets/ovis/annotations_{train,valid}.json  datasets/ovis/{train,valid}/
  datasets/coco/annotations/instances_train2017.json  datasets/coco/train2017/

Mixing ratios, T and R follow the official VITA configs (spec §3.6-3.7): COCO pseudo-videos are
the majority source; set ``--config.data.sources.coco.ratio=0`` to train on video data only.
"""

from __future__ import annotations

import os

from configs.common import ConfigDict, source, synthetic_source_paths

_COCO_JSON = "coco/annotations/instances_train2017.json"
_COCO_IMAGES = "coco/train2017"


def data_root() -> str:
  return os.environ.get("VIS_JAX_DATA", "datasets")


def _path(*parts: str) -> str:
  return os.path.join(data_root(), *parts)


def _coco(ratio: float, category_map: str) -> ConfigDict:
  return source("coco", _path(_COCO_JSON), _path(_COCO_IMAGES), ratio=ratio,
                category_map=category_map)


def apply(c: ConfigDict, name: str, with_coco: bool = True) -> ConfigDict:
  """Fills ``c.data`` and the dataset-specific ``c.input`` keys for benchmark ``name``."""
  if name == "ytvis19":
    c.data.num_classes = 40
    c.data.sources.ytvis19 = source("ytvis", _path("ytvis_2019/train.json"),
                                    _path("ytvis_2019/train/JPEGImages"), ratio=0.75)
    if with_coco:
      c.data.sources.coco = _coco(1.0, "coco_to_ytvis19")
    c.data.eval = source("ytvis", _path("ytvis_2019/valid.json"),
                         _path("ytvis_2019/valid/JPEGImages"))
    c.input.num_frames, c.input.sampling_frame_range = 5, 20
  elif name == "ytvis21":
    c.data.num_classes = 40
    c.data.sources.ytvis21 = source("ytvis", _path("ytvis_2021/train.json"),
                                    _path("ytvis_2021/train/JPEGImages"), ratio=0.8)
    if with_coco:
      c.data.sources.coco = _coco(1.0, "coco_to_ytvis21")
    c.data.eval = source("ytvis", _path("ytvis_2021/valid.json"),
                         _path("ytvis_2021/valid/JPEGImages"))
    c.input.num_frames, c.input.sampling_frame_range = 6, 8
  elif name == "ovis":
    c.data.num_classes = 25
    c.data.sources.ovis = source("ovis", _path("ovis/annotations_train.json"),
                                 _path("ovis/train"), ratio=0.25)
    if with_coco:
      c.data.sources.coco = _coco(1.0, "coco_to_ovis")
    c.data.eval = source("ovis", _path("ovis/annotations_valid.json"), _path("ovis/valid"))
    c.input.num_frames, c.input.sampling_frame_range = 6, 8
  elif name == "synthetic":
    from input_pipeline import synthetic  # local: keeps config import light for real data

    c.data.num_classes = len(synthetic.CATEGORIES)
    c.data.sources.synthetic = source("synthetic", *synthetic_source_paths("train"))
    c.data.eval = source("synthetic", *synthetic_source_paths("valid"))
  else:
    raise ValueError(f"unknown dataset preset {name!r}; known: ytvis19, ytvis21, ovis, synthetic")
  return c
