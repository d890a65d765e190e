"""``vis_jax.predict`` end to end with a stand-in model whose masks are known in advance."""

import json

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from configs import common, vita_r50_ovis, vita_r50_ytvis19, vita_synthetic
from input_pipeline import category_maps, eval_source
from vis_jax import checkpointing, predict, visualize
from vis_jax.models import registry
from vis_jax.models.base import ModelBundle

# imageio-ffmpeg starts ffmpeg with fork+exec, which JAX's fork warning does not distinguish.
pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")

HIGH, LOW = 0.9, 0.2


def expected_masks(h: int, w: int, length: int) -> tuple[np.ndarray, np.ndarray]:
  """The stand-in's masks [T, h, w]: a square moving right one pixel per frame (high score)
  and a fixed square in the bottom-right corner (low score)."""
  side = min(h, w) // 4
  high = np.zeros((length, h, w), bool)
  low = np.zeros((length, h, w), bool)
  for t in range(length):
    high[t, side:2 * side, w // 8 + t:w // 8 + t + side] = True
  low[:, h - 6 - side:h - 6, w - 6 - side:w - 6] = True
  return high, low


def _rles(masks: np.ndarray) -> list[dict]:
  out = []
  for m in masks:
    rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
    out.append({"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")})
  return out


class StandIn(ModelBundle):
  """Fixed predictions; records what it was given."""

  calls: list = []

  def init(self, rng, batch):
    raise NotImplementedError

  def loss(self, params, model_state, batch, rng):
    raise NotImplementedError

  def predict_video(self, params, model_state, video):
    h, w = video.original_size
    means, count = [], 0
    rh, rw = video.resized_size
    for chunk in eval_source.iter_frame_chunks(video, 4):
      for k in range(chunk.num_valid):
        means.append(float(chunk.images[k, :rh, :rw].mean()))
      count += chunk.num_valid
    StandIn.calls.append(dict(video_id=video.video_id, length=video.length, frames_read=count,
                              original_size=(h, w), resized_size=video.resized_size,
                              means=means, w=np.asarray(params["w"]).tolist()))
    high, low = expected_masks(h, w, video.length)
    return [{"score": HIGH, "label": 0, "segmentations": _rles(high)},
            {"score": LOW, "label": 1, "segmentations": _rles(low)}]


@pytest.fixture(autouse=True)
def stand_in(monkeypatch):
  StandIn.calls = []
  monkeypatch.setattr(registry, "get_bundle", StandIn)
  return StandIn.calls


@pytest.fixture(scope="module")
def config_json(tmp_path_factory):
  c = vita_synthetic.get_config("smoke")
  c.data.synthetic.root = str(tmp_path_factory.mktemp("never_generated"))
  return c.to_json_best_effort(indent=2)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, config_json):
  """A training workdir with checkpoints at steps 2 and 5 (w = step * [1, 2, 3])."""
  root = tmp_path_factory.mktemp("workdir")
  (root / "config.json").write_text(config_json)
  ckpt = checkpointing.Checkpointer(str(root / "checkpoints"), interval=1, keep=5,
                                    async_save=False)
  for step in (2, 5):
    state = {"params": {"w": step * np.arange(1.0, 4.0, dtype=np.float32)},
             "model_state": {"bn": {"mean": np.zeros(2, np.float32)}},
             "step": np.array(step, np.int32)}
    ckpt.save(step, state, force=True)
  ckpt.close()
  return root


@pytest.fixture(scope="module")
def exported(tmp_path_factory, config_json):
  out = tmp_path_factory.mktemp("export") / "params"
  checkpointing.save_inference_params(str(out), {"w": np.array([7.0, 8.0, 9.0], np.float32)},
                                      {"bn": {"mean": np.zeros(2, np.float32)}}, config_json)
  return out


def _background(h: int, w: int, t: int) -> np.ndarray:
  """Smooth grey ramp (cheap for H.264, far from the saturated track colours)."""
  y, x = np.mgrid[:h, :w]
  grey = 90 + 50 * x / w + 20 * y / h + t
  return np.repeat(grey[..., None], 3, axis=2).round().astype(np.uint8)


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("video") / "my clip.mp4")
  with imageio.get_writer(path, fps=10, codec="libx264", quality=9, macro_block_size=16) as wr:
    for t in range(23):
      wr.append_data(_background(96, 128, t))
  return path


def _read_video(path: str) -> np.ndarray:
  with imageio.get_reader(path) as reader:
    return np.stack([f for f in reader])


def _interior(mask: np.ndarray, margin: int = 3) -> np.ndarray:
  """The mask shrunk by ``margin`` pixels (away from contours and codec ringing)."""
  out = mask.copy()
  for _ in range(margin):
    out[1:-1, 1:-1] &= out[:-2, 1:-1] & out[2:, 1:-1] & out[1:-1, :-2] & out[1:-1, 2:]
    out[[0, -1]] = False
    out[:, [0, -1]] = False
  return out


def _run(capsys, *argv: str) -> tuple[int, dict | None, str]:
  code = predict.main([*argv, "--quiet"])
  out, err = capsys.readouterr()
  return code, (json.loads(out) if code == 0 else None), err


def test_video_file_results_and_rendering(workdir, video_file, tmp_path, capsys, stand_in):
  out = tmp_path / "out"
  code, summary, err = _run(capsys, "--workdir", str(workdir), "--input", video_file,
                            "--output", str(out), "--render")
  assert code == 0, err
  assert summary["videos"] == 1 and summary["predictions"] == 2
  # The latest checkpoint (step 5) was loaded, and the model saw all 23 frames.
  (call,) = stand_in
  assert call["w"] == [5.0, 10.0, 15.0]
  assert call["length"] == call["frames_read"] == 23 and call["original_size"] == (96, 128)

  results = json.load(open(out / "results.json"))
  high, low = expected_masks(96, 128, 23)
  # Synthetic training categories: label 0 → id 1 (circle), label 1 → id 2.
  assert [(r["video_id"], r["category_id"], r["score"]) for r in results] == [
      (1, 1, HIGH), (1, 2, LOW)]
  for result, masks in zip(results, (high, low), strict=True):
    assert len(result["segmentations"]) == 23
    decoded = np.stack([mask_util.decode(dict(s, counts=s["counts"].encode()))
                        for s in result["segmentations"]])
    np.testing.assert_array_equal(decoded.astype(bool), masks)

  source = _read_video(video_file).astype(np.float32)
  rendered = _read_video(str(out / "my_clip.mp4")).astype(np.float32)
  assert rendered.shape == source.shape == (23, 96, 128, 3)
  color = visualize.track_colors(1)[0].astype(np.float32)
  for t in (0, 11, 22):
    inside_low = _interior(low[t])
    assert np.abs(rendered[t][inside_low] - source[t][inside_low]).mean() < 6
    inside_high = _interior(high[t])
    blend = 0.5 * source[t][inside_high] + 0.5 * color
    assert np.abs(rendered[t][inside_high] - source[t][inside_high]).mean() > 30
    assert np.abs(rendered[t][inside_high] - blend).mean() < 8
    # The label box sits just above the high-score square.
    top, left = np.argwhere(high[t])[0]
    box = (slice(top - 8, top - 3), slice(left + 2, left + 12))
    assert np.abs(rendered[t][box] - source[t][box]).mean() > 30

  gif = Image.open(out / "my_clip.gif")
  assert gif.n_frames == 23 and gif.size == (128, 96)
  sheet = np.asarray(Image.open(out / "my_clip_sheet.png"))
  assert sheet.shape == (2 * (96 + 2) + 2, 4 * (128 + 2) + 2, 3)


def test_checkpoint_frame_folder_natural_order_and_override(exported, tmp_path, capsys,
                                                            stand_in):
  folder = tmp_path / "frames"
  folder.mkdir()
  for i in range(11):  # names 0.png .. 10.png: plain sorting would put 10 after 1
    Image.fromarray(np.full((50, 64, 3), 10 * i, np.uint8)).save(folder / f"{i}.png")
  (folder / "notes.txt").write_text("not a frame")
  out = tmp_path / "out"
  code, summary, err = _run(capsys, "--checkpoint", str(exported), "--input", str(folder),
                            "--output", str(out), "--config.input.min_size_test=32")
  assert code == 0, err
  (call,) = stand_in
  assert call["w"] == [7.0, 8.0, 9.0]
  assert call["means"] == pytest.approx([10.0 * i for i in range(11)], abs=0.5)
  assert min(call["resized_size"]) == 32   # the smoke config's 64 was overridden
  results = json.load(open(out / "results.json"))
  assert len(results) == 2 and all(len(r["segmentations"]) == 11 for r in results)
  assert results[0]["segmentations"][0]["size"] == [50, 64]
  assert summary["rendered"] == [] and not list(out.glob("*.mp4"))


def test_dataset_json_input(exported, tmp_path, capsys, stand_in):
  root = tmp_path / "JPEGImages"
  videos = []
  for vid, name, length in ((7, "dog", 4), (3, "cat_video", 5)):
    (root / name).mkdir(parents=True)
    for t in range(length):
      Image.fromarray(_background(48, 64, t)).save(root / name / f"{t:05d}.jpg")
    videos.append({"id": vid, "height": 48, "width": 64, "length": length,
                   "file_names": [f"{name}/{t:05d}.jpg" for t in range(length)]})
  # Listed in reverse: contiguous labels follow sorted ids (label 0 → id 10, 1 → id 20).
  cats = [{"id": 10 * k, "name": f"thing{k}"} for k in range(7, 0, -1)]
  ann = tmp_path / "valid.json"
  ann.write_text(json.dumps({"videos": videos, "categories": cats}))

  out = tmp_path / "out"
  code, summary, err = _run(capsys, "--checkpoint", str(exported), "--input", str(ann),
                            "--frames", str(root), "--output", str(out), "--render")
  assert code == 0, err
  results = json.load(open(out / "results.json"))
  assert [(r["video_id"], r["category_id"], len(r["segmentations"])) for r in results] == [
      (3, 10, 5), (3, 20, 5), (7, 10, 4), (7, 20, 4)]
  assert len(_read_video(str(out / "cat_video.mp4"))) == 5
  assert len(_read_video(str(out / "dog.mp4"))) == 4

  code, summary, err = _run(capsys, "--checkpoint", str(exported), "--input", str(ann),
                            "--frames", str(root), "--output", str(tmp_path / "one"),
                            "--max-videos", "1")
  assert code == 0, err
  assert {r["video_id"] for r in json.load(open(tmp_path / "one" / "results.json"))} == {3}


def test_bad_inputs_exit_2_naming_the_path(workdir, exported, video_file, tmp_path, capsys):
  missing = str(tmp_path / "nowhere")
  empty = tmp_path / "empty_dir"
  empty.mkdir()
  no_ckpt = tmp_path / "no_ckpt"
  no_ckpt.mkdir()
  (no_ckpt / "config.json").write_text((workdir / "config.json").read_text())
  cases = [
      (["--checkpoint", missing, "--input", video_file], missing),
      (["--checkpoint", str(empty), "--input", video_file], str(empty / "config.json")),
      (["--checkpoint", str(no_ckpt), "--input", video_file], str(no_ckpt / "variables")),
      (["--workdir", str(no_ckpt), "--input", video_file], str(no_ckpt / "checkpoints")),
      (["--workdir", str(workdir), "--step", "3", "--input", video_file],
       str(workdir / "checkpoints" / "3" / "state")),
      (["--checkpoint", str(exported), "--input", missing], missing),
      (["--checkpoint", str(exported), "--input", str(empty)], str(empty)),
      (["--checkpoint", str(exported), "--input", str(workdir / "config.json")],
       "--frames"),
      (["--checkpoint", str(exported), "--input", video_file, "--config.input.nope=1"],
       "input.nope"),
  ]
  for argv, needle in cases:
    code, _, err = _run(capsys, *argv, "--output", str(tmp_path / "o"))
    assert code == 2, argv
    assert needle in err, (argv, err)


def test_resolve_categories():
  synthetic = predict.resolve_categories(vita_synthetic.get_config("smoke"))
  assert [c["name"] for c in synthetic[:3]] == ["circle", "square", "triangle"]
  ytvis = predict.resolve_categories(vita_r50_ytvis19.get_config())
  assert ytvis == category_maps.dataset_categories("ytvis19")
  c = vita_r50_ytvis19.get_config()
  c.data.sources.coco.ratio = 0.0      # the map still defines the labels
  assert predict.resolve_categories(c) == ytvis
  assert predict.resolve_categories(vita_r50_ovis.get_config())[-1]["name"] == "Vehical"
  unknown = common.base_config()
  unknown.data.num_classes = 3
  unknown.data.sources.mine = common.source("ytvis", "/data/mine/train.json", "/data/mine")
  unknown.data.eval = common.source("ytvis", "/data/mine/valid.json", "/data/mine")
  assert predict.resolve_categories(unknown) == [
      {"id": i, "name": f"class_{i}"} for i in (1, 2, 3)]


def test_resolve_categories_reads_an_existing_eval_json(tmp_path):
  c = common.base_config()
  c.data.num_classes = 2
  ann = tmp_path / "valid.json"
  ann.write_text(json.dumps({"videos": [], "categories": [{"id": 9, "name": "b"},
                                                          {"id": 4, "name": "a"}]}))
  c.data.sources.mine = common.source("ytvis", str(tmp_path / "train.json"), str(tmp_path))
  c.data.eval = common.source("ytvis", str(ann), str(tmp_path))
  assert predict.resolve_categories(c) == [{"id": 4, "name": "a"}, {"id": 9, "name": "b"}]


def test_apply_overrides_casts_to_the_existing_type():
  config = vita_synthetic.get_config("smoke")
  predict.apply_overrides(config, ["--config.data.shuffle=false", "--config.input.flip_prob=1",
                                   "--config.input.size_buckets=((32, 64),)",
                                   "--config.data.eval.json=/x/y.json"])
  assert config.data.shuffle is False and config.input.flip_prob == 1.0
  assert config.input.size_buckets == ((32, 64),) and config.data.eval.json == "/x/y.json"
  with pytest.raises(predict.PredictError, match="input.num_frames=abc"):
    predict.apply_overrides(config, ["--config.input.num_frames=abc"])
  with pytest.raises(predict.PredictError, match="group"):
    predict.apply_overrides(config, ["--config.input=3"])


def test_config_json_round_trip_restores_tuples(tmp_path, config_json):
  (tmp_path / "config.json").write_text(config_json)
  config = predict.config_from_json(str(tmp_path / "config.json"))
  assert config.input.size_buckets == ((64, 128), (128, 64), (128, 128))
  assert config.input.min_size_test == 64 and config.model_name == "vita"


def test_mp4_writer_pads_odd_sizes_and_keeps_every_frame(tmp_path):
  frames = [_background(31, 45, 3 * t) for t in range(9)]
  path = str(tmp_path / "odd.mp4")
  assert visualize.write_mp4(iter(frames), path, fps=10) == 9
  decoded = _read_video(path).astype(np.float32)
  assert decoded.shape == (9, 32, 46, 3)
  assert np.abs(decoded[:, :31, :45] - np.stack(frames)).mean() < 3
  with visualize.Mp4Writer(str(tmp_path / "bad.mp4")) as writer:
    writer.append(frames[0])
    with pytest.raises(ValueError, match="frame 1"):
      writer.append(frames[0][:20])


def test_write_gif_caps_length_and_size(tmp_path):
  frames = (_background(100, 400, 20 * t) for t in range(10))
  path = str(tmp_path / "a.gif")
  assert visualize.write_gif(frames, path, fps=5, max_side=200, max_frames=6) == 6
  gif = Image.open(path)
  assert gif.n_frames == 6 and gif.size == (200, 50)
  assert gif.info["duration"] == 200


def test_draw_labels_writes_near_the_mask_only():
  image = np.full((96, 128, 3), 120, np.uint8)
  masks = np.zeros((2, 96, 128), bool)
  masks[0, 40:60, 50:70] = True      # room above: box ends at row 40
  masks[1, 0:10, 120:128] = True     # at the top-right corner: box inside, shifted left
  colors = visualize.track_colors(2)
  out = visualize.draw_labels(image, masks, ["dog 0.93", "x"], colors)
  changed = (out != image).any(-1)
  rows, cols = np.nonzero(changed[:, :100])
  assert rows.min() >= 40 - 20 and rows.max() < 40 and cols.min() == 50
  assert changed[0:12, 100:].any() and not changed[12:, 100:].any()
  assert (out[38, 50] == colors[0]).all()      # the box has the mask's colour
  empty = visualize.draw_labels(image, np.zeros((1, 96, 128), bool), ["a"], colors[:1])
  np.testing.assert_array_equal(empty, image)
  with pytest.raises(ValueError, match="same length"):
    visualize.draw_labels(image, masks, ["a"], colors)


def test_draw_labels_keeps_labels_of_overlapping_objects_apart():
  image = np.full((96, 128, 3), 120, np.uint8)
  masks = np.zeros((2, 96, 128), bool)
  masks[:, 40:60, 50:70] = True
  colors = visualize.track_colors(2)
  out = visualize.draw_labels(image, masks, ["first", "second"], colors)
  rows = [np.nonzero((out == c).all(-1).any(axis=1))[0] for c in colors]
  assert len(rows[0]) and len(rows[1])
  assert rows[0].max() < rows[1].min()     # the second box starts below the first


def test_folder_of_frame_folders_with_categories_file(exported, tmp_path, capsys, stand_in):
  for name, length in (("b", 3), ("a", 2)):
    (tmp_path / "clips" / name).mkdir(parents=True)
    for t in range(length):
      Image.fromarray(_background(40, 48, t)).save(tmp_path / "clips" / name / f"{t}.jpg")
  cats = tmp_path / "cats.json"
  cats.write_text(json.dumps({"categories": [{"id": 100 + k, "name": f"c{k}"}
                                             for k in range(7)]}))
  out = tmp_path / "out"
  code, summary, err = _run(capsys, "--checkpoint", str(exported), "--input",
                            str(tmp_path / "clips"), "--output", str(out), "--render",
                            "--categories", str(cats))
  assert code == 0, err
  assert [(c["video_id"], c["length"]) for c in stand_in] == [(1, 2), (2, 3)]
  results = json.load(open(out / "results.json"))
  assert [(r["video_id"], r["category_id"]) for r in results] == [
      (1, 100), (1, 101), (2, 100), (2, 101)]
  assert len(_read_video(str(out / "a.mp4"))) == 2 and len(_read_video(str(out / "b.mp4"))) == 3
