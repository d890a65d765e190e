"""ArrayRecord shards of YouTube-VIS / OVIS datasets, written and read through tensorflow-datasets.

Convert once, then read with random access (one record per video: metadata json + the encoded
bytes of every frame + annotations), which avoids opening thousands of small JPEG files per epoch::

  python -m input_pipeline.array_record --json train.json --frames train/JPEGImages \\
      --out /data/ytvis19_train_ar [--shards 16] [--on-bad skip] [--overwrite]

and point a source at it: ``source("array_record", json="/data/ytvis19_train_ar")``.

Why tfds (checked with tensorflow-datasets 4.9.10 and array-record 0.8.6, TensorFlow *not*
installed): a ``GeneratorBasedBuilder`` with ``file_format="array_record"`` prepares the dataset,
and ``tfds.builder_from_directory(dir).as_data_source(split)`` (what ``tfds.data_source`` returns)
reads it, both without TensorFlow, provided no feature needs a TF op. ``tfds.features.Image``
does: encoding a numpy frame calls ``tf.image.encode_jpeg`` (``ModuleNotFoundError: No module
named 'tensorflow'``), and reading it back decodes *every* frame of the video on each access
(``SkipDecoding`` is not supported by the numpy data source: ``'SkipDecoding' object has no
attribute 'decode_batch_example_np'``). Frames are therefore a variable-length bytes tensor
holding the original file bytes (no re-encoding: decoded frames equal the json reader's), and
the pipeline decodes only the frames a clip samples. (tfds needs the ``importlib-resources``
package, pinned in requirements.txt, to locate a builder class defined inside a package.)
The builder sets ``disable_shuffling`` so record ``i`` is the ``i``-th video in id order; the
reader checks each record's id anyway.

Category ids are stored as dataset ids; the label space is chosen when reading (json order, or
a category map), so one conversion serves every config. All videos are stored (as for
evaluation); ``for_training=True`` hides the ones without a usable annotation using a per-video
summary kept in the dataset metadata, without reading the shards.

One dataset per ``--out`` directory (the single split is ``train`` whatever the json).
"""

from __future__ import annotations

import argparse
import glob
import json
import operator
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import category_maps, datasets
from input_pipeline.datasets import DataError, LoadedDataset, LoadReport
from input_pipeline.records import InstanceTrack, VideoRecord

FORMAT_VERSION = 1
_SPLIT = "train"


class VisJaxVideos(tfds.core.GeneratorBasedBuilder):
  """tfds builder: one example per video of an already loaded YouTube-VIS/OVIS dataset."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "One record per video: meta json, frame bytes."}

  def __init__(self, *, loaded: LoadedDataset, frames_dir: str, **kwargs: Any):
    # Set before super().__init__, which calls _info().
    self._loaded = loaded
    self._frames_dir = frames_dir
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    loaded = self._loaded
    cat_of = loaded.label_to_category_id
    videos = [{
        "id": r.video_id,
        "length": len(r.frame_paths),
        "categories": [cat_of[t.label] for t in r.tracks],
        "trainable": [cat_of[t.label] for t in r.tracks
                      if datasets.has_training_instance([t])],
    } for r in loaded.records]
    return tfds.core.DatasetInfo(
        builder=self,
        description="YouTube-VIS-format videos converted by input_pipeline.array_record.",
        features=tfds.features.FeaturesDict({
            "video_id": np.int64,
            "meta": tfds.features.Text(),
            "frames": tfds.features.Tensor(shape=(None,), dtype=np.object_),
        }),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(
            format_version=FORMAT_VERSION,
            json_path=os.path.abspath(loaded.report.json_path),
            frames_dir=os.path.abspath(self._frames_dir),
            categories=loaded.categories,
            videos=videos,
            report=loaded.report.as_dict(),
        ),
    )

  def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[Any]]:
    del dl_manager  # nothing to download
    return {_SPLIT: self._generate_examples()}

  def _generate_examples(self) -> Iterator[tuple[int, dict[str, Any]]]:
    cat_of = self._loaded.label_to_category_id
    for r in self._loaded.records:
      frames = []
      for path in r.frame_paths:
        with open(path, "rb") as f:
          frames.append(f.read())
      meta = {
          "video_id": r.video_id, "height": r.height, "width": r.width,
          "frame_paths": list(r.frame_paths),
          "tracks": [{"id": t.track_id, "category_id": cat_of[t.label], "iscrowd": t.iscrowd,
                      "segmentations": list(t.segmentations),
                      "occlusion": None if t.occlusion is None else list(t.occlusion)}
                     for t in r.tracks],
      }
      yield r.video_id, {"video_id": r.video_id, "meta": json.dumps(meta),
                         "frames": np.array(frames, dtype=object)}


def convert(json_path: str, frames_dir: str, out_dir: str, shards: int | None = None,
            on_bad: str = "error", overwrite: bool = False) -> str:
  """Converts a YouTube-VIS/OVIS json + frame folder into ArrayRecord shards under ``out_dir``.

  Args:
    json_path, frames_dir: as for ``datasets.load_ytvis`` (read with ``for_training=False``).
    out_dir: tfds data dir; the dataset lands in ``out_dir/vis_jax_videos/1.0.0``.
    shards: number of shard files (tfds chooses from the size when ``None``).
    on_bad: ``"error"`` or ``"skip"`` bad videos/annotations while reading the json.
    overwrite: replace an existing conversion instead of failing.

  Returns:
    The dataset directory (what ``ArrayRecordVideoSource`` accepts, as does ``out_dir``).
  """
  loaded = datasets.load_ytvis(json_path, frames_dir, "convert", on_bad=on_bad,
                               check_files=True, for_training=False)
  builder = VisJaxVideos(loaded=loaded, frames_dir=frames_dir, data_dir=out_dir,
                         file_format="array_record")
  if os.path.exists(builder.data_dir):
    if not overwrite:
      raise FileExistsError(f"{builder.data_dir} already holds a conversion; pass --overwrite "
                            "to replace it")
    shutil.rmtree(builder.data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(num_shards=shards))
  return builder.data_dir


def _dataset_dir(path: str) -> str:
  """The single tfds dataset directory named by ``path`` (a dir or a glob over dirs)."""
  matches = sorted(glob.glob(path)) if any(c in path for c in "*?[") else [path]
  found = []
  for m in matches:
    if os.path.isfile(os.path.join(m, "dataset_info.json")):
      found.append(m)
    else:
      found += [os.path.dirname(p)
                for p in sorted(glob.glob(os.path.join(m, "*", "*", "dataset_info.json")))]
  if len(found) != 1:
    what = "no" if not found else f"{len(found)} ({found})"
    raise DataError(f"{path}: expected one converted dataset (a directory with "
                    f"dataset_info.json, or its tfds data dir), found {what}")
  return found[0]


class ArrayRecordVideoSource(Sequence[VideoRecord]):
  """Random-access ``VideoRecord``s (with ``frame_bytes``) of a converted dataset.

  Grain-compatible (``__len__``, ``__getitem__``), safe to share between threads (array-record
  keeps one thread-safe reader per shard) and picklable for grain worker processes (the shard
  readers are reopened lazily in each process).

  Attributes:
    path: the dataset directory.
    categories: categories of the label space (json's or the category map's target's).
    label_to_category_id: contiguous label → dataset category id.
    metadata: the conversion's metadata (json path, per-video summary, conversion report).
  """

  def __init__(self, pattern_or_dir: str, source_name: str = "array_record",
               category_map: str | None = None, for_training: bool = False):
    self.path = _dataset_dir(pattern_or_dir)
    self.source_name = source_name
    builder = tfds.builder_from_directory(self.path)
    self.metadata = dict(builder.info.metadata or {})
    if self.metadata.get("format_version") != FORMAT_VERSION:
      raise DataError(f"{self.path}: format version {self.metadata.get('format_version')} is "
                      f"not {FORMAT_VERSION}; convert the dataset again")
    json_cats = {int(c["id"]): c for c in self.metadata["categories"]}
    self._cat_to_label, self.categories, self.label_to_category_id = datasets.label_space(
        json_cats, category_map)
    videos = self.metadata["videos"]
    keep = (lambda v: any(c in self._cat_to_label for c in v["trainable"])) if for_training \
        else (lambda v: True)
    self._indices = [i for i, v in enumerate(videos) if keep(v)]
    self.video_ids = tuple(int(videos[i]["id"]) for i in self._indices)
    self.lengths = tuple(int(videos[i]["length"]) for i in self._indices)
    self.num_tracks = sum(sum(c in self._cat_to_label for c in videos[i]["categories"])
                          for i in self._indices)
    self._data = None
    self._lock = threading.Lock()

  def __getstate__(self) -> dict[str, Any]:
    state = dict(self.__dict__)
    state["_data"] = None
    del state["_lock"]
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def _source(self) -> Any:
    if self._data is None:
      with self._lock:
        if self._data is None:
          self._data = tfds.builder_from_directory(self.path).as_data_source(split=_SPLIT)
    return self._data

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: Any) -> VideoRecord:  # Sequence allows slices; we do not.
    i = operator.index(index)
    n = len(self._indices)
    if i < 0:
      i += n
    if not 0 <= i < n:
      raise IndexError(f"index {index} out of range for {n} videos in {self.path}")
    example = self._source()[self._indices[i]]
    meta = json.loads(example["meta"])
    if meta["video_id"] != self.video_ids[i]:
      raise DataError(f"{self.path}: record {self._indices[i]} holds video {meta['video_id']}, "
                      f"the metadata says {self.video_ids[i]}; convert the dataset again")
    tracks = tuple(
        InstanceTrack(track_id=t["id"], label=self._cat_to_label[t["category_id"]],
                      segmentations=tuple(t["segmentations"]), iscrowd=t["iscrowd"],
                      occlusion=None if t["occlusion"] is None else tuple(t["occlusion"]))
        for t in meta["tracks"] if t["category_id"] in self._cat_to_label)
    return VideoRecord(
        source=self.source_name, video_id=meta["video_id"],
        frame_paths=tuple(meta["frame_paths"]), height=meta["height"], width=meta["width"],
        tracks=tracks, frame_bytes=tuple(bytes(b) for b in example["frames"]))

  def __iter__(self) -> Iterator[VideoRecord]:
    for i in range(len(self)):
      yield self[i]


def load_array_record(pattern_or_dir: str, source_name: str, category_map: str | None = None,
                      for_training: bool = True) -> LoadedDataset:
  """A converted dataset as a ``LoadedDataset`` whose ``records`` is a lazy source."""
  if category_map:
    category_maps.get_category_map(category_map)  # fail early on an unknown name
  source = ArrayRecordVideoSource(pattern_or_dir, source_name, category_map, for_training)
  videos = source.metadata["videos"]
  report = LoadReport(source_name, "array_record", source.path, videos=len(source),
                      tracks=source.num_tracks, frames=sum(source.lengths))
  if for_training and len(source) < len(videos):
    report.drop("video without annotations", len(videos) - len(source))
  if for_training and not len(source):
    raise DataError(f"{source.path}: no usable training video (converted from "
                    f"{source.metadata.get('json_path')})")
  return LoadedDataset(source, source.categories, source.label_to_category_id, report)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--json", required=True, help="YouTube-VIS / OVIS annotation json")
  parser.add_argument("--frames", required=True, help="frame folder (<frames>/<file_name>)")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--shards", type=int, default=None, help="number of shard files")
  parser.add_argument("--on-bad", choices=datasets.ON_BAD_CHOICES, default="error")
  parser.add_argument("--overwrite", action="store_true")
  args = parser.parse_args(argv)
  try:
    path = convert(args.json, args.frames, args.out, args.shards, args.on_bad, args.overwrite)
  except (DataError, FileExistsError) as e:
    raise SystemExit(f"error: {e}") from e
  source = ArrayRecordVideoSource(path)
  print(json.dumps({"dataset_dir": path, "videos": len(source),
                    "frames": sum(source.lengths),
                    "skipped": source.metadata["report"]["skipped"]}, indent=2))


if __name__ == "__main__":
  main()
