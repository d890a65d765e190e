"""Synthetic YouTube-VIS data: format checked with pycocotools, determinism, ensure_dataset."""

import dataclasses
import filecmp
import json
import math
import os
import threading

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from input_pipeline import synthetic, synthetic_shapes

# Long enough videos that objects enter, leave and get hidden; small frames keep it fast.
PARAMS = dict(num_train_videos=12, num_valid_videos=3, seed=0, min_frames=16, max_frames=28,
              short_side=48)
OCC_NAMES = {"no_occlusion", "slight_occlusion", "severe_occlusion"}
# pycocotools' decode trips a numpy 2 deprecation on every call; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("synth"))
  synthetic.generate(root, occlusion_labels=True, **PARAMS)
  return root


def _load(root, split):
  with open(os.path.join(root, f"{split}.json")) as f:
    return json.load(f)


def _decode(seg, h, w):
  """Decodes a GT segmentation the way the official ytvos.annToRLE does."""
  if isinstance(seg["counts"], list):
    rle = mask_util.frPyObjects(seg, h, w)
  else:
    rle = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
  return mask_util.decode(rle).astype(bool)


def _masks(data):
  """{annotation id: [mask [H, W] bool | None per frame]}."""
  videos = {v["id"]: v for v in data["videos"]}
  out = {}
  for ann in data["annotations"]:
    v = videos[ann["video_id"]]
    out[ann["id"]] = [None if s is None else _decode(s, v["height"], v["width"])
                      for s in ann["segmentations"]]
  return out


def _files(root):
  return sorted(os.path.relpath(os.path.join(d, f), root)
                for d, _, fs in os.walk(root) for f in fs)


def test_rle_uncompressed_hand_cases():
  # Column-major: [[0, 1], [1, 1]] flattens to 0, 1, 1, 1.
  m = np.array([[0, 1], [1, 1]], bool)
  assert synthetic.rle_uncompressed(m) == {"size": [2, 2], "counts": [1, 3]}
  # A mask starting with a 1 starts with an empty run of zeros.
  m = np.array([[1, 0, 0], [0, 0, 1]], bool)
  assert synthetic.rle_uncompressed(m) == {"size": [2, 3], "counts": [0, 1, 4, 1]}
  rng = np.random.default_rng(0)
  for _ in range(5):
    m = rng.random((7, 5)) < 0.4
    rle = mask_util.frPyObjects(synthetic.rle_uncompressed(m), 7, 5)
    np.testing.assert_array_equal(mask_util.decode(rle).astype(bool), m)


def test_shape_mask_hand_points():
  pts = {  # shape: (points inside, points outside), object coordinates (u right, v down)
      "circle": ([(0.9, 0), (0, -0.95)], [(0.75, 0.75), (1.05, 0)]),
      "square": ([(0.8, 0.8), (-0.8, 0.1)], [(0.9, 0), (0, -0.9)]),
      "triangle": ([(0, -1.0), (0, 0.5), (-0.8, 0.5)], [(0, 0.6), (0.5, -0.5)]),
      "star": ([(0, -1.0), (0, 0), (0.9, -0.3)], [(0.5, -0.6), (0, 0.6)]),
      "ring": ([(0.8, 0), (0, -0.6)], [(0, 0), (0.3, 0.3)]),
      "cross": ([(0.9, 0), (0, 0.9), (0, 0)], [(0.6, 0.6), (-0.5, 0.5)]),
      "crescent": ([(-0.9, 0), (0, -0.95)], [(0, 0), (0.9, 0)]),
  }
  assert set(pts) == set(synthetic_shapes.SHAPES)
  for name, (inside, outside) in pts.items():
    for (u, v), want in [(p, True) for p in inside] + [(p, False) for p in outside]:
      got = synthetic_shapes.shape_mask(name, np.array([u], np.float32), np.array([v], np.float32))
      assert bool(got[0]) is want, (name, u, v)


def test_shapes_fit_in_the_drawn_patch():
  # The renderer only evaluates a shape within SHAPE_EXTENT radii of its centre; any part
  # beyond it would be cut off whatever the rotation.
  c = np.linspace(-2, 2, 801, dtype=np.float32)
  u, v = c[None, :], c[:, None]
  beyond = np.hypot(u, v) > synthetic_shapes.SHAPE_EXTENT
  for name in synthetic_shapes.SHAPES:
    m = synthetic_shapes.shape_mask(name, u, v)
    assert m.sum() * (c[1] - c[0]) ** 2 > 0.5, name  # area in units of radius^2
    assert not (m & beyond).any(), name


def test_visible_masks_and_occlusion_label_hand_case():
  full = np.zeros((3, 10, 20), bool)
  full[0, 0:10, 0:10] = True    # back: 100 px, its right half is covered by 1
  full[1, 0:10, 5:15] = True    # middle: 100 px, 40 px covered by 2
  full[2, 0:10, 11:20] = True   # front
  vis = synthetic.visible_masks(full, np.array([0, 1, 2]))
  assert vis.sum(axis=(1, 2)).tolist() == [50, 60, 90]
  assert vis.sum(0).max() == 1
  assert not vis[0, :, 5:].any() and vis[0, :, :5].all()
  # Same masks, reversed depth: the former back square is now fully visible.
  vis = synthetic.visible_masks(full, np.array([2, 1, 0]))
  assert vis.sum(axis=(1, 2)).tolist() == [100, 50, 50]
  label = synthetic.occlusion_label
  assert [label(0.0), label(0.02), label(0.03), label(0.5), label(0.51), label(1.0)] == [
      "no_occlusion", "no_occlusion", "slight_occlusion", "slight_occlusion",
      "severe_occlusion", "severe_occlusion"]


@pytest.mark.parametrize("split", ["train", "valid"])
def test_json_and_frames_are_consistent(dataset, split):
  data = _load(dataset, split)
  assert set(data) == {"info", "licenses", "videos", "categories", "annotations"}
  assert data["categories"] == synthetic.CATEGORIES
  assert 6 <= len(data["categories"]) <= 8
  num = PARAMS["num_train_videos"] if split == "train" else PARAMS["num_valid_videos"]
  assert [v["id"] for v in data["videos"]] == list(range(1, num + 1))
  assert [a["id"] for a in data["annotations"]] == list(range(1, len(data["annotations"]) + 1))
  videos = {v["id"]: v for v in data["videos"]}
  frame_root = os.path.join(dataset, split, "JPEGImages")
  for v in data["videos"]:
    assert PARAMS["min_frames"] <= v["length"] <= PARAMS["max_frames"]
    assert min(v["height"], v["width"]) == PARAMS["short_side"]
    assert len(v["file_names"]) == v["length"]
    folder = os.path.dirname(v["file_names"][0])
    assert sorted(os.listdir(os.path.join(frame_root, folder))) == sorted(
        os.path.basename(f) for f in v["file_names"])
    assert all(os.path.dirname(f) == folder for f in v["file_names"])
    for name in v["file_names"]:
      with Image.open(os.path.join(frame_root, name)) as im:
        assert im.format == "JPEG" and im.mode == "RGB"
        assert im.size == (v["width"], v["height"])
  per_video = {}
  masks = _masks(data)
  for ann in data["annotations"]:
    v = videos[ann["video_id"]]
    assert ann["iscrowd"] == 0
    assert ann["category_id"] in {c["id"] for c in synthetic.CATEGORIES}
    for key in ("segmentations", "areas", "bboxes", "occlusion"):
      assert len(ann[key]) == v["length"], key
    assert any(s is not None for s in ann["segmentations"])
    for t, seg in enumerate(ann["segmentations"]):
      nulls = [x is None for x in (seg, ann["areas"][t], ann["bboxes"][t], ann["occlusion"][t])]
      assert all(nulls) or not any(nulls), (ann["id"], t)
      if seg is None:
        continue
      assert isinstance(seg["counts"], list) and seg["size"] == [v["height"], v["width"]]
      assert sum(seg["counts"]) == v["height"] * v["width"]
      m = masks[ann["id"]][t]
      assert m.shape == (v["height"], v["width"])
      assert m.any(), "an empty mask must be null"
      assert ann["areas"][t] == float(m.sum())
      ys, xs = np.nonzero(m)
      assert ann["bboxes"][t] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                  ys.max() - ys.min() + 1]
      assert ann["occlusion"][t] in OCC_NAMES
      per_video.setdefault((ann["video_id"], t), []).append(m)
  for key, ms in per_video.items():
    assert np.sum(ms, axis=0).max() <= 1, f"visible masks overlap in (video, frame) {key}"


def test_content_needs_tracking(dataset):
  data = _load(dataset, "train")
  cats_per_video = {}
  for a in data["annotations"]:
    cats_per_video.setdefault(a["video_id"], []).append(a["category_id"])
  assert any(len(c) > len(set(c)) for c in cats_per_video.values()), "no repeated class"
  assert max(len(c) for c in cats_per_video.values()) >= 3
  null_frames = [[s is None for s in a["segmentations"]] for a in data["annotations"]]
  assert any(any(n) for n in null_frames), "no instance is ever absent"
  assert len({(v["width"], v["height"]) for v in data["videos"]}) >= 2
  labels = {o for a in data["annotations"] for o in a["occlusion"]}
  assert labels == OCC_NAMES | {None}


def test_class_is_not_given_away_by_appearance():
  # Over many scenes, every shape comes in several textures and very different colours.
  seen = {}
  for i in range(60):
    for inst in synthetic.sample_scene(0, "train", i).instances:
      seen.setdefault(inst.shape, []).append(inst)
  assert len(seen) == len(synthetic_shapes.SHAPES)
  for shape, insts in seen.items():
    assert len({i.texture for i in insts}) >= 3, synthetic_shapes.SHAPES[shape]
    main = np.stack([i.colours[0] for i in insts])
    assert main.std(axis=0).mean() > 30, synthetic_shapes.SHAPES[shape]


def test_masks_and_occlusion_match_the_rendered_scene(dataset):
  # Independent re-derivation: full-shape masks from the renderer, depth order from the scene;
  # the visible mask and the label are recomputed here with the documented rule.
  for split, num in (("train", PARAMS["num_train_videos"]), ("valid", PARAMS["num_valid_videos"])):
    data = _load(dataset, split)
    masks = _masks(data)
    by_video = {}
    for a in data["annotations"]:
      by_video.setdefault(a["video_id"], []).append(a)
    for index in range(num):
      scene = synthetic.sample_scene(PARAMS["seed"], split, index, PARAMS["min_frames"],
                                     PARAMS["max_frames"], PARAMS["short_side"])
      anns = by_video[index + 1]
      order = list(scene.back_to_front)
      kept = range(len(scene.instances))
      frames = list(scene.render())
      assert len(frames) == scene.length
      expected = []
      for image, full in frames:
        assert image.shape == (scene.height, scene.width, 3) and image.dtype == np.uint8
        row = []
        for i in kept:
          front = order[order.index(i) + 1:]
          hidden_by = np.any(full[front], axis=0) if front else np.zeros_like(full[i])
          vis = full[i] & ~hidden_by
          if not vis.any():
            row.append((None, None))
            continue
          h = (full[i] & hidden_by).sum() / full[i].sum()
          label = ("no_occlusion" if h <= 0.02 else
                   "slight_occlusion" if h <= 0.5 else "severe_occlusion")
          row.append((vis, label))
        expected.append(row)
      # Instances never visible are dropped; the rest keep scene order.
      visible_ever = [i for i in kept if any(expected[t][i][0] is not None
                                             for t in range(scene.length))]
      assert len(anns) == len(visible_ever)
      for ann, i in zip(anns, visible_ever, strict=True):
        assert ann["category_id"] == scene.category_ids[i]
        for t in range(scene.length):
          vis, label = expected[t][i]
          got = masks[ann["id"]][t]
          if vis is None:
            assert got is None and ann["occlusion"][t] is None
          else:
            np.testing.assert_array_equal(got, vis)
            assert ann["occlusion"][t] == label


def test_motion_is_smooth():
  # Between consecutive frames an object well inside the frame keeps existing, moves less
  # than 0.15 x short side and changes its area by less than a third.
  short = 48
  for index in range(8):
    scene = synthetic.sample_scene(0, "train", index, 16, 28, short)
    frames = [full for _, full in scene.render()]
    for i in range(len(scene.instances)):
      for prev, cur in zip(frames, frames[1:], strict=False):
        a, b = prev[i], cur[i]
        if not a.any() or a[0].any() or a[-1].any() or a[:, 0].any() or a[:, -1].any():
          continue
        assert b.any(), (index, i)
        ca, cb = np.argwhere(a).mean(0), np.argwhere(b).mean(0)
        assert np.abs(ca - cb).max() < 0.15 * short, (index, i)
        if not (b[0].any() or b[-1].any() or b[:, 0].any() or b[:, -1].any()):
          assert 0.75 < b.sum() / a.sum() < 1.33, (index, i)


def test_never_visible_instance_is_not_annotated(tmp_path, monkeypatch):
  real = synthetic.sample_scene

  def with_lost_object(seed, split, index, *args):
    scene = real(seed, split, index, *args)
    lost = dataclasses.replace(scene.instances[0], anchor=np.array([-1e4, -1e4]),
                               velocity=np.zeros(2), accel=np.zeros(2))
    return dataclasses.replace(scene, instances=(lost, *scene.instances[1:]))

  monkeypatch.setattr(synthetic, "sample_scene", with_lost_object)
  kw = dict(PARAMS, num_train_videos=3, num_valid_videos=0, max_frames=18)
  # workers=1: the patched sampler must run in this process.
  synthetic.generate(str(tmp_path), occlusion_labels=True, workers=1, **kw)
  data = _load(tmp_path, "train")
  for index in range(3):
    scene = with_lost_object(0, "train", index, 16, 18, 48)
    anns = [a for a in data["annotations"] if a["video_id"] == index + 1]
    assert [a["category_id"] for a in anns] == scene.category_ids[1:]
    assert all(any(s is not None for s in a["segmentations"]) for a in anns)


def test_ovis_occ_score_is_defined(dataset):
  # What oviseval._prepare computes; it divides by zero on an all-null occlusion list.
  score = {"no_occlusion": 0.0, "slight_occlusion": 0.25, "severe_occlusion": 0.75}
  for a in _load(dataset, "valid")["annotations"]:
    s = sorted(score[o] for o in a["occlusion"] if o is not None)
    top = s[-math.ceil(len(s) / 2):]
    assert 0 <= sum(top) / len(top) <= 0.75


def test_deterministic_and_seed_dependent(tmp_path):
  kw = dict(PARAMS, num_train_videos=3, num_valid_videos=1, max_frames=18)
  a, b, c = (str(tmp_path / n) for n in "abc")
  synthetic.generate(a, **kw)
  synthetic.generate(b, **kw)
  synthetic.generate(c, **dict(kw, seed=1))
  files = _files(a)
  assert files == _files(b)
  match, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
  assert not mismatch and not errors and len(match) == len(files)
  assert _load(a, "train") != _load(c, "train")
  # Splits draw from different streams: valid video 0 is not train video 0.
  assert _load(a, "valid")["videos"][0] != _load(a, "train")["videos"][0] or not filecmp.cmp(
      os.path.join(a, "valid/JPEGImages/vid_0000/00000.jpg"),
      os.path.join(a, "train/JPEGImages/vid_0000/00000.jpg"), shallow=False)
  common = set(files) & set(_files(c))
  assert any(not filecmp.cmp(os.path.join(a, f), os.path.join(c, f), shallow=False)
             for f in common if f.endswith(".jpg"))


def test_worker_processes_write_the_same_bytes(tmp_path):
  # 16 videos over 2 workers take the process-pool path (spawned, results in index order).
  kw = dict(PARAMS, num_train_videos=16, num_valid_videos=1, max_frames=18)
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  synthetic.generate(one, occlusion_labels=True, workers=1, **kw)
  synthetic.generate(two, occlusion_labels=True, workers=2, **kw)
  files = _files(one)
  assert files == _files(two) and len(files) > 16 * 16
  match, mismatch, errors = filecmp.cmpfiles(one, two, files, shallow=False)
  assert not mismatch and not errors and len(match) == len(files)


def test_videos_do_not_depend_on_the_number_of_videos(tmp_path):
  kw = dict(PARAMS, num_valid_videos=0, max_frames=18)
  synthetic.generate(str(tmp_path / "few"), **dict(kw, num_train_videos=2))
  synthetic.generate(str(tmp_path / "more"), **dict(kw, num_train_videos=4))
  few, more = _load(tmp_path / "few", "train"), _load(tmp_path / "more", "train")
  assert few["videos"] == more["videos"][:2]
  assert few["annotations"] == [a for a in more["annotations"] if a["video_id"] <= 2]
  for v in few["videos"]:
    for name in v["file_names"]:
      assert filecmp.cmp(tmp_path / "few/train/JPEGImages" / name,
                         tmp_path / "more/train/JPEGImages" / name, shallow=False)


def test_compressed_and_uncompressed_rle_decode_to_the_same_masks(tmp_path):
  kw = dict(PARAMS, num_train_videos=3, num_valid_videos=1, max_frames=20)
  synthetic.generate(str(tmp_path / "u"), rle="uncompressed", **kw)
  synthetic.generate(str(tmp_path / "c"), rle="compressed", **kw)
  for split in ("train", "valid"):
    u, c = _load(tmp_path / "u", split), _load(tmp_path / "c", split)
    segs = [s for a in c["annotations"] for s in a["segmentations"] if s is not None]
    assert segs and all(isinstance(s["counts"], str) for s in segs)
    mu, mc = _masks(u), _masks(c)
    assert mu.keys() == mc.keys()
    for k in mu:
      for x, y in zip(mu[k], mc[k], strict=True):
        assert (x is None) == (y is None)
        if x is not None:
          np.testing.assert_array_equal(x, y)
    for key in ("areas", "bboxes"):
      assert [a[key] for a in u["annotations"]] == [a[key] for a in c["annotations"]]
  with pytest.raises(ValueError, match="rle"):
    synthetic.generate(str(tmp_path / "x"), rle="polygon", **kw)


ENSURE = dict(num_train_videos=2, num_valid_videos=1, seed=0, min_frames=8, max_frames=10,
              short_side=32, occlusion_labels=False)


def _count_generate(monkeypatch):
  calls = []
  real = synthetic._generate

  def counting(*args, **kwargs):
    calls.append(args[0])
    return real(*args, **kwargs)

  monkeypatch.setattr(synthetic, "_generate", counting)
  return calls


def test_ensure_dataset_regenerates_only_on_changed_params(tmp_path, monkeypatch):
  calls = _count_generate(monkeypatch)
  root = str(tmp_path / "cache" / "synthetic")
  assert synthetic.ensure_dataset(root, **ENSURE) == root
  assert len(calls) == 1
  first = _load(root, "train")
  assert os.path.exists(os.path.join(root, "valid/JPEGImages/vid_0000/00000.jpg"))
  synthetic.ensure_dataset(root, **ENSURE)
  assert len(calls) == 1
  synthetic.ensure_dataset(root, **dict(ENSURE, seed=5))
  assert len(calls) == 2
  assert _load(root, "train") != first
  with open(os.path.join(root, "params.json")) as f:
    assert json.load(f)["seed"] == 5
  synthetic.ensure_dataset(root, **dict(ENSURE, seed=5, occlusion_labels=True))
  assert len(calls) == 3
  assert all("occlusion" in a for a in _load(root, "train")["annotations"])
  # Only the dataset and the lock file remain next to it: no temp or parked dirs.
  assert sorted(os.listdir(tmp_path / "cache")) == ["synthetic", "synthetic.lock"]


def test_ensure_dataset_crash_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
  root = str(tmp_path / "synthetic")

  def crash(out_dir, split, *args):
    if split == "valid":
      raise RuntimeError("boom")
    return real(out_dir, split, *args)

  real = synthetic._write_split
  monkeypatch.setattr(synthetic, "_write_split", crash)
  with pytest.raises(RuntimeError, match="boom"):
    synthetic.ensure_dataset(root, **ENSURE)
  assert not os.path.exists(root)
  assert os.listdir(tmp_path) == ["synthetic.lock"]
  monkeypatch.setattr(synthetic, "_write_split", real)
  synthetic.ensure_dataset(root, **ENSURE)
  assert os.path.exists(os.path.join(root, "valid.json"))


def test_ensure_dataset_concurrent_callers_generate_once(tmp_path, monkeypatch):
  calls = _count_generate(monkeypatch)
  root = str(tmp_path / "synthetic")
  results, errors = [], []

  def call():
    try:
      results.append(synthetic.ensure_dataset(root, **ENSURE))
    except Exception as e:  # noqa: BLE001 - reported by the assert below
      errors.append(e)

  threads = [threading.Thread(target=call) for _ in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors and results == [root] * 3
  assert len(calls) == 1


def test_ensure_dataset_refuses_to_delete_foreign_directory(tmp_path):
  root = tmp_path / "mine"
  root.mkdir()
  (root / "notes.txt").write_text("keep me")
  with pytest.raises(ValueError, match="refusing"):
    synthetic.ensure_dataset(str(root), **ENSURE)
  assert (root / "notes.txt").read_text() == "keep me"


def test_cli_prints_summary(tmp_path, capsys):
  out = str(tmp_path / "cli")
  synthetic.main(["--out", out, "--videos", "6", "--seed", "3", "--min-frames", "8",
                  "--max-frames", "9", "--short-side", "32", "--occlusion-labels"])
  line = capsys.readouterr().out.strip()
  assert "\n" not in line
  assert "7 videos (6 train + 1 valid)" in line and "frames" in line and "instances" in line
  valid = _load(out, "valid")
  assert len(valid["videos"]) == 1
  assert all("occlusion" in a for a in valid["annotations"])
  with open(os.path.join(out, "params.json")) as f:
    assert json.load(f)["num_valid_videos"] == 1


def test_class_colours_put_the_main_hue_in_the_class_band():
  """``class_colours``: every instance's main colour has a hue within ±0.25 (circle = 6) of
  6c/7 for its class c (measured with colorsys), and nothing else about the scene changes."""
  import colorsys
  seen = set()
  for index in range(12):
    plain = synthetic.sample_scene(0, "train", index)
    cued = synthetic.sample_scene(0, "train", index, class_colours=True)
    assert len(plain.instances) == len(cued.instances)
    for a, b in zip(plain.instances, cued.instances, strict=True):
      assert a.shape == b.shape and a.pose(3) == b.pose(3) and a.texture == b.texture
      # The main colour goes to slot 0 (what a plain texture shows), the dark one stays.
      assert any(np.array_equal(b.colours[1], c) for c in a.colours)
      assert not any(np.array_equal(b.colours[0], c) for c in a.colours)
      r, g, bl = (b.colours[0] - 4) / 247
      hue = colorsys.rgb_to_hsv(r, g, bl)[0] * 6
      centre = 6 * b.shape / len(synthetic_shapes.SHAPES)
      distance = min(abs(hue - centre), 6 - abs(hue - centre))
      assert distance <= 0.25 + 1e-3, (b.shape, hue)
      seen.add(b.shape)
  assert len(seen) >= 5


def test_object_radius_scales_the_objects_and_nothing_else():
  """Radii at frame 0 lie in ``object_radius`` x short side and stay within [0.75 low,
  1.5 high] over the video; positions, motion, colours and depth order are the default's."""
  low, high = 0.12, 0.24
  for index in range(12):
    plain = synthetic.sample_scene(0, "train", index)
    big = synthetic.sample_scene(0, "train", index, object_radius=(low, high))
    short = min(big.height, big.width)
    assert np.array_equal(plain.back_to_front, big.back_to_front)
    for a, b in zip(plain.instances, big.instances, strict=True):
      assert a.shape == b.shape and a.texture == b.texture
      assert np.array_equal(a.colours, b.colours)
      assert a.pose(0)[:2] == b.pose(0)[:2] and a.pose(0)[3] == b.pose(0)[3]
      # The same uniform draw, mapped onto the other range.
      u = (math.exp(a.log_r0) / short - 0.08) / 0.12
      assert math.exp(b.log_r0) / short == pytest.approx(low + u * (high - low), rel=1e-9)
      radii = [b.pose(t)[2] / short for t in range(big.length)]
      assert min(radii) >= 0.75 * low * math.exp(-b.log_r_wobble) - 1e-9
      assert max(radii) <= 1.5 * high * math.exp(b.log_r_wobble) + 1e-9


def test_object_radius_is_validated_and_recorded(tmp_path):
  with pytest.raises(ValueError, match="object_radius"):
    synthetic.generate(str(tmp_path / "bad"), **dict(PARAMS, num_train_videos=1,
                                                      num_valid_videos=0),
                       object_radius=(0.3, 0.2))
  out = str(tmp_path / "cli")
  synthetic.main(["--out", out, "--videos", "2", "--valid-videos", "0", "--min-frames", "8",
                  "--max-frames", "8", "--short-side", "48", "--object-radius", "0.1", "0.3"])
  with open(os.path.join(out, "params.json")) as f:
    assert json.load(f)["object_radius"] == [0.1, 0.3]
