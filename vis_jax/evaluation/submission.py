"""Results in the official submission format, and the codalab zip.

Each result is ``{"video_id", "category_id", "score", "segmentations"}`` with one compressed RLE
per frame (``counts`` as str). Like the official Mask2Former/VITA postprocessing
(``instances_to_coco_json_video``), every frame gets an RLE, an empty mask included: for the
metric an all-zero RLE is the same as null (spec §8.1).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def encode_results(video_id: int, masks: Any, scores: Sequence[float],
                   category_ids: Sequence[int]) -> list[dict]:
  """Official result dicts for one video.

  Args:
    video_id: the GT video id.
    masks: binary masks [Q, T, H, W] at the video's original resolution (any array type;
      nonzero = foreground).
    scores: [Q] confidences.
    category_ids: [Q] *dataset* category ids (not contiguous model class indices).

  Returns:
    Q dicts with ``segmentations`` = T compressed RLEs (``counts`` decoded to str).
  """
  masks = np.asarray(masks)
  if masks.ndim != 4:
    raise ValueError(f"masks must be [Q, T, H, W], got shape {masks.shape}")
  scores = np.asarray(scores, np.float64).reshape(-1)
  category_ids = np.asarray(category_ids).reshape(-1)
  if not len(masks) == len(scores) == len(category_ids):
    raise ValueError(f"masks ({len(masks)}), scores ({len(scores)}) and category_ids "
                     f"({len(category_ids)}) must have the same length Q")
  results = []
  for q in range(len(masks)):
    # [H, W, T] Fortran-ordered uint8 encodes all T frames in one call.
    frames = np.asfortranarray(np.transpose(masks[q] != 0, (1, 2, 0)).astype(np.uint8))
    rles = mask_utils.encode(frames) if frames.shape[2] else []
    segmentations = [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")}
                     for r in rles]
    results.append({"video_id": int(video_id), "score": float(scores[q]),
                    "category_id": int(category_ids[q]), "segmentations": segmentations})
  return results


def _json_default(obj: Any) -> Any:
  # Lets callers pass numpy scalars / arrays straight from postprocessing.
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, bytes):
    return obj.decode("ascii")
  raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_submission(results: Sequence[dict], out_dir: str) -> tuple[str, str]:
  """Writes ``out_dir/results.json`` and ``out_dir/results.zip`` (results.json at the zip root).

  Returns:
    (json path, zip path).
  """
  os.makedirs(out_dir, exist_ok=True)
  json_path = os.path.join(out_dir, "results.json")
  zip_path = os.path.join(out_dir, "results.zip")
  payload = json.dumps(list(results), default=_json_default, separators=(",", ":"))
  with open(json_path, "w", encoding="utf-8") as f:
    f.write(payload)
  with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
    zf.writestr("results.json", payload)
  return json_path, zip_path
