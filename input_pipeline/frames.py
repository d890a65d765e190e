"""Decoding on demand: one frame of a ``VideoRecord`` and one segmentation at a time.

Frames are decoded with PIL and forced through ``Image.load()``: ``Image.open`` reads only the
header, so a truncated JPEG would otherwise decode "successfully" later or not at all. The EXIF
orientation is applied as detectron2's ``read_image`` does (the official pipeline), then the size
is checked against the annotation. Note that a process which sets
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True`` makes PIL pad truncated files silently.

Segmentations follow pycocotools: compressed RLE (``counts`` a string), uncompressed RLE
(``counts`` a list, as in the released YouTube-VIS jsons) and polygon lists. Polygons with fewer
than 3 points or an odd number of coordinates are ignored, as the official loader filters them
(pycocotools would otherwise read a 4-number polygon as a box).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image, ImageOps, UnidentifiedImageError

from input_pipeline.datasets import DataError
from input_pipeline.records import Segmentation, VideoRecord

__all__ = ["DataError", "decode_image", "decode_segmentation", "read_frame"]


def decode_image(data: bytes, name: str) -> np.ndarray:
  """Fully decodes encoded image bytes to uint8 RGB ``[H, W, 3]``; ``name`` is for errors.

  Raises:
    DataError: the bytes are not a decodable image (including truncated files).
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      ImageOps.exif_transpose(image, in_place=True)
      if image.mode != "RGB":
        image = image.convert("RGB")
      # np.array, not np.asarray: the latter is read-only and augmentations may write in place.
      return np.array(image, dtype=np.uint8)
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise DataError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from e


def read_frame(record: VideoRecord, index: int) -> np.ndarray:
  """Frame ``index`` of ``record`` as uint8 RGB ``[H, W, 3]``.

  Reads ``record.frame_bytes[index]`` when the record carries encoded frames, else the file
  ``record.frame_paths[index]``. A pseudo-video has one real frame: ``index`` is ignored.

  Raises:
    DataError: the file is missing or unreadable, cannot be decoded (e.g. truncated), or its
      size differs from ``(record.height, record.width)``. The message names the file.
    IndexError: ``index`` is outside the video.
  """
  i = 0 if record.is_pseudo else index
  if not 0 <= i < len(record.frame_paths):
    raise IndexError(f"frame {index} of video {record.video_id} ({record.source}): the video "
                     f"has {len(record.frame_paths)} frames")
  path = record.frame_paths[i]
  if record.frame_bytes is not None:
    data = record.frame_bytes[i]
    name = f"{path} (stored bytes of video {record.video_id})"
  else:
    name = path
    try:
      with open(path, "rb") as f:
        data = f.read()
    except FileNotFoundError as e:
      raise DataError(f"{path}: frame file is missing (video {record.video_id}, frame {i}, "
                      f"source {record.source})") from e
    except OSError as e:
      raise DataError(f"{path}: cannot read frame file ({e})") from e
  image = decode_image(data, name)
  if image.shape[:2] != (record.height, record.width):
    raise DataError(f"{name}: frame is {image.shape[0]}x{image.shape[1]} (HxW) but the "
                    f"annotation says {record.height}x{record.width}")
  return image


def _valid_polygons(polygons: list[Any]) -> list[list[float]]:
  return [[float(x) for x in p] for p in polygons if len(p) >= 6 and len(p) % 2 == 0]


def decode_segmentation(seg: Segmentation, height: int, width: int) -> np.ndarray:
  """A segmentation as a bool ``[height, width]`` mask; ``None`` is all False.

  Raises:
    DataError: an RLE whose ``size`` is not ``[height, width]``, or an unknown format.
  """
  if seg is None:
    return np.zeros((height, width), bool)
  if isinstance(seg, dict):
    size = [int(s) for s in seg["size"]]
    if size != [height, width]:
      raise DataError(f"RLE of size {size} does not match the frame size [{height}, {width}]")
    counts = seg["counts"]
    if isinstance(counts, list):
      rle = mask_util.frPyObjects(seg, height, width)
    else:
      rle = {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
    return mask_util.decode(rle).astype(bool)
  if isinstance(seg, list):
    polygons = _valid_polygons(seg)
    if not polygons:
      return np.zeros((height, width), bool)
    rle = mask_util.merge(mask_util.frPyObjects(polygons, height, width))
    return mask_util.decode(rle).astype(bool)
  raise DataError(f"unknown segmentation format {type(seg).__name__}")
