"""ArrayRecord conversion (tfds builder) and random-access reading against the json reader."""

from __future__ import annotations

import dataclasses
import os
import pickle
from concurrent.futures import ThreadPoolExecutor

import grain
import numpy as np
import pytest

from configs import common
from input_pipeline import array_record, datasets, frames
from tests.test_datasets import make_ytvis


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("ar"))
  json_path, frames_dir, _ = make_ytvis(os.path.join(root, "data"), occlusion=True)
  out = os.path.join(root, "out")
  array_record.main(["--json", json_path, "--frames", frames_dir, "--out", out,
                     "--shards", "2"])
  return json_path, frames_dir, out


def _without_bytes(records):
  return [dataclasses.replace(r, frame_bytes=None) for r in records]


def test_round_trip_equals_json_reader(converted):
  json_path, frames_dir, out = converted
  shards = [n for n in os.listdir(array_record._dataset_dir(out)) if ".array_record-" in n]
  assert len(shards) == 2
  for for_training in (False, True):
    reference = datasets.load_ytvis(json_path, frames_dir, "src", for_training=for_training)
    source = array_record.ArrayRecordVideoSource(out, "src", for_training=for_training)
    assert len(source) == len(reference.records) == (2 if for_training else 3)
    assert source.video_ids == tuple(r.video_id for r in reference.records)
    assert source.label_to_category_id == reference.label_to_category_id
    assert [c["id"] for c in source.categories] == [c["id"] for c in reference.categories]
    records = list(source)
    assert _without_bytes(records) == list(reference.records)
    for got, want in zip(records, reference.records, strict=True):
      assert got.frame_bytes is not None and len(got.frame_bytes) == len(want.frame_paths)
      for i in range(want.length):
        np.testing.assert_array_equal(frames.read_frame(got, i), frames.read_frame(want, i))


def test_random_access_threads_and_pickle(converted):
  _, _, out = converted
  source = array_record.ArrayRecordVideoSource(out, for_training=False)
  assert len(source) == 3
  ids = {i: source[i].video_id for i in range(3)}
  assert ids == {0: 1, 1: 2, 2: 5}
  order = [2, 0, 1, 1, np.int64(0), -1]
  assert [source[i].video_id for i in order] == [5, 1, 2, 2, 1, 5]
  with pytest.raises(IndexError):
    source[3]
  with ThreadPoolExecutor(4) as pool:
    got = list(pool.map(lambda i: source[i % 3].video_id, range(30)))
  assert got == [ids[i % 3] for i in range(30)]
  dataset = grain.MapDataset.source(source).map(lambda r: r.video_id)
  assert [dataset[i] for i in (1, 2, 0)] == [2, 5, 1]
  clone = pickle.loads(pickle.dumps(source))
  assert _without_bytes([clone[1]]) == _without_bytes([source[1]])
  assert clone[1].frame_bytes == source[1].frame_bytes


def test_category_map_at_read_time(converted):
  _, _, out = converted
  # Treat the stored ids as COCO ids: 3 → sedan (label 5), 7 → train (16), 11 unmapped.
  source = array_record.ArrayRecordVideoSource(out, category_map="coco_to_ytvis19",
                                               for_training=True)
  assert len(source.label_to_category_id) == 40
  assert [[(t.track_id, t.label) for t in r.tracks] for r in source] == [[(103, 5)],
                                                                         [(101, 16)]]
  assert source.num_tracks == 2


def test_build_source_array_record(converted):
  json_path, frames_dir, out = converted
  c = common.base_config()
  c.data.num_classes = 3
  c.data.sources.ar = common.source("array_record", out)
  loaded = datasets.build_source("ar", c.data.sources.ar, c)
  assert isinstance(loaded.records, array_record.ArrayRecordVideoSource)
  assert loaded.records.video_ids == (1, 2)
  assert (loaded.report.videos, loaded.report.tracks, loaded.report.frames) == (2, 3, 5)
  assert loaded.report.dropped == {"video without annotations": 1}
  assert loaded.records[0].source == "ar"


def test_existing_conversion_and_bad_paths(converted, tmp_path):
  json_path, frames_dir, out = converted
  with pytest.raises(FileExistsError, match="--overwrite"):
    array_record.convert(json_path, frames_dir, out)
  with pytest.raises(datasets.DataError, match="found no"):
    array_record.ArrayRecordVideoSource(str(tmp_path))
  # A glob naming the one dataset directory works too.
  assert len(array_record.ArrayRecordVideoSource(os.path.join(out, "*", "1.*"))) == 3
