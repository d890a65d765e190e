"""GT and results loading with the official ``YTVOS`` / ``loadRes`` / ``_prepare`` rules.

Output is one ``Track`` per GT annotation or prediction, grouped by (video id, category id), in
the order the official evaluator sees them: GTs in GT-file order, predictions stably sorted by
descending score and cut to ``maxDets[-1]`` (spec §2, §3, §5 "Setup").
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

# Per-frame OVIS occlusion label -> score (OVIS fork, ``occann2score``).
OCCLUSION_SCORES = {"no_occlusion": 0.0, "slight_occlusion": 0.25, "severe_occlusion": 0.75}

Key = tuple[Hashable, Hashable]  # (video id, category id)


class EvalInputError(ValueError):
  """A GT or results input that cannot be evaluated; the message names the source and problem."""


@dataclasses.dataclass
class Track:
  """One GT annotation or prediction: per-frame compressed RLEs plus what matching needs."""

  ann_id: Any               # GT ``id``; for a prediction 1 + its index in the results list
  score: float              # 0 for GT
  iscrowd: bool
  avg_area: float           # mean of the truthy per-frame areas (GT: the ``areas`` field)
  occ_score: float | None   # OVIS GT only
  rles: list[dict | None]   # compressed RLE per frame; None where the frame is absent (falsy)
  present: np.ndarray       # bool [L]
  areas: np.ndarray         # int64 [L] mask areas from the RLEs, 0 where absent
  sizes: np.ndarray         # int64 [L, 2] RLE (h, w), 0 where absent


@dataclasses.dataclass
class GroundTruth:
  video_ids: list             # sorted: the evaluated videos
  category_ids: list          # sorted: the evaluated categories
  category_names: dict
  tracks: dict[Key, list[Track]]
  source: str


@dataclasses.dataclass
class Predictions:
  tracks: dict[Key, list[Track]]  # score-sorted, at most maxDets[-1] per key
  num_results: int                # results in the input
  num_dropped: int                # results whose category is not a GT category


def read_json(source: Any, what: str) -> tuple[Any, str]:
  """(parsed object, name for messages); ``source`` is a path or an already-parsed object."""
  if not isinstance(source, (str, os.PathLike)):
    return source, what
  path = os.fspath(source)
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f), path
  except FileNotFoundError:
    raise EvalInputError(f"{what} file {path!r} does not exist") from None
  except json.JSONDecodeError as e:
    raise EvalInputError(f"{what} file {path!r} is not valid JSON: {e}") from None
  except (OSError, UnicodeDecodeError) as e:
    raise EvalInputError(f"{what} file {path!r} cannot be read: {e}") from None


def rle_areas(rles: Sequence[dict]) -> np.ndarray:
  """Areas (int64) of compressed RLEs.

  Chunked because ``pycocotools.mask.area`` 2.0.11 under numpy 2 raises OverflowError ("out of
  bounds for uint8") for a list of more than 255 RLEs.
  """
  chunk = 255
  parts = [np.asarray(mask_utils.area(list(rles[i:i + chunk])), np.int64).reshape(-1)
           for i in range(0, len(rles), chunk)]
  return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _mean_truthy(values: Sequence, name: str) -> float:
  # Null and 0 entries are skipped, as ``[a for a in areas if a]`` does in the official code.
  kept = [a for a in values if a]
  if not all(isinstance(a, numbers.Real) for a in kept):
    raise EvalInputError(f"{name}: areas must be numbers or null")
  return float(np.array(kept).mean()) if kept else 0.0


def _frame_arrays(rles: list[dict | None], areas: np.ndarray) -> tuple[np.ndarray, ...]:
  present = np.array([r is not None for r in rles], dtype=bool)
  full_areas = np.zeros(len(rles), np.int64)
  sizes = np.zeros((len(rles), 2), np.int64)
  full_areas[present] = areas
  if present.any():
    sizes[present] = [r["size"] for r in rles if r is not None]
  return present, full_areas, sizes


def _gt_frame_rle(seg: Any, video: Mapping | None, where: str) -> dict:
  """One truthy GT frame as compressed RLE (``YTVOS.annToRLE``)."""
  try:
    if isinstance(seg, list):  # polygons, rasterised at the video's size
      if video is None or "height" not in video or "width" not in video:
        raise EvalInputError(f"{where}: polygon needs the video's height and width")
      return mask_utils.merge(mask_utils.frPyObjects(seg, video["height"], video["width"]))
    if isinstance(seg, dict) and "size" in seg and "counts" in seg:
      if isinstance(seg["counts"], list):  # uncompressed RLE carries its own size
        h, w = seg["size"]
        return mask_utils.frPyObjects(seg, h, w)
      if isinstance(seg["counts"], (str, bytes)):
        return seg
  except EvalInputError:
    raise
  except Exception as e:  # pycocotools raises bare Exceptions / TypeErrors on bad input
    raise EvalInputError(f"{where}: cannot decode segmentation: {e}") from None
  raise EvalInputError(f"{where}: segmentation must be a polygon list or an RLE dict")


def _occ_score(labels: Any, where: str) -> float:
  if not isinstance(labels, list):
    raise EvalInputError(f"{where}: 'occlusion' must be a list of per-frame labels")
  try:
    scores = sorted(OCCLUSION_SCORES[a] for a in labels if a is not None)
  except (KeyError, TypeError):
    raise EvalInputError(f"{where}: occlusion labels must be one of {sorted(OCCLUSION_SCORES)} "
                         "or null") from None
  if not scores:  # the OVIS fork divides by zero here
    raise EvalInputError(f"{where}: 'occlusion' has no non-null label")
  # Mean of the top ceil(n/2) scores, summed in ascending order exactly like the fork.
  top = scores[-math.ceil(len(scores) / 2):]
  return sum(top) / len(top)


def _gt_track(ann: Mapping, video: Mapping | None, ovis: bool, source: str) -> Track:
  where = f"{source}: annotation id {ann.get('id')!r}"
  for key in ("segmentations", "areas", "iscrowd"):
    if key not in ann:
      raise EvalInputError(f"{where} has no {key!r} field (the official evaluator needs it)")
  segs, area_field = ann["segmentations"], ann["areas"]
  if not isinstance(segs, list) or not isinstance(area_field, list):
    raise EvalInputError(f"{where}: 'segmentations' and 'areas' must be lists")
  rles = [_gt_frame_rle(s, video, f"{where} frame {i}") if s else None
          for i, s in enumerate(segs)]
  kept = [r for r in rles if r is not None]
  areas = rle_areas(kept)
  occ = None
  if ovis:
    if "occlusion" in ann:
      occ = _occ_score(ann["occlusion"], where)
    elif ann["iscrowd"]:
      occ = None  # never read: the crowd flag short-circuits the range test
    else:
      raise EvalInputError(f"{where} has no 'occlusion' labels, which OVIS evaluation needs")
  present, frame_areas, sizes = _frame_arrays(rles, areas)
  return Track(ann_id=ann["id"], score=0.0, iscrowd=bool(ann["iscrowd"]),
               avg_area=_mean_truthy(area_field, where), occ_score=occ, rles=rles,
               present=present, areas=frame_areas, sizes=sizes)


def load_gt(gt: Mapping | str | os.PathLike, ovis: bool = False) -> GroundTruth:
  """Parses a YouTube-VIS / OVIS GT json (path or dict) into per-(video, category) tracks."""
  data, source = read_json(gt, "GT")
  if not isinstance(data, Mapping):
    raise EvalInputError(f"{source}: GT must be a JSON object with 'videos', 'categories', "
                         "'annotations'")
  try:
    videos = {v["id"]: v for v in data.get("videos") or []}
    categories = {c["id"]: c for c in data.get("categories") or []}
  except (KeyError, TypeError):
    raise EvalInputError(f"{source}: every video and category needs an 'id'") from None
  # The test split of OVIS has "annotations": null.
  annotations = data.get("annotations") or []
  # Like the official index, a repeated annotation id resolves to the last annotation with it.
  by_id: dict = {}
  vid_to_anns: dict = defaultdict(list)
  for i, ann in enumerate(annotations):
    if not isinstance(ann, Mapping) or "id" not in ann or "video_id" not in ann:
      raise EvalInputError(f"{source}: annotation #{i} needs 'id' and 'video_id'")
    by_id[ann["id"]] = ann
    vid_to_anns[ann["video_id"]].append(ann)
  video_ids, category_ids = sorted(videos), sorted(categories)
  category_set = set(category_ids)
  tracks: dict[Key, list[Track]] = defaultdict(list)
  prepared: dict[int, Track] = {}
  for video_id in video_ids:
    for ann in vid_to_anns.get(video_id, ()):
      if ann.get("category_id") not in category_set:
        continue
      resolved = by_id[ann["id"]]
      track = prepared.get(id(resolved))
      if track is None:
        track = _gt_track(resolved, videos.get(resolved["video_id"]), ovis, source)
        prepared[id(resolved)] = track
      tracks[resolved["video_id"], resolved.get("category_id")].append(track)
  names = {c: categories[c].get("name", str(c)) for c in category_ids}
  return GroundTruth(video_ids, category_ids, names, dict(tracks), source)


def _is_size(size: Any) -> bool:
  if not isinstance(size, (list, tuple)) or len(size) != 2:
    return False
  # Plain ints first: numbers.Integral is an ABC check, slow over ~10^5 frames.
  return all((type(s) is int or isinstance(s, numbers.Integral)) and s >= 0 for s in size)


def _result_frames(segs: Any, where: str) -> list[dict | None]:
  if not isinstance(segs, list):
    raise EvalInputError(f"{where}: 'segmentations' must be a list (one entry per frame)")
  frames = []
  for f, seg in enumerate(segs):
    if not seg:
      frames.append(None)
      continue
    if isinstance(seg, dict) and isinstance(seg.get("counts"), (str, bytes)):
      if _is_size(seg.get("size")):
        frames.append(seg)
        continue
      raise EvalInputError(f"{where} frame {f}: RLE 'size' must be [height, width]")
    if isinstance(seg, dict) and isinstance(seg.get("counts"), list):
      raise EvalInputError(f"{where} frame {f}: uncompressed RLE (counts is a list) is not "
                           "accepted; the official loader only takes compressed RLE strings")
    raise EvalInputError(f"{where} frame {f}: must be a compressed RLE "
                         "{'size': [h, w], 'counts': str} or null")
  return frames


def load_results(results: Sequence | str | os.PathLike, gt: GroundTruth,
                 max_det: int) -> Predictions:
  """Parses a results list (path or list) against ``gt`` (``YTVOS.loadRes`` + ``_prepare``).

  Raises EvalInputError for a malformed entry or a video id absent from the GT. Results in a
  category the GT does not list are dropped silently, as the official evaluator does.
  """
  data, source = read_json(results, "results")
  if not isinstance(data, list):
    raise EvalInputError(f"{source}: results must be a JSON list of objects")
  required = ("video_id", "category_id", "score", "segmentations")
  for i, r in enumerate(data):
    if not isinstance(r, Mapping) or any(k not in r for k in required):
      raise EvalInputError(f"{source}: result #{i} must be an object with keys {list(required)}")
  video_set = set(gt.video_ids)
  unknown = sorted({r["video_id"] for r in data if r["video_id"] not in video_set}, key=str)
  if unknown:
    shown = ", ".join(map(repr, unknown[:10])) + (", ..." if len(unknown) > 10 else "")
    raise EvalInputError(f"{source}: {len(unknown)} video id(s) not in the GT "
                         f"{gt.source}: {shown}")
  category_set = set(gt.category_ids)
  kept: list[tuple[int, Mapping, list]] = []
  for i, r in enumerate(data):
    where = f"{source}: result #{i} (video {r['video_id']!r})"
    score = r["score"]
    if not isinstance(score, numbers.Real) or math.isnan(score):
      raise EvalInputError(f"{where}: 'score' must be a number")
    frames = _result_frames(r["segmentations"], where)
    if r["category_id"] in category_set:
      kept.append((i, r, frames))
  # One pycocotools call for every present frame of every kept result.
  flat = [f for _, _, frames in kept for f in frames if f is not None]
  try:
    flat_areas = rle_areas(flat)
  except Exception as e:
    raise EvalInputError(f"{source}: an RLE cannot be decoded: {e}") from None
  tracks: dict[Key, list[Track]] = defaultdict(list)
  offset = 0
  for i, r, frames in kept:
    n = sum(f is not None for f in frames)
    areas = flat_areas[offset:offset + n] if n else np.zeros(0, np.int64)
    offset += n
    # Same as the official: mean of the non-zero per-frame areas, 0 if there are none.
    nonzero = areas[areas > 0]
    avg = float(nonzero.mean()) if nonzero.size else 0.0
    tracks[r["video_id"], r["category_id"]].append(Track(
        i + 1, float(r["score"]), False, avg, None, frames, *_frame_arrays(frames, areas)))
  for key, group in tracks.items():
    # Python's sort is stable: tied scores keep results-file order, like mergesort argsort.
    tracks[key] = sorted(group, key=lambda t: -t.score)[:max_det]
  return Predictions(dict(tracks), len(data), len(data) - len(kept))
