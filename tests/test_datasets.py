"""Readers, category maps, frame and mask decoding vs hand-built jsons and pycocotools."""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from configs import common
from input_pipeline import category_maps, datasets, frames
from input_pipeline.datasets import DataError
from input_pipeline.records import VideoRecord

# Deliberately unsorted and non-contiguous: labels must follow the sorted ids 3, 7, 11.
CATEGORIES = [{"id": 11, "name": "c11"}, {"id": 3, "name": "c3"}, {"id": 7, "name": "c7"}]


def write_jpeg(path: str, height: int, width: int, seed: int) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
  Image.fromarray(pixels).save(path, "JPEG", quality=90)


def rect_mask(height: int, width: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
  m = np.zeros((height, width), bool)
  m[y0:y1, x0:x1] = True
  return m


def compressed_rle(mask: np.ndarray) -> dict[str, Any]:
  rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
  """Column-major run lengths starting with a run of zeros (the YTVIS json encoding)."""
  counts, value, run = [], False, 0
  for v in mask.flatten(order="F"):
    if v == value:
      run += 1
    else:
      counts.append(run)
      value, run = v, 1
  counts.append(run)
  return {"size": list(mask.shape), "counts": counts}


def make_ytvis(root: str, occlusion: bool = False) -> tuple[str, str, dict[str, Any]]:
  """Writes train.json + frames: videos 2 (3 frames, 12x16), 1 (2 frames, 10x8), 5 (unannotated)."""
  frames_dir = os.path.join(root, "JPEGImages")
  videos = [
      {"id": 2, "width": 16, "height": 12, "length": 3,
       "file_names": ["v2/00000.jpg", "v2/00005.jpg", "v2/00010.jpg"]},
      {"id": 1, "width": 8, "height": 10, "length": 2, "file_names": ["v1/a.jpg", "v1/b.jpg"]},
      {"id": 5, "width": 8, "height": 8, "length": 2, "file_names": ["v5/a.jpg", "v5/b.jpg"]},
  ]
  for v in videos:
    for k, name in enumerate(v["file_names"]):
      write_jpeg(os.path.join(frames_dir, name), v["height"], v["width"], seed=v["id"] * 10 + k)
  annotations = [
      {"id": 101, "video_id": 2, "category_id": 7, "iscrowd": 0,
       "segmentations": [compressed_rle(rect_mask(12, 16, 1, 5, 2, 9)), None,
                         [[1.0, 1.0, 10.0, 1.0, 10.0, 8.0, 1.0, 8.0]]]},
      {"id": 102, "video_id": 2, "category_id": 11, "iscrowd": 0,
       "segmentations": [uncompressed_rle(rect_mask(12, 16, 6, 11, 0, 4)),
                         uncompressed_rle(rect_mask(12, 16, 6, 12, 0, 5)), None]},
      {"id": 103, "video_id": 1, "category_id": 3, "iscrowd": 0,
       "segmentations": [[[0.0, 0.0, 5.0, 0.0, 5.0, 5.0]],
                         compressed_rle(rect_mask(10, 8, 2, 4, 2, 4))]},
  ]
  if occlusion:
    annotations[0]["occlusion"] = ["no_occlusion", None, "severe_occlusion"]
    annotations[1]["occlusion"] = ["slight_occlusion", "no_occlusion", None]
    annotations[2]["occlusion"] = ["no_occlusion", "no_occlusion"]
  data = {"info": {}, "licenses": [], "videos": videos, "categories": CATEGORIES,
          "annotations": annotations}
  json_path = os.path.join(root, "train.json")
  write_json(json_path, data)
  return json_path, frames_dir, data


def write_json(path: str, data: Any) -> None:
  with open(path, "w") as f:
    json.dump(data, f)


# ---- YouTube-VIS / OVIS ---------------------------------------------------------------------


def test_contiguous_labels_sorted_records_and_empty_video_dropped(tmp_path):
  json_path, frames_dir, data = make_ytvis(str(tmp_path))
  ds = datasets.load_ytvis(json_path, frames_dir, "ytvis")
  assert [r.video_id for r in ds.records] == [1, 2]   # video 5 has no annotation
  assert ds.label_to_category_id == {0: 3, 1: 7, 2: 11}
  assert [c["id"] for c in ds.categories] == [3, 7, 11]
  v1, v2 = ds.records
  assert [(t.track_id, t.label) for t in v2.tracks] == [(101, 1), (102, 2)]
  assert [(t.track_id, t.label) for t in v1.tracks] == [(103, 0)]
  # Segmentations are kept encoded, exactly as in the json.
  assert list(v2.tracks[1].segmentations) == data["annotations"][1]["segmentations"]
  assert v2.frame_paths == tuple(os.path.abspath(os.path.join(frames_dir, n))
                                 for n in data["videos"][0]["file_names"])
  assert (v2.height, v2.width, v2.length, v2.is_pseudo) == (12, 16, 3, False)
  assert v2.tracks[0].occlusion is None
  r = ds.report
  assert (r.videos, r.tracks, r.frames) == (2, 3, 5)
  assert r.dropped == {"video without annotations": 1}
  assert r.skipped == {}


def test_eval_flavour_keeps_unannotated_videos_and_json_without_annotations(tmp_path):
  json_path, frames_dir, data = make_ytvis(str(tmp_path))
  ds = datasets.load_ytvis(json_path, frames_dir, "ytvis", for_training=False)
  assert [r.video_id for r in ds.records] == [1, 2, 5]
  assert ds.records[2].tracks == ()
  for anns in ("absent", None):
    valid = {k: v for k, v in data.items() if k != "annotations"}
    if anns is None:
      valid["annotations"] = None
    write_json(json_path, valid)
    ds = datasets.load_ytvis(json_path, frames_dir, "ytvis", for_training=False)
    assert [len(r.tracks) for r in ds.records] == [0, 0, 0]
    with pytest.raises(DataError, match="annotations"):
      datasets.load_ytvis(json_path, frames_dir, "ytvis")


def test_ovis_occlusion_is_kept(tmp_path):
  json_path, frames_dir, _ = make_ytvis(str(tmp_path), occlusion=True)
  ds = datasets.load_ytvis(json_path, frames_dir, "ovis", kind="ovis")
  tracks = {t.track_id: t for r in ds.records for t in r.tracks}
  assert tracks[101].occlusion == ("no_occlusion", None, "severe_occlusion")
  assert tracks[103].occlusion == ("no_occlusion", "no_occlusion")


def test_category_map_on_a_video_json(tmp_path):
  json_path, frames_dir, data = make_ytvis(str(tmp_path))
  # Pretend the json uses COCO ids: 3 (car) → YTVIS-2019 sedan (id 6), 7 (train) → train
  # (id 17), 11 (fire hydrant) has no YTVIS class.
  ds = datasets.load_ytvis(json_path, frames_dir, "x", category_map="coco_to_ytvis19")
  assert ds.num_classes == 40 and ds.categories[0]["name"] == "person"
  assert [[(t.track_id, t.label) for t in r.tracks] for r in ds.records] == [[(103, 5)],
                                                                             [(101, 16)]]
  assert ds.report.dropped == {"annotation of an unmapped category": 1,
                               "video without annotations": 1}


def _set(path: list[Any], value: Any):
  def mutate(data, frames_dir):
    target = data
    for key in path[:-1]:
      target = target[key]
    target[path[-1]] = value
  return mutate


def _delete_key(path: list[Any]):
  def mutate(data, frames_dir):
    target = data
    for key in path[:-1]:
      target = target[key]
    del target[path[-1]]
  return mutate


def _remove_frame(data, frames_dir):
  os.remove(os.path.join(frames_dir, "v1/b.jpg"))


# (mutation, skip reason, words the error names, video lost when skipping)
BAD_YTVIS = {
    "segmentation length": (
        _set(["annotations", 0, "segmentations"], [None, None]),
        "segmentation length mismatch", ["annotation 101", "video 2", "2 segmentations",
                                         "3 frames"], 2),
    "unknown video": (
        _set(["annotations", 2, "video_id"], 99), "unknown video id", ["annotation 103", "99"],
        1),
    "unknown category": (
        _set(["annotations", 2, "category_id"], 42), "unknown category id",
        ["annotation 103", "42"], 1),
    "mask size": (
        _set(["annotations", 1, "segmentations", 1],
             uncompressed_rle(rect_mask(16, 12, 0, 2, 0, 2))),
        "mask size mismatch", ["annotation 102", "frame 1", "[16, 12]", "[12, 16]"], 2),
    "missing segmentations key": (
        _delete_key(["annotations", 2, "segmentations"]), "malformed annotation",
        ["annotation 103", "segmentations"], 1),
    "missing video height": (
        _delete_key(["videos", 1, "height"]), "malformed video", ["video 1", "height"], 1),
    "occlusion length": (
        _set(["annotations", 0, "occlusion"], ["no_occlusion"]), "occlusion length mismatch",
        ["annotation 101", "occlusion"], 2),
    "missing frame": (_remove_frame, "missing frame file", ["video 1", "v1/b.jpg"], 1),
}


@pytest.mark.parametrize("case", sorted(BAD_YTVIS))
def test_bad_ytvis_input_raises_or_is_skipped_and_counted(tmp_path, case):
  mutate, reason, words, lost = BAD_YTVIS[case]
  json_path, frames_dir, data = make_ytvis(str(tmp_path))
  data = copy.deepcopy(data)
  mutate(data, frames_dir)
  write_json(json_path, data)
  with pytest.raises(DataError) as info:
    datasets.load_ytvis(json_path, frames_dir, "ytvis")
  message = str(info.value)
  for word in [json_path, *words]:
    assert word in message, (word, message)

  ds = datasets.load_ytvis(json_path, frames_dir, "ytvis", on_bad="skip")
  assert ds.report.skipped[reason] == 1
  assert ds.report.examples[reason][0].startswith(json_path)
  kept = {r.video_id for r in ds.records}
  assert kept == {1, 2} - {lost}
  assert ds.report.videos == len(kept)
  if reason == "missing frame file":
    assert ds.report.missing_files == [os.path.join(frames_dir, "v1/b.jpg")]


def test_eval_skips_only_the_bad_annotation_and_empty_polygons_are_absent(tmp_path):
  json_path, frames_dir, data = make_ytvis(str(tmp_path))
  data["annotations"][0]["segmentations"] = [None, None]       # bad: 2 of 3 frames
  data["annotations"][1]["segmentations"][2] = []               # empty polygon list
  write_json(json_path, data)
  ev = datasets.load_ytvis(json_path, frames_dir, "ytvis", on_bad="skip", for_training=False)
  assert [[t.track_id for t in r.tracks] for r in ev.records] == [[103], [102], []]
  assert ev.records[1].tracks[0].segmentations[2] is None
  assert ev.report.skipped == {"segmentation length mismatch": 1}
  train = datasets.load_ytvis(json_path, frames_dir, "ytvis", on_bad="skip")
  assert [r.video_id for r in train.records] == [1]
  assert train.report.skipped == {"segmentation length mismatch": 1,
                                  "video with a bad annotation": 1}


def test_unusable_json_files_always_raise(tmp_path):
  json_path, frames_dir, data = make_ytvis(str(tmp_path))
  with open(json_path, "w") as f:
    f.write('{"videos": [')
  with pytest.raises(DataError, match="not valid JSON"):
    datasets.load_ytvis(json_path, frames_dir, "ytvis", on_bad="skip")
  write_json(json_path, {k: v for k, v in data.items() if k != "videos"})
  with pytest.raises(DataError, match=r"missing top-level key\(s\) \['videos'\]"):
    datasets.load_ytvis(json_path, frames_dir, "ytvis", on_bad="skip")
  write_json(json_path, dict(data, annotations=[]))
  with pytest.raises(DataError, match="no annotations"):
    datasets.load_ytvis(json_path, frames_dir, "ytvis", on_bad="skip")
  with pytest.raises(DataError, match="annotation file not found"):
    datasets.load_ytvis(str(tmp_path / "nope.json"), frames_dir, "ytvis")


# ---- COCO pseudo-videos ---------------------------------------------------------------------


def make_coco(root: str) -> tuple[str, str, dict[str, Any]]:
  images_dir = os.path.join(root, "train2017")
  images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": 12, "width": 10}
            for i in (1, 2, 3, 4)]
  for im in images:
    write_jpeg(os.path.join(images_dir, im["file_name"]), 12, 10, seed=im["id"])
  poly = [[1.0, 1.0, 8.0, 1.0, 8.0, 9.0]]
  crowd = uncompressed_rle(rect_mask(12, 10, 0, 3, 0, 3))
  annotations = [
      {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": poly},
      {"id": 2, "image_id": 1, "category_id": 10, "iscrowd": 0, "segmentation": poly},
      {"id": 3, "image_id": 2, "category_id": 10, "iscrowd": 0, "segmentation": poly},
      {"id": 4, "image_id": 3, "category_id": 2, "iscrowd": 1, "segmentation": crowd},
      {"id": 5, "image_id": 4, "category_id": 2, "iscrowd": 0, "segmentation": poly},
      {"id": 6, "image_id": 4, "category_id": 4, "iscrowd": 0,
       "segmentation": compressed_rle(rect_mask(12, 10, 4, 8, 4, 8))},
      {"id": 7, "image_id": 4, "category_id": 3, "iscrowd": 1, "segmentation": crowd},
  ]
  categories = [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"},
                {"id": 3, "name": "car"}, {"id": 4, "name": "motorcycle"},
                {"id": 10, "name": "traffic light"}]
  data = {"images": images, "annotations": annotations, "categories": categories}
  json_path = os.path.join(root, "instances.json")
  write_json(json_path, data)
  return json_path, images_dir, data


def test_coco_pseudo_videos_with_category_map(tmp_path):
  json_path, images_dir, data = make_coco(str(tmp_path))
  ds = datasets.load_coco_pseudo(json_path, images_dir, "coco", "coco_to_ytvis19")
  # YTVIS-2019 label space: person id 1 → 0, motorbike id 21 → 20, sedan id 6 → 5.
  assert ds.num_classes == 40 and ds.label_to_category_id[20] == 21
  assert [r.video_id for r in ds.records] == [1, 4]   # 2: unmapped only, 3: crowd only
  im1, im4 = ds.records
  assert [(t.track_id, t.label, t.iscrowd) for t in im1.tracks] == [(1, 0, 0)]
  assert [(t.track_id, t.label, t.iscrowd) for t in im4.tracks] == [(5, 20, 0), (6, 20, 0),
                                                                     (7, 5, 1)]
  assert im4.tracks[1].segmentations == (data["annotations"][5]["segmentation"],)
  assert im1.frame_paths == (os.path.abspath(os.path.join(images_dir, "000000000001.jpg")),)
  for r in ds.records:
    assert r.is_pseudo and 16 <= r.pseudo_length <= 48 and r.length == r.pseudo_length
  assert ds.report.dropped == {"annotation of an unmapped category": 2,
                               "image without annotations": 2}
  again = datasets.load_coco_pseudo(json_path, images_dir, "coco", "coco_to_ytvis19")
  assert [r.pseudo_length for r in again.records] == [r.pseudo_length for r in ds.records]
  lengths = {datasets.pseudo_length(i, (16, 48), seed=0) for i in range(200)}
  assert min(lengths) == 16 and max(lengths) == 48   # inclusive range, like randrange(16, 49)


@pytest.mark.parametrize("field,value,reason,words", [
    ("image_id", 77, "unknown image id", ["annotation 6", "77"]),
    ("segmentation", compressed_rle(rect_mask(10, 12, 0, 2, 0, 2)), "mask size mismatch",
     ["annotation 6", "image 4", "[10, 12]"]),
    ("category_id", 12, "unknown category id", ["annotation 6", "12"]),
])
def test_bad_coco_input(tmp_path, field, value, reason, words):
  json_path, images_dir, data = make_coco(str(tmp_path))
  data["annotations"][5][field] = value
  write_json(json_path, data)
  with pytest.raises(DataError) as info:
    datasets.load_coco_pseudo(json_path, images_dir, "coco", "coco_to_ytvis19")
  for word in [json_path, *words]:
    assert word in str(info.value)
  ds = datasets.load_coco_pseudo(json_path, images_dir, "coco", "coco_to_ytvis19",
                                 on_bad="skip")
  assert ds.report.skipped[reason] == 1
  # An orphan annotation goes alone; a bad annotation of image 4 takes the image with it.
  expected = [1, 4] if reason == "unknown image id" else [1]
  assert [r.video_id for r in ds.records] == expected


# ---- category maps --------------------------------------------------------------------------

COCO_NAMES = {1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus",
              7: "train", 8: "truck", 9: "boat", 16: "bird", 17: "cat", 18: "dog", 19: "horse",
              20: "sheep", 21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe",
              34: "frisbee", 35: "skis", 36: "snowboard", 41: "skateboard", 42: "surfboard",
              43: "tennis racket"}


@pytest.mark.parametrize("name,dataset,size,distinct", [
    ("coco_to_ytvis19", "ytvis19", 21, 19), ("coco_to_ytvis21", "ytvis21", 23, 21),
    ("coco_to_ovis", "ovis", 17, 15)])
def test_category_maps(name, dataset, size, distinct):
  mapping = category_maps.get_category_map(name)
  assert len(mapping) == size and len(set(mapping.values())) == distinct
  targets = {c["id"]: c["name"].lower() for c in category_maps.target_categories(name)}
  assert len(targets) == (25 if dataset == "ovis" else 40)
  assert sorted(targets) == list(range(1, len(targets) + 1))
  same_name = [c for c, t in mapping.items() if COCO_NAMES[c] == targets[t].replace("_", " ")]
  # Most classes map onto the identically named class (person → person, ...).
  assert 1 in same_name and len(same_name) >= size // 2
  with pytest.raises(ValueError, match="coco_to_ovis.*coco_to_ytvis19.*coco_to_ytvis21"):
    category_maps.get_category_map("coco_to_nothing")


# ---- frames ---------------------------------------------------------------------------------


def _record(paths: tuple[str, ...], height: int, width: int, pseudo: int = 0) -> VideoRecord:
  return VideoRecord("t", 9, paths, height, width, pseudo_length=pseudo)


def test_read_frame_decodes_and_names_bad_files(tmp_path):
  good = str(tmp_path / "good.jpg")
  write_jpeg(good, 12, 10, seed=1)
  with Image.open(good) as im:
    reference = np.asarray(im.convert("RGB"))
  image = frames.read_frame(_record((good,), 12, 10), 0)
  assert image.dtype == np.uint8 and image.shape == (12, 10, 3)
  np.testing.assert_array_equal(image, reference)
  # A pseudo-video has one real frame whatever the index.
  np.testing.assert_array_equal(frames.read_frame(_record((good,), 12, 10, pseudo=20), 17),
                                reference)
  with open(good, "rb") as f:
    np.testing.assert_array_equal(
        frames.read_frame(VideoRecord("t", 9, (good,), 12, 10, frame_bytes=(f.read(),)), 0),
        reference)

  big = str(tmp_path / "big.jpg")
  write_jpeg(big, 64, 64, seed=2)
  truncated = str(tmp_path / "truncated.jpg")
  with open(big, "rb") as f, open(truncated, "wb") as g:
    g.write(f.read()[:600])
  with pytest.raises(DataError, match="truncated.jpg"):
    frames.read_frame(_record((truncated,), 64, 64), 0)
  missing = str(tmp_path / "missing.jpg")
  with pytest.raises(DataError, match="missing.jpg.*missing"):
    frames.read_frame(_record((good, missing), 12, 10), 1)
  with pytest.raises(DataError, match="good.jpg.*12x10.*20x10"):
    frames.read_frame(_record((good,), 20, 10), 0)


def test_decode_segmentation_matches_pycocotools():
  rng = np.random.default_rng(0)
  h, w = 13, 17
  mask = rng.random((h, w)) > 0.6
  compressed = compressed_rle(mask)
  np.testing.assert_array_equal(frames.decode_segmentation(compressed, h, w), mask)
  uncompressed = uncompressed_rle(mask)
  reference = mask_util.decode(mask_util.frPyObjects(uncompressed, h, w)).astype(bool)
  np.testing.assert_array_equal(reference, mask)   # the hand encoding is what pycocotools reads
  np.testing.assert_array_equal(frames.decode_segmentation(uncompressed, h, w), mask)
  polygons = [[1.0, 1.0, 12.0, 2.0, 6.0, 11.0], [13.0, 9.0, 16.0, 9.0, 16.0, 12.0, 13.0, 12.0]]
  reference = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polygons, h, w)))
  decoded = frames.decode_segmentation(polygons, h, w)
  assert decoded.dtype == bool and decoded.shape == (h, w) and decoded.sum() > 20
  np.testing.assert_array_equal(decoded, reference.astype(bool))
  # A 4-number "polygon" is invalid (pycocotools would read it as a box): ignored.
  np.testing.assert_array_equal(frames.decode_segmentation([[0, 0, 5, 5]], h, w),
                                np.zeros((h, w), bool))
  assert not frames.decode_segmentation(None, h, w).any()
  with pytest.raises(DataError, match="size"):
    frames.decode_segmentation(compressed, w, h)


# ---- build_source ---------------------------------------------------------------------------


def _config(kind: str, json_path: str = "", frames_dir: str = "", num_classes: int = 3,
            category_map: str = "") -> common.ConfigDict:
  c = common.base_config()
  c.data.num_classes = num_classes
  c.data.sources.main = common.source(kind, json_path, frames_dir, category_map=category_map)
  return c


def test_build_source_dispatch(tmp_path, monkeypatch):
  json_path, frames_dir, _ = make_ytvis(str(tmp_path / "ytvis"))
  c = _config("ytvis", json_path, frames_dir)
  ds = datasets.build_source("main", c.data.sources.main, c)
  assert [r.video_id for r in ds.records] == [1, 2] and ds.records[0].source == "main"
  ev = datasets.build_source("eval", c.data.sources.main, c, for_training=False)
  assert [r.video_id for r in ev.records] == [1, 2, 5]

  coco_json, images_dir, _ = make_coco(str(tmp_path / "coco"))
  c = _config("coco", coco_json, images_dir, num_classes=40, category_map="coco_to_ytvis19")
  assert [r.video_id for r in datasets.build_source("main", c.data.sources.main, c).records] \
      == [1, 4]
  c.data.num_classes = 41
  with pytest.raises(DataError, match="40 classes.*num_classes is 41"):
    datasets.build_source("main", c.data.sources.main, c)
  c.data.sources.main.category_map = "coco_to_mars"
  with pytest.raises(common.ConfigError, match="sources.main.category_map"):
    datasets.build_source("main", c.data.sources.main, c)

  # "synthetic": generate under config.data.synthetic.root, then read {synthetic}/train.json.
  from input_pipeline import synthetic

  calls = []

  def fake_ensure_dataset(root, **kwargs):
    calls.append((root, kwargs))
    make_ytvis(os.path.join(root, "train"))
    os.rename(os.path.join(root, "train", "train.json"), os.path.join(root, "train.json"))
    return root

  monkeypatch.setattr(synthetic, "ensure_dataset", fake_ensure_dataset)
  c = _config("synthetic", *common.synthetic_source_paths("train"))
  c.data.synthetic.root = str(tmp_path / "synth")
  c.data.synthetic.num_train_videos = 37
  ds = datasets.build_source("main", c.data.sources.main, c)
  assert calls[0][0] == str(tmp_path / "synth") and calls[0][1]["num_train_videos"] == 37
  assert [r.video_id for r in ds.records] == [1, 2]
  assert ds.records[0].frame_paths[0].startswith(str(tmp_path / "synth" / "train" / "JPEGImages"))
