"""Training pipeline and eval source on tiny hand-made videos (JPEG frames + pycocotools RLEs)."""

from __future__ import annotations

import dataclasses
import os
import types

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from configs import common
from input_pipeline import eval_source, frames, pipeline, transforms
from input_pipeline.records import InstanceTrack, VideoRecord

# ---- tiny datasets ---------------------------------------------------------------------------


def _rle(mask: np.ndarray) -> dict:
  rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _track_box(video_id: int, track: int, t: int, h: int, w: int) -> tuple[int, int, int, int]:
  """A rectangle that moves with t; different per video and track."""
  y0 = (3 + 5 * track + t + video_id) % (h - 12)
  x0 = (2 + 9 * track + 2 * t + 3 * video_id) % (w - 14)
  return y0, x0, y0 + 10, x0 + 12


def make_video(root, video_id: int, length: int = 6, h: int = 40, w: int = 56,
               num_tracks: int = 2, source: str = "toy", absent: dict | None = None,
               pseudo_length: int = 0, crowd: tuple[int, ...] = ()) -> VideoRecord:
  """Writes JPEG frames; track k is a coloured rectangle (None where absent[k] lists frames)."""
  absent = absent or {}
  folder = os.path.join(str(root), f"{source}_{video_id}")
  os.makedirs(folder, exist_ok=True)
  paths, segs = [], [[] for _ in range(num_tracks)]
  for t in range(length):
    image = np.full((h, w, 3), 40, np.uint8)
    for k in range(num_tracks):
      mask = np.zeros((h, w), bool)
      if t not in absent.get(k, ()):
        y0, x0, y1, x1 = _track_box(video_id, k, t, h, w)
        mask[y0:y1, x0:x1] = True
        image[mask] = (200, 60 * k % 256, 255 - 50 * k)
      segs[k].append(_rle(mask) if mask.any() else None)
    path = os.path.join(folder, f"{t:05d}.jpg")
    Image.fromarray(image).save(path, quality=95)
    paths.append(path)
  tracks = tuple(InstanceTrack(track_id=1000 * video_id + k, label=k % 3,
                               segmentations=tuple(segs[k]), iscrowd=int(k in crowd))
                 for k in range(num_tracks))
  return VideoRecord(source=source, video_id=video_id, frame_paths=tuple(paths), height=h,
                     width=w, tracks=tracks, pseudo_length=pseudo_length)


def loaded(records) -> types.SimpleNamespace:
  return types.SimpleNamespace(records=list(records), label_to_category_id={0: 1, 1: 2, 2: 3})


def small_config(batch_size: int = 4, sources=("toy",), ratios=(1.0,)) -> common.ConfigDict:
  c = common.base_config()
  for name, ratio in zip(sources, ratios, strict=True):
    c.data.sources[name] = common.source("ytvis", "unused.json", "unused", ratio=ratio)
  c.batch_size = batch_size
  c.data.prefetch = 1
  c.input.num_frames = 3
  c.input.sampling_frame_range = 2
  c.input.min_size_train = (32, 40)
  c.input.max_size_train = 64
  c.input.crop.update(dict(prob=0.5, resize_min_sizes=(40, 48), resize_max_size=80,
                           min_size=24, max_size=40))
  c.input.pseudo.min_size_train = (32,)
  c.input.pseudo.max_size_train = 64
  c.input.size_buckets = ((64, 64), (40, 64), (64, 40))
  c.input.max_instances = 3
  c.input.min_size_test = 32
  c.input.max_size_test = 1333
  return c


def take(iterator, n: int) -> list[dict]:
  return [next(iterator) for _ in range(n)]


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  root = tmp_path_factory.mktemp("toy")
  return [make_video(root, v, length=4 + v % 5, num_tracks=1 + v % 4) for v in range(8)]


# ---- one clip --------------------------------------------------------------------------------


def _identity_plan(record, indices, crop_boxes=None, out=None, source_index=0):
  size = (record.height, record.width)
  aug = transforms.ClipAugmentation(size, None, crop_boxes, out or size, flip=False)
  return pipeline.ClipPlan(record, source_index, np.asarray(indices, np.int32), aug, seed=0)


def test_load_clip_decodes_masks_and_presence(tmp_path):
  # Track 1 is absent (None) in frames 1-2; track 2 is absent in every sampled frame; track 3
  # is a crowd track; all should follow the official rules.
  record = make_video(tmp_path, 3, length=5, num_tracks=4,
                      absent={1: (1, 2), 2: (0, 1, 2, 4)}, crowd=(3,))
  clip = pipeline.load_clip(_identity_plan(record, [0, 1, 2]))
  assert clip.images.shape == (3, 40, 56, 3) and clip.images.dtype == np.uint8
  np.testing.assert_array_equal(clip.track_ids, [3000, 3001])
  np.testing.assert_array_equal(clip.labels, [0, 1])
  np.testing.assert_array_equal(clip.present, [[True, True, True], [True, False, False]])
  for n, k in enumerate((0, 1)):
    for t in range(3):
      seg = record.tracks[k].segmentations[t]
      want = mask_util.decode(seg).astype(bool) if seg else np.zeros((40, 56), bool)
      np.testing.assert_array_equal(clip.masks[n, t], want)
  # Pixels of the decoded frames: the JPEG of frame t (identity augmentation).
  np.testing.assert_array_equal(clip.images[2], np.asarray(Image.open(record.frame_paths[2])))
  np.testing.assert_array_equal(clip.frame_indices, [0, 1, 2])


def test_instances_cropped_away_are_dropped(tmp_path):
  record = make_video(tmp_path, 0, length=3, num_tracks=2)
  # Crop the right 16 columns only: track 0 sits at x < 26 in every frame, track 1 further right.
  boxes = np.array([[0, 40, 40, 16]] * 3, np.int32)
  clip = pipeline.load_clip(_identity_plan(record, [0, 1, 2], boxes, out=(40, 16)))
  kept = [int(i) for i in clip.track_ids]
  for k, track in enumerate(record.tracks):
    visible = any(mask_util.decode(track.segmentations[t])[:, 40:].any() for t in range(3))
    assert (track.track_id in kept) == visible, k
  assert clip.masks.shape[1:] == (3, 40, 16)


def test_pseudo_video_reads_one_image_and_rotates(tmp_path):
  record = make_video(tmp_path, 7, length=1, num_tracks=2, pseudo_length=30)
  cfg = small_config().input
  plan = pipeline.plan_clip(record, np.random.default_rng(0), cfg)
  assert plan.augmentation.rotation_angles.shape == (3,)
  assert np.all(plan.frame_indices < cfg.pseudo.fake_length[1])
  clip = pipeline.load_clip(plan)
  assert clip.images.shape[0] == 3
  # Different per-frame rotations of one image: frames differ, the object is in all of them.
  assert not np.array_equal(clip.images[0], clip.images[2])
  assert clip.present.all()


def test_pad_instances_subsamples_and_pads(tmp_path):
  record = make_video(tmp_path, 1, length=2, num_tracks=5)
  clip = pipeline.load_clip(_identity_plan(record, [0, 1]))
  assert clip.labels.shape == (5,)
  element, dropped = pipeline.pad_instances(clip, 3, np.random.default_rng(0))
  assert dropped == 2
  kept = element["track_ids"].tolist()
  assert len(set(kept)) == 3 and set(kept) <= set(clip.track_ids.tolist())
  for g, tid in enumerate(kept):
    n = clip.track_ids.tolist().index(tid)
    np.testing.assert_array_equal(element["masks"][g], clip.masks[n])
    assert element["labels"][g] == clip.labels[n]
  element, dropped = pipeline.pad_instances(clip, 8, np.random.default_rng(0))
  assert dropped == 0
  np.testing.assert_array_equal(element["labels"][5:], -1)
  np.testing.assert_array_equal(element["track_ids"][5:], -1)
  assert element["instance_valid"].tolist() == [True] * 5 + [False] * 3
  assert element["masks"].shape[0] == 5 and not element["present"][5:].any()


def test_choose_bucket():
  buckets = ((512, 768), (768, 512), (768, 768))
  assert pipeline.choose_bucket([(300, 700), (512, 600)], buckets) == (512, 768)
  assert pipeline.choose_bucket([(700, 300)], buckets) == (768, 512)
  assert pipeline.choose_bucket([(300, 700), (700, 300)], buckets) == (768, 768)
  # Nothing holds both orientations: keep the most pixels (2 landscape clips win), then the
  # portrait clip is shrunk into it.
  two = ((512, 768), (768, 512))
  assert pipeline.choose_bucket([(300, 700), (400, 600), (700, 300)], two) == (512, 768)
  assert pipeline.choose_bucket([(300, 700), (700, 300), (600, 400)], two) == (768, 512)
  assert pipeline.choose_bucket([(800, 100)], two) == (768, 512)


def test_mixed_orientations_without_a_square_bucket_shrink_the_minority(toy):
  c = small_config(batch_size=8)
  c.input.size_buckets = ((40, 64), (64, 40))
  c.input.crop.prob = 1.0  # random crop aspect ratios: both orientations in most batches
  it, info = pipeline.make_train_iterator(c, {"toy": loaded(toy)}, 0, 1)
  for batch in take(it, 3):
    big_h, big_w = batch["images"].shape[2:4]
    assert (big_h, big_w) in info.buckets
    assert np.all(batch["image_sizes"] <= [big_h, big_w])
    np.testing.assert_array_equal(batch["present"], batch["masks"].any(axis=(-2, -1)))
  assert info.counters.shrunk_clips > 0
  assert pipeline.bad_sample_counts(info)["shrunk_clips"] == info.counters.shrunk_clips


def test_config_that_cannot_fit_a_bucket_is_rejected(toy):
  c = small_config()
  c.input.min_size_train = (64,)
  c.input.max_size_train = 100
  with pytest.raises(ValueError, match="size_buckets"):
    pipeline.make_train_iterator(c, {"toy": loaded(toy)}, 0, 1)


# ---- the training iterator -------------------------------------------------------------------


def test_static_batch_layout(toy):
  c = small_config()
  it, info = pipeline.make_train_iterator(c, {"toy": loaded(toy)}, 0, 1)
  for batch in take(it, 3):
    h, w = batch["images"].shape[2:4]
    assert (h, w) in info.buckets
    spec = info.batch_spec((h, w))
    assert set(batch) == set(spec)
    for key, (shape, dtype) in spec.items():
      assert batch[key].shape == shape and batch[key].dtype == dtype, key
    # The bucket is the smallest one holding every clip.
    sizes = batch["image_sizes"]
    assert (h, w) == pipeline.choose_bucket(sizes.tolist(), info.buckets)
    for b, (hh, ww) in enumerate(sizes):
      assert batch["image_valid"][b, :hh, :ww].all() and batch["image_valid"][b].sum() == hh * ww
      assert not batch["images"][b, :, hh:].any() and not batch["images"][b, :, :, ww:].any()
      assert not batch["masks"][b, ..., hh:, :].any() and not batch["masks"][b, ..., ww:].any()
    valid = batch["instance_valid"]
    np.testing.assert_array_equal(batch["present"], batch["masks"].any(axis=(-2, -1)))
    np.testing.assert_array_equal(valid, batch["present"].any(-1))
    np.testing.assert_array_equal(valid, batch["labels"] >= 0)
    np.testing.assert_array_equal(valid, batch["track_ids"] >= 0)
    assert np.all(np.diff(batch["frame_indices"], axis=1) >= 0)
    assert set(batch["video_ids"].tolist()) <= set(range(8))
  assert info.counters.batches == 3
  assert pipeline.bad_sample_counts(info)["skipped"] == 0
  assert info.counters.shrunk_clips == 0  # a (64, 64) bucket holds any mix


def test_same_seed_same_batches_different_seed_differs(toy):
  c = small_config()
  a = take(pipeline.make_train_iterator(c, {"toy": loaded(toy)}, 0, 1)[0], 3)
  b = take(pipeline.make_train_iterator(c, {"toy": loaded(toy)}, 0, 1)[0], 3)
  assert_batches_equal(a, b)
  c.seed = 1
  d = take(pipeline.make_train_iterator(c, {"toy": loaded(toy)}, 0, 1)[0], 3)
  assert any(x["images"].shape != y["images"].shape or not np.array_equal(x["images"], y["images"])
             for x, y in zip(a, d, strict=True))


def test_restore_from_state_reproduces_next_batches(toy):
  c = small_config()
  it, _ = pipeline.make_train_iterator(c, {"toy": loaded(toy)}, 0, 1)
  take(it, 2)
  state = it.get_state()
  expected = take(it, 3)
  fresh, _ = pipeline.make_train_iterator(c, {"toy": loaded(toy)}, 0, 1)
  fresh.set_state(state)
  assert_batches_equal(take(fresh, 3), expected)


def test_process_shards_are_disjoint_and_cover(toy):
  c = small_config(batch_size=4)
  c.data.shuffle = False
  single = take(pipeline.make_train_iterator(c, {"toy": loaded(toy)}, 0, 1)[0], 2)
  shards = [take(pipeline.make_train_iterator(c, {"toy": loaded(toy)}, p, 2)[0], 2)
            for p in range(2)]
  seen = [np.concatenate([b["video_ids"] for b in shard]).tolist() for shard in shards]
  # One epoch (8 videos, 2 steps of 4): the two local streams split it without overlap.
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == list(range(8))
  # And each global batch is exactly the concatenation of the two local batches.
  for step in range(2):
    for key in single[step]:
      if shards[0][step][key].shape[1:] == single[step][key].shape[1:]:
        np.testing.assert_array_equal(
            np.concatenate([shards[0][step][key], shards[1][step][key]]), single[step][key])
      else:
        pytest.fail(f"bucket differs between processes for {key}")
  with pytest.raises(ValueError, match="divisible"):
    pipeline.make_train_iterator(c, {"toy": loaded(toy)}, 0, 3)


def test_mixing_ratio(tmp_path):
  a = [make_video(tmp_path, v, length=2, h=24, w=32, num_tracks=1, source="a") for v in range(3)]
  b = [make_video(tmp_path, 10 + v, length=2, h=24, w=32, num_tracks=1, source="b")
       for v in range(3)]
  c = small_config(batch_size=8, sources=("a", "b"), ratios=(3.0, 1.0))
  c.input.num_frames = 1
  c.input.crop.enabled = False
  c.input.min_size_train = (24,)
  it, info = pipeline.make_train_iterator(c, {"a": loaded(a), "b": loaded(b)}, 0, 1)
  assert info.source_names == ("a", "b")
  ids = np.concatenate([next(it)["source_ids"] for _ in range(50)])
  share = np.mean(ids == 0)
  assert abs(share - 0.75) < 0.03, share
  # The source id matches where the video came from.
  assert np.all((ids == 0) | (ids == 1))


# ---- bad samples -----------------------------------------------------------------------------


def _break(record: VideoRecord, how: str) -> str:
  path = record.frame_paths[0]
  if how == "missing":
    os.remove(path)
  elif how == "truncated":
    data = open(path, "rb").read()
    with open(path, "wb") as f:
      f.write(data[: len(data) // 3])
  elif how == "missized":
    Image.new("RGB", (record.width + 8, record.height), (9, 9, 9)).save(path)
  return path


@pytest.mark.parametrize("how", ["missing", "truncated", "missized"])
def test_bad_frame_errors_with_file_name(tmp_path, how):
  record = make_video(tmp_path, 0, length=1, num_tracks=1)
  path = _break(record, how)
  c = small_config(batch_size=2)
  it, _ = pipeline.make_train_iterator(c, {"toy": loaded([record])}, 0, 1)
  with pytest.raises(frames.DataError, match=os.path.basename(path)):
    next(it)


@pytest.mark.parametrize("how", ["missing", "truncated", "missized"])
def test_bad_frame_skipped_and_counted(tmp_path, how):
  good = [make_video(tmp_path, v, length=3, num_tracks=1) for v in range(1, 4)]
  bad = make_video(tmp_path, 0, length=1, num_tracks=1)
  _break(bad, how)
  c = small_config(batch_size=4)
  c.data.on_bad_sample = "skip"
  c.data.shuffle = False
  it, info = pipeline.make_train_iterator(c, {"toy": loaded([bad] + good)}, 0, 1)
  batches = take(it, 2)
  for batch in batches:
    assert batch["images"].shape[0] == 4
    assert 0 not in batch["video_ids"].tolist()
  counts = pipeline.bad_sample_counts(info)
  assert counts["skipped"] >= 2 and counts["skipped_per_source"] == {"toy": counts["skipped"]}


# ---- evaluation source -----------------------------------------------------------------------


def test_eval_source_sizes_and_chunks(tmp_path, monkeypatch):
  record = make_video(tmp_path, 5, length=7, h=60, w=80, num_tracks=2)
  c = small_config()
  source = eval_source.make_eval_source(c, loaded([record]))
  assert len(source) == 1
  video = source[0]
  # 80 * 32 / 60 = 42.67 -> 43; padded to multiples of 32.
  assert video.original_size == (60, 80) and video.resized_size == (32, 43)
  assert video.padded_size == (32, 64) and video.length == 7
  assert video.tracks == record.tracks

  reads = []
  real_read = frames.read_frame
  # Only count this video's reads: other tests' iterators may still prefetch in threads.
  monkeypatch.setattr(frames, "read_frame",
                      lambda r, i: (r is record and reads.append(i)) or real_read(r, i))
  chunks = eval_source.iter_frame_chunks(video, 3)
  first = next(chunks)
  assert reads == [0, 1, 2]  # lazily: only the first chunk has been read
  rest = list(chunks)
  assert [ch.start for ch in [first, *rest]] == [0, 3, 6]
  assert [ch.images.shape[0] for ch in [first, *rest]] == [3, 3, 1]
  frame6 = np.asarray(Image.open(record.frame_paths[6]).resize((43, 32), Image.BILINEAR))
  np.testing.assert_array_equal(rest[-1].images[0, :32, :43], frame6)
  assert not rest[-1].images[0, :, 43:].any()
  padded = list(eval_source.iter_frame_chunks(video, 3, pad_last=True))
  assert padded[-1].images.shape == (3, 32, 64, 3) and padded[-1].num_valid == 1
  assert not padded[-1].images[1:].any()


def test_eval_source_process_split(tmp_path):
  records = [dataclasses.replace(make_video(tmp_path, 0, length=1), video_id=v) for v in range(5)]
  c = small_config()
  ids = [[v.video_id for v in eval_source.make_eval_source(c, records, p, 2)] for p in range(2)]
  assert sorted(ids[0] + ids[1]) == list(range(5)) and not set(ids[0]) & set(ids[1])


def test_worker_processes_give_the_same_batches(toy):
  c = small_config()
  want = take(pipeline.make_train_iterator(c, {"toy": loaded(toy)}, 0, 1)[0], 2)
  c.data.num_workers = 1
  it, info = pipeline.make_train_iterator(c, {"toy": loaded(toy)}, 0, 1)
  try:
    assert_batches_equal(take(it, 2), want)
    assert info.counters.batches == 2  # counters are kept in this process
  finally:
    it.close()


def test_eval_source_square_padding(tmp_path):
  landscape = make_video(tmp_path, 5, length=3, h=60, w=80, num_tracks=1)
  portrait = make_video(tmp_path, 6, length=3, h=80, w=60, num_tracks=1)
  c = small_config()
  c.input.test_pad_square = True
  source = eval_source.make_eval_source(c, loaded([landscape, portrait]))
  # Resized as without the option (shorter side 32, cap max_size_test); one square padding:
  # ceil(max(max_size_test, 64) / 32) * 32 for every video.
  side = -(-max(c.input.max_size_test, 64) // 32) * 32
  assert source[0].resized_size == (32, 43) and source[1].resized_size == (43, 32)
  assert source[0].padded_size == source[1].padded_size == (side, side)
  chunk = next(eval_source.iter_frame_chunks(source[1], 3))
  assert chunk.images.shape == (3, side, side, 3) and not chunk.images[:, 43:].any()
