"""Readers: YouTube-VIS 2019/2021, OVIS and COCO instance jsons → ``VideoRecord`` lists.

Nothing is decoded here (``input_pipeline/frames.py`` decodes on demand); a reader validates the
json against the video/image it annotates, maps dataset category ids to contiguous labels and
reports what it kept and what it dropped.

Contiguous labels are the json's categories sorted by id (detectron2's
``thing_dataset_id_to_contiguous_id``) unless a category map (``input_pipeline.category_maps``)
is given: then labels are the *target* dataset's id-sorted categories and annotations whose
category the map does not cover are dropped (the official COCO→VIS behaviour, class -1).

Two kinds of removal, reported separately in ``LoadReport``:
  * ``dropped``: by design, as in the official code: training videos/images without a non-crowd
    annotation that is present in at least one frame (``FILTER_EMPTY_ANNOTATIONS``), and
    annotations of unmapped categories;
  * ``skipped``: bad input under ``on_bad="skip"`` (with ``on_bad="error"`` the first one raises
    ``DataError`` naming the json file, the item and the problem). A video/image with a bad
    annotation is skipped whole: training on it without that object would teach the model to
    call a real object background. For evaluation (``for_training=False``) only the bad
    annotation is skipped: the video is still run and scored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from configs import common
from input_pipeline import category_maps
from input_pipeline.records import InstanceTrack, VideoRecord

ON_BAD_CHOICES = ("error", "skip")
_MAX_EXAMPLES = 5          # example messages kept per skip reason
_MAX_MISSING_LISTED = 20   # missing frame paths listed in the report
_MISSING_IN_MESSAGE = 3    # missing frame paths named in one error message


class DataError(ValueError):
  """Unusable dataset content. The message names the file, the item and what is wrong."""


@dataclasses.dataclass
class LoadReport:
  """What a reader kept, dropped by design and skipped as bad.

  Attributes:
    source: config source name.
    kind: reader kind (``ytvis``, ``ovis``, ``coco``, ``synthetic``, ``array_record``).
    json_path: the annotation file (or ArrayRecord directory).
    videos: records kept (COCO: images kept as pseudo-videos).
    tracks: tracks in the kept records.
    frames: frames in the kept records (one per pseudo-video).
    dropped: reason → count of items removed by design (not an error).
    skipped: reason → count of bad items skipped under ``on_bad="skip"``.
    examples: reason → the first few skip messages (each names the file and the item).
    missing_files: the first few missing frame paths.
  """

  source: str
  kind: str
  json_path: str
  videos: int = 0
  tracks: int = 0
  frames: int = 0
  dropped: dict[str, int] = dataclasses.field(default_factory=dict)
  skipped: dict[str, int] = dataclasses.field(default_factory=dict)
  examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  missing_files: list[str] = dataclasses.field(default_factory=list)

  def as_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def drop(self, reason: str, count: int = 1) -> None:
    self.dropped[reason] = self.dropped.get(reason, 0) + count

  def skip(self, reason: str, message: str) -> None:
    self.skipped[reason] = self.skipped.get(reason, 0) + 1
    examples = self.examples.setdefault(reason, [])
    if len(examples) < _MAX_EXAMPLES:
      examples.append(message)


@dataclasses.dataclass
class LoadedDataset:
  """The records of one source and its label space.

  Attributes:
    records: sorted by video id. A list for json sources; a lazy random-access sequence for
      ArrayRecord sources (index it, do not copy it into a list: each item holds JPEG bytes).
    categories: the categories the labels refer to, id-sorted (the json's, or the category
      map's target dataset's), as ``{"id", "name", ...}`` dicts.
    label_to_category_id: contiguous label → dataset category id.
    report: counts of what was kept, dropped and skipped.
  """

  records: Sequence[VideoRecord]
  categories: list[dict[str, Any]]
  label_to_category_id: dict[int, int]
  report: LoadReport

  @property
  def num_classes(self) -> int:
    return len(self.label_to_category_id)

  @property
  def category_id_to_label(self) -> dict[int, int]:
    return {c: label for label, c in self.label_to_category_id.items()}


class _Bad(Exception):
  """One bad item found while parsing; turned into DataError or a counted skip."""

  def __init__(self, reason: str, item: str, detail: str, unit: int | None = None):
    super().__init__(detail)
    self.reason, self.item, self.detail, self.unit = reason, item, detail, unit


@dataclasses.dataclass
class _Unit:
  """A video (or COCO image) being assembled."""

  item: str                  # "video 3" / "image 3", for messages
  paths: tuple[str, ...]
  height: int
  width: int
  num_segmentations: int     # expected segmentation-list length (COCO: 1)
  tracks: list[InstanceTrack] = dataclasses.field(default_factory=list)


class _Issues:
  """Applies the ``on_bad`` policy to ``_Bad`` items."""

  def __init__(self, json_path: str, on_bad: str, report: LoadReport):
    if on_bad not in ON_BAD_CHOICES:
      raise ValueError(f"on_bad={on_bad!r} is not one of {ON_BAD_CHOICES}")
    self.json_path, self.on_bad, self.report = json_path, on_bad, report

  def bad(self, e: _Bad) -> None:
    message = f"{self.json_path}: {e.item}: {e.detail}"
    if self.on_bad == "error":
      raise DataError(message)
    self.report.skip(e.reason, message)


def _is_int(x: Any) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def load_json(json_path: str) -> Any:
  """Reads a json file; a missing or unparsable file raises DataError naming it."""
  try:
    with open(json_path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError as e:
    raise DataError(f"{json_path}: annotation file not found") from e
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{json_path}: not valid JSON ({e})") from e


def _require_keys(data: Any, json_path: str, keys: Sequence[str]) -> None:
  if not isinstance(data, dict):
    raise DataError(f"{json_path}: the top level is a {type(data).__name__}, expected an object "
                    f"with keys {list(keys)}")
  missing = [k for k in keys if k not in data]
  if missing:
    raise DataError(f"{json_path}: missing top-level key(s) {missing} (has {sorted(data)})")


def _parse_categories(data: dict[str, Any], json_path: str) -> dict[int, dict[str, Any]]:
  cats = data["categories"]
  if not isinstance(cats, list) or not cats:
    raise DataError(f"{json_path}: 'categories' must be a non-empty list")
  out: dict[int, dict[str, Any]] = {}
  for i, c in enumerate(cats):
    if not isinstance(c, dict) or not _is_int(c.get("id")):
      raise DataError(f"{json_path}: categories[{i}] has no integer 'id': {c!r}")
    if int(c["id"]) in out:
      raise DataError(f"{json_path}: category id {c['id']} appears twice in 'categories'")
    out[int(c["id"])] = dict(c, id=int(c["id"]))
  return out


def label_space(json_cats: Mapping[int, dict[str, Any]], category_map: str | None
                ) -> tuple[dict[int, int], list[dict[str, Any]], dict[int, int]]:
  """(json category id → label, categories of the labels, label → category id)."""
  if category_map:
    mapping = category_maps.get_category_map(category_map)
    categories = category_maps.target_categories(category_map)
  else:
    mapping = {c: c for c in json_cats}
    categories = [json_cats[c] for c in sorted(json_cats)]
  label_to_cat = {label: int(c["id"]) for label, c in enumerate(categories)}
  target_label = {c: label for label, c in label_to_cat.items()}
  return {s: target_label[t] for s, t in mapping.items()}, categories, label_to_cat


def _check_segmentation(seg: Any, height: int, width: int, where: str, owner: str) -> None:
  """Raises _Bad for a segmentation that is not None / polygon list / RLE of the frame size."""
  if seg is None:
    return
  if isinstance(seg, dict):
    size, counts = seg.get("size"), seg.get("counts")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(map(_is_int, size))):
      raise _Bad("malformed segmentation", where, f"RLE without a valid 'size': {size!r}")
    if not isinstance(counts, (str, bytes, list)):
      raise _Bad("malformed segmentation", where, "RLE without 'counts'")
    if (int(size[0]), int(size[1])) != (height, width):
      raise _Bad("mask size mismatch", where,
                 f"RLE size [h, w] = {list(size)} differs from the frame size "
                 f"[{height}, {width}] of {owner}")
    return
  if isinstance(seg, list) and all(isinstance(p, list) for p in seg):
    return
  raise _Bad("malformed segmentation", where,
             f"segmentation is a {type(seg).__name__}, expected an RLE dict, a polygon list or "
             "null")


def _missing_frames(paths: Sequence[str]) -> list[str]:
  missing = []
  for p in paths:
    try:
      if not stat.S_ISREG(os.stat(p).st_mode):
        missing.append(p)
    except OSError:
      missing.append(p)
  return missing


def _positive_int(entry: dict[str, Any], key: str, item: str, reason: str) -> int:
  value = entry.get(key)
  if not _is_int(value) or value <= 0:
    raise _Bad(reason, item, f"'{key}' must be a positive integer, got {value!r}")
  return int(value)


def _first(items: list[Any], n: int = 20) -> str:
  return str(items[:n])[:-1] + ", ...]" if len(items) > n else str(items)


def _annotation_item(ann: Any, index: int, unit_key: str) -> str:
  if isinstance(ann, dict) and "id" in ann:
    owner = f" ({unit_key.removesuffix('_id')} {ann.get(unit_key)})" if unit_key in ann else ""
    return f"annotation {ann['id']}{owner}"
  return f"annotations[{index}]"


def _parse_annotation(ann: Any, index: int, units: Mapping[int, _Unit], *, unit_key: str,
                      seg_key: str, json_cats: Mapping[int, Any], seen_ids: set[int]
                      ) -> tuple[int, dict[str, Any]]:
  """Validates one annotation; returns (unit id, annotation). Raises _Bad."""
  item = _annotation_item(ann, index, unit_key)
  if not isinstance(ann, dict):
    raise _Bad("malformed annotation", item, f"is a {type(ann).__name__}, expected an object")
  missing = [k for k in ("id", unit_key, "category_id", seg_key) if k not in ann]
  unit_id = ann.get(unit_key)
  known_unit = unit_id if _is_int(unit_id) and unit_id in units else None
  if missing:
    raise _Bad("malformed annotation", item, f"missing key(s) {missing}", known_unit)
  if known_unit is None:
    raise _Bad(f"unknown {unit_key.removesuffix('_id')} id", item,
               f"refers to {unit_key} {unit_id!r}, which is not listed in the json")
  if not _is_int(ann["id"]):
    raise _Bad("malformed annotation", item, f"'id' must be an integer, got {ann['id']!r}",
               known_unit)
  if ann["id"] in seen_ids:
    raise _Bad("duplicate annotation id", item, "annotation id used twice", known_unit)
  seen_ids.add(ann["id"])
  if not _is_int(ann["category_id"]) or ann["category_id"] not in json_cats:
    raise _Bad("unknown category id", item,
               f"category id {ann['category_id']!r} is not in 'categories' "
               f"(known: {_first(sorted(json_cats))})", known_unit)
  return known_unit, ann


def _track_from(ann: dict[str, Any], unit: _Unit, label: int, item: str, *,
                segmentations: list[Any]) -> InstanceTrack:
  if len(segmentations) != unit.num_segmentations:
    raise _Bad("segmentation length mismatch", item,
               f"has {len(segmentations)} segmentations but {unit.item} has "
               f"{unit.num_segmentations} frames", None)
  for t, seg in enumerate(segmentations):
    where = f"{item} frame {t}" if unit.num_segmentations > 1 else item
    _check_segmentation(seg, unit.height, unit.width, where, unit.item)
  occlusion = ann.get("occlusion")
  if occlusion is not None:
    if not isinstance(occlusion, list) or len(occlusion) != unit.num_segmentations:
      got = len(occlusion) if isinstance(occlusion, list) else type(occlusion).__name__
      raise _Bad("occlusion length mismatch", item,
                 f"'occlusion' has {got} entries but {unit.item} has {unit.num_segmentations} "
                 "frames")
    occlusion = tuple(occlusion)
  # An empty polygon list is falsy, which the official loader treats as "absent in this frame".
  return InstanceTrack(track_id=int(ann["id"]), label=label,
                       segmentations=tuple(None if s == [] else s for s in segmentations),
                       iscrowd=int(bool(ann.get("iscrowd", 0))), occlusion=occlusion)


def has_training_instance(tracks: Sequence[InstanceTrack]) -> bool:
  """FILTER_EMPTY_ANNOTATIONS: some non-crowd track is present in at least one frame."""
  return any(not t.iscrowd and any(s is not None for s in t.segmentations) for t in tracks)


def _add_tracks(anns: list[Any], units: dict[int, _Unit], skipped_units: set[int],
                bad_units: set[int], issues: _Issues, *, unit_key: str, seg_key: str,
                json_cats: Mapping[int, Any], cat_to_label: Mapping[int, int],
                single_frame: bool) -> None:
  seen_ids: set[int] = set()
  for i, ann in enumerate(anns):
    try:
      # Annotations of units already skipped as bad are ignored, not reported twice.
      if isinstance(ann, dict) and _is_int(ann.get(unit_key)) and ann[unit_key] in skipped_units:
        continue
      unit_id, ann = _parse_annotation(ann, i, units, unit_key=unit_key, seg_key=seg_key,
                                       json_cats=json_cats, seen_ids=seen_ids)
      item = _annotation_item(ann, i, unit_key)
      seg = ann[seg_key]
      if single_frame:
        segmentations = [seg]
      elif isinstance(seg, list):
        segmentations = seg
      else:
        raise _Bad("malformed annotation", item,
                   f"'{seg_key}' is a {type(seg).__name__}, expected a per-frame list", unit_id)
      if ann["category_id"] not in cat_to_label:
        issues.report.drop("annotation of an unmapped category")
        continue
      try:
        track = _track_from(ann, units[unit_id], cat_to_label[ann["category_id"]], item,
                            segmentations=segmentations)
      except _Bad as e:
        e.unit = unit_id
        raise
      units[unit_id].tracks.append(track)
    except _Bad as e:
      issues.bad(e)
      if e.unit is not None:
        bad_units.add(e.unit)


def _finalize(units: dict[int, _Unit], bad_units: set[int], issues: _Issues, *,
              source_name: str, for_training: bool, check_files: bool,
              pseudo_lengths: Mapping[int, int] | None = None) -> list[VideoRecord]:
  """Builds the records of the kept units (sorted by id) and fills the report counts."""
  report = issues.report
  empty_reason = "image without annotations" if pseudo_lengths else "video without annotations"
  records = []
  for uid in sorted(units):
    unit = units[uid]
    # Evaluation keeps the video (its predictions are still scored against the json).
    if uid in bad_units and for_training:
      report.skip(f"{unit.item.split()[0]} with a bad annotation", f"{issues.json_path}: "
                  f"{unit.item}: skipped because one of its annotations is bad")
      continue
    if for_training and not has_training_instance(unit.tracks):
      report.drop(empty_reason)
      continue
    if check_files:
      missing = _missing_frames(unit.paths)
      if missing:
        room = _MAX_MISSING_LISTED - len(report.missing_files)
        report.missing_files.extend(missing[:max(room, 0)])
        issues.bad(_Bad("missing frame file", unit.item,
                        f"{len(missing)} of {len(unit.paths)} frame file(s) missing, e.g. "
                        f"{missing[:_MISSING_IN_MESSAGE]}"))
        continue
    records.append(VideoRecord(
        source=source_name, video_id=uid, frame_paths=unit.paths, height=unit.height,
        width=unit.width, tracks=tuple(unit.tracks),
        pseudo_length=pseudo_lengths[uid] if pseudo_lengths else 0))
  report.videos = len(records)
  report.tracks = sum(len(r.tracks) for r in records)
  report.frames = sum(len(r.frame_paths) for r in records)
  return records


def _annotations(data: dict[str, Any], json_path: str, key: str, for_training: bool
                 ) -> list[Any]:
  anns = data.get(key)
  if anns is None:
    anns = []   # evaluation jsons: absent (YTVIS valid) or null (OVIS test)
  if not isinstance(anns, list):
    raise DataError(f"{json_path}: '{key}' must be a list, got {type(anns).__name__}")
  if for_training and not anns:
    raise DataError(f"{json_path}: no annotations; a training source needs annotated videos "
                    "(an evaluation json is read with for_training=False)")
  return anns


def _frame_path(frames_dir: str, name: str) -> str:
  return os.path.abspath(os.path.join(frames_dir, name))


def _video_frames(v: dict[str, Any], item: str) -> list[str]:
  names = v["file_names"]
  if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
    raise _Bad("malformed video", item, "'file_names' must be a non-empty list of strings")
  if "length" in v and v["length"] != len(names):
    raise _Bad("malformed video", item,
               f"'length' is {v['length']} but 'file_names' has {len(names)} entries")
  return names


def _image_frames(im: dict[str, Any], item: str) -> list[str]:
  if not isinstance(im["file_name"], str) or not im["file_name"]:
    raise _Bad("malformed image", item, "'file_name' must be a non-empty string")
  return [im["file_name"]]


def _parse_units(entries: Any, noun: str, required: Sequence[str],
                 frame_names: Callable[[dict[str, Any], str], list[str]], frames_dir: str,
                 issues: _Issues) -> tuple[dict[int, _Unit], set[int]]:
  """Validates the ``videos`` / ``images`` list: (id → unit, ids skipped as bad)."""
  if not isinstance(entries, list):
    raise DataError(f"{issues.json_path}: '{noun}s' must be a list")
  units: dict[int, _Unit] = {}
  skipped: set[int] = set()
  for i, entry in enumerate(entries):
    uid = entry.get("id") if isinstance(entry, dict) else None
    item = f"{noun} {uid}" if _is_int(uid) else f"{noun}s[{i}]"
    try:
      if not isinstance(entry, dict):
        raise _Bad(f"malformed {noun}", item, f"is a {type(entry).__name__}, expected an object")
      missing = [k for k in required if k not in entry]
      if missing:
        raise _Bad(f"malformed {noun}", item, f"missing key(s) {missing}")
      if not _is_int(uid):
        raise _Bad(f"malformed {noun}", item, f"'id' must be an integer, got {uid!r}")
      if uid in units or uid in skipped:
        raise _Bad(f"duplicate {noun} id", item, f"{noun} id listed twice")
      height = _positive_int(entry, "height", item, f"malformed {noun}")
      width = _positive_int(entry, "width", item, f"malformed {noun}")
      names = frame_names(entry, item)
    except _Bad as e:
      issues.bad(e)
      if _is_int(uid):
        skipped.add(uid)
        units.pop(uid, None)  # a duplicated id makes both entries ambiguous
      continue
    units[uid] = _Unit(item, tuple(_frame_path(frames_dir, n) for n in names), height, width,
                       len(names))
  return units, skipped


def load_ytvis(json_path: str, frames_dir: str, source_name: str,
               category_map: str | None = None, on_bad: str = "error",
               check_files: bool = True, for_training: bool = True,
               kind: str = "ytvis") -> LoadedDataset:
  """Reads a YouTube-VIS 2019/2021 or OVIS json (OVIS per-frame ``occlusion`` is kept).

  Args:
    json_path: the annotation json.
    frames_dir: ``<frames_dir>/<file_name>`` is a frame.
    source_name: stored in each record's ``source``.
    category_map: name of a ``category_maps`` map applied to the json's category ids.
    on_bad: ``"error"`` raises DataError at the first bad item; ``"skip"`` skips and counts it.
    check_files: ``os.stat`` every frame of every kept video.
    for_training: drop (and count) videos without a usable annotation, and require
      annotations. ``False`` (evaluation) keeps every video; ``annotations`` may be absent.
    kind: reported in ``LoadReport.kind``.

  Raises:
    DataError: unusable json, or a bad item with ``on_bad="error"``.
  """
  data = load_json(json_path)
  required = ("videos", "categories", "annotations") if for_training else ("videos", "categories")
  _require_keys(data, json_path, required)
  report = LoadReport(source_name, kind, json_path)
  issues = _Issues(json_path, on_bad, report)
  json_cats = _parse_categories(data, json_path)
  cat_to_label, categories, label_to_cat = label_space(json_cats, category_map)

  units, skipped = _parse_units(data["videos"], "video", ("id", "height", "width", "file_names"),
                                _video_frames, frames_dir, issues)
  bad_units: set[int] = set()
  _add_tracks(_annotations(data, json_path, "annotations", for_training), units, skipped,
              bad_units, issues, unit_key="video_id", seg_key="segmentations",
              json_cats=json_cats, cat_to_label=cat_to_label, single_frame=False)
  records = _finalize(units, bad_units, issues, source_name=source_name,
                      for_training=for_training, check_files=check_files)
  if for_training and not records:
    raise DataError(f"{json_path}: no usable training video left ({_summary(report)})")
  return LoadedDataset(records, categories, label_to_cat, report)


def pseudo_length(image_id: int, fake_length: Sequence[int], seed: int) -> int:
  """Deterministic fake video length of a COCO image, uniform in ``[lo, hi]`` (inclusive)."""
  lo, hi = int(fake_length[0]), int(fake_length[1])
  rng = np.random.default_rng([seed % 2**32, image_id % 2**63])
  return int(rng.integers(lo, hi, endpoint=True))


def load_coco_pseudo(json_path: str, images_dir: str, source_name: str,
                     category_map: str | None, fake_length: Sequence[int] = (16, 48),
                     seed: int = 0, on_bad: str = "error",
                     check_files: bool = True) -> LoadedDataset:
  """Reads a COCO instance json as one-frame pseudo-videos for joint training (spec §3.6).

  Each image with at least one non-crowd annotation of a mapped category becomes a
  ``VideoRecord`` with one frame path, ``pseudo_length`` drawn per image (deterministic in
  ``seed`` and the image id) and one track per kept annotation holding its single segmentation.

  Args:
    json_path: COCO ``instances_*.json``.
    images_dir: ``<images_dir>/<file_name>`` is an image.
    source_name: stored in each record's ``source``.
    category_map: e.g. ``"coco_to_ytvis19"``; ``None`` keeps the json's own categories.
    fake_length: inclusive ``(lo, hi)`` range of the fake video length.
    seed: varies the fake lengths.
    on_bad, check_files: as in ``load_ytvis``.

  Raises:
    DataError: unusable json, or a bad item with ``on_bad="error"``.
  """
  if (len(fake_length) != 2 or not all(map(_is_int, fake_length))
      or not 1 <= fake_length[0] <= fake_length[1]):
    raise ValueError(f"fake_length must be (lo, hi) with 1 <= lo <= hi, got {fake_length}")
  data = load_json(json_path)
  _require_keys(data, json_path, ("images", "annotations", "categories"))
  report = LoadReport(source_name, "coco", json_path)
  issues = _Issues(json_path, on_bad, report)
  json_cats = _parse_categories(data, json_path)
  cat_to_label, categories, label_to_cat = label_space(json_cats, category_map)

  units, skipped = _parse_units(data["images"], "image", ("id", "file_name", "height", "width"),
                                _image_frames, images_dir, issues)
  bad_units: set[int] = set()
  _add_tracks(_annotations(data, json_path, "annotations", True), units, skipped, bad_units,
              issues, unit_key="image_id", seg_key="segmentation", json_cats=json_cats,
              cat_to_label=cat_to_label, single_frame=True)
  lengths = {iid: pseudo_length(iid, fake_length, seed) for iid in units}
  records = _finalize(units, bad_units, issues, source_name=source_name, for_training=True,
                      check_files=check_files, pseudo_lengths=lengths)
  if not records:
    raise DataError(f"{json_path}: no usable training image left ({_summary(report)})")
  return LoadedDataset(records, categories, label_to_cat, report)


def _summary(report: LoadReport) -> str:
  return f"dropped: {report.dropped or 'none'}, skipped: {report.skipped or 'none'}"


def _resolved_paths(name: str, src: common.ConfigDict, config: common.ConfigDict
                    ) -> dict[str, str]:
  # A one-source view makes resolve_paths work for any (name, src), e.g. the eval source.
  view = common.ConfigDict({"data": {"synthetic": config.data.synthetic.to_dict(),
                                     "sources": {name: src.to_dict()},
                                     "eval": src.to_dict()}})
  return common.resolve_paths(view)[name]


def build_source(name: str, src: common.ConfigDict, config: common.ConfigDict,
                 for_training: bool = True) -> LoadedDataset:
  """Loads ``config.data.sources.<name>`` (or ``config.data.eval`` with ``for_training=False``).

  ``synthetic`` generates the dataset on first use and reads it as YouTube-VIS; ``ovis`` and
  ``ytvis`` share the reader; ``coco`` gives pseudo-videos; ``array_record`` reads shards
  converted by ``python -m input_pipeline.array_record`` (``src.json`` is their directory).

  Raises:
    common.ConfigError: unknown kind or category map.
    DataError: bad data, or the label space size differs from ``config.data.num_classes``.
  """
  kind = src.kind
  paths = _resolved_paths(name, src, config)
  category_map = src.get("category_map") or None
  if category_map and category_map not in category_maps.MAP_NAMES:
    raise common.ConfigError(
        f"invalid config value config.data.sources.{name}.category_map: {category_map!r} is not "
        f"one of {category_maps.MAP_NAMES}")
  on_bad = config.data.on_bad_sample
  if kind in ("ytvis", "ovis", "synthetic"):
    if kind == "synthetic":
      from input_pipeline import synthetic  # local: only synthetic runs need the generator

      synthetic.ensure_dataset(**config.data.synthetic.to_dict())
    loaded = load_ytvis(paths["json"], paths["frames"], name, category_map=category_map,
                        on_bad=on_bad, for_training=for_training, kind=kind)
  elif kind == "coco":
    loaded = load_coco_pseudo(paths["json"], paths["frames"], name, category_map,
                              fake_length=tuple(config.input.pseudo.fake_length),
                              seed=config.seed, on_bad=on_bad)
  elif kind == "array_record":
    from input_pipeline import array_record  # local: keeps tfds off the json-only path

    loaded = array_record.load_array_record(paths["json"], name, category_map=category_map,
                                            for_training=for_training)
  else:
    raise common.ConfigError(f"invalid config value config.data.sources.{name}.kind: {kind!r} "
                             f"is not one of {common.SOURCE_KINDS}")
  if loaded.num_classes != config.data.num_classes:
    raise DataError(
        f"{paths['json']}: source {name!r} has {loaded.num_classes} classes but "
        f"config.data.num_classes is {config.data.num_classes}")
  return loaded


def report_lines(loaded: LoadedDataset) -> list[str]:
  """A short human-readable account of a load (for logs)."""
  r = loaded.report
  lines = [f"{r.source} ({r.kind}) {r.json_path}: {r.videos} videos, {r.tracks} tracks, "
           f"{r.frames} frames, {loaded.num_classes} classes"]
  lines += [f"  dropped {n}: {reason}" for reason, n in sorted(r.dropped.items())]
  lines += [f"  skipped {n}: {reason} (e.g. {r.examples.get(reason, [''])[0]})"
            for reason, n in sorted(r.skipped.items())]
  return lines

