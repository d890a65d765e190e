"""Run a trained model on videos: official results json and, optionally, rendered videos.

CLI (exit code 2 with a one-line message naming the path/key on bad input)::

  python -m vis_jax.predict (--workdir DIR [--step N] | --checkpoint DIR)
      --input VIDEO.mp4 | FRAME_DIR | DATASET.json [--frames FRAMES_ROOT]
      --output OUT [--render] [--score-threshold 0.5] [--fps 10] [--max-videos N]
      [--categories CATS.json] [--quiet] [--config.a.b=value ...]

* Model: ``--workdir`` reads ``DIR/config.json`` and the latest (or ``--step``) training
  checkpoint ``DIR/checkpoints/<step>/state``; ``--checkpoint`` reads what ``vis_jax.export`` /
  ``vis_jax.convert`` wrote (``variables/`` + ``config.json``). ``--config.a.b=value`` overrides
  a key of that config (e.g. ``--config.input.min_size_test=480``).
* Input: a video file (decoded by ffmpeg, streamed to a temporary folder of JPEGs, so any
  length works), a folder of frames (jpg/png, natural name order: ``2.jpg`` before ``10.jpg``)
  or a folder of such folders (one video each), or a YouTube-VIS/OVIS json with ``--frames``.
* Output: ``OUT/results.json`` (+ ``results.zip``), the official submission format with every
  prediction. A json input's category ids are its own; otherwise they and the class names come
  from the run's training data (``resolve_categories``) or ``--categories``.
  With ``--render``, per video: ``OUT/<name>.mp4`` (H.264, ``--fps``), ``OUT/<name>.gif``
  (downscaled, at most 48 frames) and ``OUT/<name>_sheet.png`` (8 evenly spaced frames),
  drawing the predictions with score >= ``--score-threshold`` (the official demo keeps
  score > 0.5), one colour per prediction, class name and score next to each mask.

Library: ``load_model``, ``open_inputs``, ``predict_videos``, ``to_submission``,
``render_video``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any

import ml_collections
import numpy as np
from PIL import Image
from tqdm import tqdm

from configs import common
from input_pipeline import category_maps, eval_source, frames
from input_pipeline.datasets import DataError, load_json, load_ytvis
from input_pipeline.records import VideoRecord
from vis_jax import checkpointing, visualize
from vis_jax.evaluation.submission import write_submission
from vis_jax.models import registry
from vis_jax.models.base import ModelBundle

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
_JPEG_QUALITY = 95          # temporary frames of a decoded video: re-encoding loss stays small
GIF_MAX_FRAMES = 48
GIF_MAX_SIDE = 320
SHEET_FRAMES = 8
SHEET_MAX_SIDE = 480


class PredictError(ValueError):
  """Unusable command-line input; the message names the path or key."""


# ---- model and config ------------------------------------------------------------------------


def _tuples(value: Any) -> Any:
  # Config files use tuples; json turns them into lists, which are unhashable (jit static args).
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def config_from_json(path: str) -> ml_collections.ConfigDict:
  """The ``config.json`` a run (``vis_jax.main``) or an export wrote, as a ConfigDict."""
  if not os.path.isfile(path):
    raise PredictError(f"{path}: config file not found (written by `python -m vis_jax.main` "
                       "into the workdir and copied by vis_jax.export)")
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise PredictError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(data, dict):
    raise PredictError(f"{path}: expected a JSON object, got {type(data).__name__}")
  return ml_collections.ConfigDict(_tuples(data))


def _parse_value(text: str, current: Any, key: str) -> Any:
  try:
    literal = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    literal = text
  try:
    if isinstance(current, bool):
      if text.lower() in ("1", "true", "yes", "y"):
        return True
      if text.lower() in ("0", "false", "no", "n"):
        return False
      raise ValueError(f"{text!r} is not a boolean")
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
    if isinstance(current, str):
      return literal if isinstance(literal, str) else text
    if isinstance(current, (tuple, list)):
      literal = literal if isinstance(literal, (tuple, list)) else (literal,)
      return _tuples(list(literal))
  except ValueError as e:
    raise PredictError(f"--config.{key}={text}: {e}") from e
  return literal


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]
                    ) -> ml_collections.ConfigDict:
  """Applies ``--config.a.b=value`` strings, cast to the existing value's type, in place."""
  for item in overrides:
    if not item.startswith("--config.") or "=" not in item:
      raise PredictError(f"unrecognised argument {item!r} (config overrides are "
                         "--config.a.b=value)")
    path, text = item[len("--config."):].split("=", 1)
    *parents, leaf = path.split(".")
    node = config
    for i, part in enumerate(parents):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise PredictError(f"--config.{path}: config has no key "
                           f"{'.'.join(parents[:i + 1])!r}")
      node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise PredictError(f"--config.{path}: config has no key {path!r}")
    if isinstance(node[leaf], ml_collections.ConfigDict):
      raise PredictError(f"--config.{path}: is a group of keys, not a value")
    try:
      node[leaf] = _parse_value(text, node[leaf], path)
    except TypeError as e:
      raise PredictError(f"--config.{path}={text}: {e}") from e
  return config


def latest_step(checkpoint_dir: str) -> int | None:
  """Largest ``<step>`` with a ``<step>/state`` directory (orbax temp dirs are not numeric)."""
  if not os.path.isdir(checkpoint_dir):
    return None
  steps = [int(n) for n in os.listdir(checkpoint_dir)
           if n.isdigit() and os.path.isdir(os.path.join(checkpoint_dir, n, "state"))]
  return max(steps) if steps else None


def load_model(workdir: str | None = None, checkpoint: str | None = None,
               step: int | None = None, overrides: Sequence[str] = ()
               ) -> tuple[ml_collections.ConfigDict, Any, Any]:
  """(config, params, model_state) on the host, from a training workdir or an export.

  Raises:
    PredictError: a missing directory, config, checkpoint or step (the message names it).
  """
  if (workdir is None) == (checkpoint is None):
    raise PredictError("give exactly one of --workdir and --checkpoint")
  root = os.path.abspath(workdir or checkpoint)
  if not os.path.isdir(root):
    raise PredictError(f"{root}: directory not found")
  config = apply_overrides(config_from_json(os.path.join(root, "config.json")), overrides)
  if checkpoint is not None:
    try:
      params, model_state = checkpointing.load_inference_params(root)
    except FileNotFoundError as e:
      raise PredictError(str(e)) from e
    return config, params, model_state
  ckpt_dir = os.path.join(root, "checkpoints")
  found = latest_step(ckpt_dir)
  if found is None:
    raise PredictError(f"{ckpt_dir}: no training checkpoint (<step>/state) found")
  step = found if step is None else step
  state_dir = os.path.join(ckpt_dir, str(step), "state")
  if not os.path.isdir(state_dir):
    raise PredictError(f"{state_dir}: checkpoint step {step} not found (latest is {found})")
  state = checkpointing.restore_as_numpy(state_dir)
  return config, state["params"], state.get("model_state") or {}


# ---- class names -----------------------------------------------------------------------------


def categories_from_json(path: str) -> list[dict[str, Any]]:
  """``[{"id", "name"}]`` of any json with a ``categories`` list, sorted by id."""
  try:
    data = load_json(path)
    cats = sorted(({"id": int(c["id"]), "name": str(c.get("name", f"class_{c['id']}"))}
                   for c in data["categories"]), key=lambda c: c["id"])
  except (KeyError, TypeError, ValueError) as e:
    raise PredictError(f"{path}: no usable 'categories' list ({e})") from e
  return cats


def resolve_categories(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """The categories (``{"id", "name"}`` by contiguous label) a run was trained on.

  First match with ``config.data.num_classes`` entries: a source's category map (its target
  dataset defines the labels), the synthetic generator's ``CATEGORIES``, the eval json's
  categories if that file exists, a known benchmark named by a source (``ytvis19``, ``ytvis21``,
  ``ovis``, by source name, kind or path). Otherwise ``class_<id>`` with ids 1..K.
  """
  num = int(config.data.num_classes)
  sources = dict(config.data.sources.items())
  candidates = []
  for src in sources.values():
    if src.get("category_map") in category_maps.MAP_NAMES:
      candidates.append(lambda m=src.category_map: category_maps.target_categories(m))
  if any(src.kind == "synthetic" for src in sources.values()):
    def synthetic_categories() -> list[dict[str, Any]]:
      from input_pipeline import synthetic  # local: the generator is only needed here

      return [{"id": c["id"], "name": c["name"]} for c in synthetic.CATEGORIES]
    candidates.append(synthetic_categories)
  eval_json = common.resolve_paths(config)["__eval__"]["json"]
  if config.data.eval.kind in ("ytvis", "ovis", "synthetic") and os.path.isfile(eval_json):
    candidates.append(lambda: categories_from_json(eval_json))
  hints = [(name, src.kind, str(src.json)) for name, src in sources.items()]
  hints.append(("eval", config.data.eval.kind, str(config.data.eval.json)))
  for dataset, pattern in (("ytvis19", r"ytvis_?(20)?19"), ("ytvis21", r"ytvis_?(20)?21"),
                           ("ovis", r"ovis")):
    if any(re.search(pattern, " ".join(h).lower()) for h in hints):
      candidates.append(lambda d=dataset: category_maps.dataset_categories(d))
  for candidate in candidates:
    try:
      categories = candidate()
    except (PredictError, DataError, ValueError):
      continue
    if len(categories) == num:
      return [{"id": int(c["id"]), "name": str(c["name"])} for c in categories]
  return [{"id": i + 1, "name": f"class_{i + 1}"} for i in range(num)]


# ---- inputs ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Inputs:
  """The videos to run and the label space of their results.

  Attributes:
    records: one ``VideoRecord`` per video (no tracks).
    names: file-system-safe name per video (output file stem).
    categories: ``{"id", "name"}`` by contiguous label for a json input, else ``None`` (the
      model's training categories are used).
  """

  records: list[VideoRecord]
  names: list[str]
  categories: list[dict[str, Any]] | None = None


def _natural_key(name: str) -> list[Any]:
  return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name)]


def _image_files(folder: str) -> list[str]:
  names = [n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS)
           and os.path.isfile(os.path.join(folder, n))]
  return [os.path.join(folder, n) for n in sorted(names, key=_natural_key)]


def _safe_name(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "video"


def _unique(names: Sequence[str]) -> list[str]:
  seen: dict[str, int] = {}
  out = []
  for n in names:
    seen[n] = seen.get(n, 0) + 1
    out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
  return out


def frame_folder_record(paths: Sequence[str], video_id: int) -> VideoRecord:
  """A record of already-sorted frame files; the size is that of the first (decoded) frame."""
  with open(paths[0], "rb") as f:
    first = frames.decode_image(f.read(), paths[0])
  return VideoRecord(source="predict", video_id=video_id, frame_paths=tuple(paths),
                     height=first.shape[0], width=first.shape[1])


def decode_video(path: str, out_dir: str, video_id: int = 1,
                 progress: bool = False) -> VideoRecord:
  """Streams a video file's frames into ``out_dir`` as JPEGs (never all in memory)."""
  import imageio_ffmpeg  # local: only video inputs need ffmpeg

  try:
    reader = imageio_ffmpeg.read_frames(path)
    meta = next(reader)
  except (OSError, RuntimeError, StopIteration) as e:
    raise PredictError(f"{path}: cannot decode video ({e})") from e
  width, height = meta["size"]
  estimate = meta.get("duration", 0) * meta.get("fps", 0)
  paths = []
  bar = tqdm(total=round(estimate) or None, desc=f"decode {os.path.basename(path)}",
             unit="frame", leave=False, disable=not progress)
  try:
    for data in reader:
      image = np.frombuffer(data, np.uint8).reshape(height, width, 3)
      paths.append(os.path.join(out_dir, f"{len(paths):06d}.jpg"))
      Image.fromarray(image).save(paths[-1], quality=_JPEG_QUALITY)
      bar.update()
  except (OSError, RuntimeError) as e:
    raise PredictError(f"{path}: decoding failed after {len(paths)} frames ({e})") from e
  finally:
    reader.close()
    bar.close()
  if not paths:
    raise PredictError(f"{path}: the video has no frames")
  return VideoRecord(source="predict", video_id=video_id, frame_paths=tuple(paths),
                     height=height, width=width)


def open_inputs(path: str, stack: contextlib.ExitStack, frames_root: str | None = None,
                max_videos: int | None = None, progress: bool = False) -> Inputs:
  """Builds the records of ``path`` (video file, frame folder(s) or dataset json).

  Temporary frame folders (video files) are removed when ``stack`` closes.

  Raises:
    PredictError / DataError: a missing or unusable input (the message names it).
  """
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise PredictError(f"{path}: input not found")
  limit = max_videos if max_videos and max_videos > 0 else None
  if path.lower().endswith(".json"):
    if not frames_root:
      raise PredictError(f"{path}: a dataset json needs --frames (the folder its file_names "
                         "are relative to)")
    if not os.path.isdir(frames_root):
      raise PredictError(f"{frames_root}: frames folder not found")
    loaded = load_ytvis(path, frames_root, "predict", for_training=False)
    records = list(loaded.records[:limit])
    names = []
    for r in records:
      folder = os.path.relpath(os.path.dirname(r.frame_paths[0]), os.path.abspath(frames_root))
      names.append(_safe_name(folder) if folder not in (".", "") else f"video_{r.video_id}")
    categories = [{"id": int(c["id"]), "name": str(c.get("name", f"class_{c['id']}"))}
                  for c in loaded.categories]
    return Inputs(records, _unique(names), categories)
  if os.path.isdir(path):
    files = _image_files(path)
    if files:
      return Inputs([frame_folder_record(files, 1)], [_safe_name(os.path.basename(path))])
    subdirs = sorted((d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))),
                     key=_natural_key)
    videos = [(d, _image_files(os.path.join(path, d))) for d in subdirs]
    videos = [(d, f) for d, f in videos if f][:limit]
    if not videos:
      raise PredictError(f"{path}: no frames ({', '.join(IMAGE_EXTENSIONS)}) in the folder or "
                         "its sub-folders")
    records = [frame_folder_record(f, i + 1) for i, (_, f) in enumerate(videos)]
    return Inputs(records, _unique([_safe_name(d) for d, _ in videos]))
  import tempfile

  tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="vis_jax_predict_"))
  record = decode_video(path, tmp, progress=progress)
  return Inputs([record], [_safe_name(os.path.splitext(os.path.basename(path))[0])])


# ---- predicting ------------------------------------------------------------------------------


def predict_videos(bundle: ModelBundle, params: Any, model_state: Any,
                   videos: Iterable[eval_source.EvalVideo], progress: bool = False
                   ) -> Iterator[tuple[eval_source.EvalVideo, list[dict[str, Any]]]]:
  """Yields ``(video, predictions)`` one video at a time (``bundle.predict_video`` format).

  Raises:
    PredictError: the model has no video inference.
    ValueError: a prediction without one segmentation per frame.
  """
  if type(bundle).predict_video is ModelBundle.predict_video:
    raise PredictError(f"model {bundle.config.model_name!r} has no video inference")
  total = len(videos) if isinstance(videos, Sized) else None
  for video in tqdm(videos, total=total, desc="videos", unit="video", disable=not progress):
    predictions = bundle.predict_video(params, model_state, video)
    for i, p in enumerate(predictions):
      if len(p["segmentations"]) != video.length:
        raise ValueError(f"video {video.video_id}: prediction {i} has "
                         f"{len(p['segmentations'])} segmentations for {video.length} frames")
    yield video, predictions


def to_submission(video_id: int, predictions: Sequence[Mapping[str, Any]],
                  label_to_category_id: Mapping[int, int]) -> list[dict[str, Any]]:
  """Official result entries (dataset category ids) of one video's predictions."""
  return [{"video_id": int(video_id), "score": float(p["score"]),
           "category_id": int(label_to_category_id[int(p["label"])]),
           "segmentations": p["segmentations"]} for p in predictions]


# ---- rendering -------------------------------------------------------------------------------


def _name_of(names: Sequence[str] | Mapping[int, str], label: int) -> str:
  try:
    return str(names[label])
  except (IndexError, KeyError):
    return f"class_{label}"


def render_video(video: eval_source.EvalVideo, predictions: Sequence[Mapping[str, Any]],
                 out_path: str, names: Sequence[str] | Mapping[int, str],
                 threshold: float = 0.5, fps: float = 10.0, *, gif: bool = True,
                 sheet: bool = True, gif_max_frames: int = GIF_MAX_FRAMES,
                 progress: bool = False) -> dict[str, str]:
  """Draws the predictions with score >= ``threshold`` on every frame of ``video``.

  Frames are streamed (read → draw → encode); only the GIF's small palette frames and the
  sheet's few thumbnails are kept.

  Args:
    video: the video (frames are read from its record at the original size).
    predictions: ``predict_video`` output (RLEs at the original size).
    out_path: the MP4 to write; the GIF and sheet go next to it as ``<stem>.gif`` and
      ``<stem>_sheet.png``.
    names: class name by contiguous label (``class_<label>`` when missing).
    threshold: minimum score drawn.
    fps: MP4 frame rate (the GIF keeps the same duration with every k-th frame).
    gif, sheet: also write the GIF / contact sheet.
    gif_max_frames: GIF length cap.
    progress: show a frame progress bar.

  Returns:
    ``{"mp4": path[, "gif": path][, "sheet": path]}``.
  """
  kept = sorted((p for p in predictions if float(p["score"]) >= threshold),
                key=lambda p: -float(p["score"]))
  colors = visualize.track_colors(len(kept))
  texts = [f"{_name_of(names, int(p['label']))} {float(p['score']):.2f}" for p in kept]
  h, w = video.original_size
  stem = os.path.splitext(out_path)[0]
  paths = {"mp4": out_path}
  stride = max(1, math.ceil(video.length / max(1, gif_max_frames)))
  sheet_indices = set(np.linspace(0, video.length - 1, min(SHEET_FRAMES, video.length))
                      .round().astype(int).tolist())
  thumbnails = []
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  with contextlib.ExitStack() as stack:
    mp4 = stack.enter_context(visualize.Mp4Writer(out_path, fps))
    gif_writer = None
    if gif:
      paths["gif"] = stem + ".gif"
      gif_writer = stack.enter_context(visualize.GifWriter(paths["gif"], fps / stride,
                                                           GIF_MAX_SIDE))
    for t in tqdm(range(video.length), desc=os.path.basename(stem), unit="frame", leave=False,
                  disable=not progress):
      image = frames.read_frame(video.record, t)
      masks = np.stack([frames.decode_segmentation(p["segmentations"][t], h, w) for p in kept]
                       ) if kept else np.zeros((0, h, w), bool)
      # Reversed so that the highest-scoring mask ends up on top where masks overlap.
      drawn = visualize.overlay_masks(image, masks[::-1], colors[::-1])
      drawn = visualize.draw_labels(drawn, masks, texts, colors)
      mp4.append(drawn)
      if gif_writer is not None and t % stride == 0:
        gif_writer.append(drawn)
      if sheet and t in sheet_indices:
        thumbnails.append(visualize.resize_max_side(drawn, SHEET_MAX_SIDE))
  if sheet:
    paths["sheet"] = stem + "_sheet.png"
    rows = [thumbnails[i:i + 4] for i in range(0, len(thumbnails), 4)]
    visualize.save_png(paths["sheet"], visualize.contact_sheet(rows))
  return paths


# ---- CLI -------------------------------------------------------------------------------------


def run(args: argparse.Namespace, overrides: Sequence[str] = ()) -> dict[str, Any]:
  """Does what the command line asks; returns a JSON-ready summary."""
  config, params, model_state = load_model(args.workdir, args.checkpoint, args.step, overrides)
  progress = not args.quiet
  with contextlib.ExitStack() as stack:
    inputs = open_inputs(args.input, stack, args.frames, args.max_videos, progress)
    if inputs.categories is not None:
      categories = inputs.categories
    elif args.categories:
      categories = categories_from_json(args.categories)
    else:
      categories = resolve_categories(config)
    if len(categories) != config.data.num_classes:
      raise PredictError(f"{args.categories or args.input}: {len(categories)} categories but "
                         f"the model predicts config.data.num_classes={config.data.num_classes}")
    label_to_category_id = {i: c["id"] for i, c in enumerate(categories)}
    names = [c["name"] for c in categories]
    bundle = registry.get_bundle(config)
    source = eval_source.make_eval_source(config, inputs.records)
    name_of = dict(zip((r.video_id for r in inputs.records), inputs.names, strict=True))
    os.makedirs(args.output, exist_ok=True)
    results, rendered = [], []
    for video, predictions in predict_videos(bundle, params, model_state, source, progress):
      results.extend(to_submission(video.video_id, predictions, label_to_category_id))
      if args.render:
        out_path = os.path.join(args.output, f"{name_of[video.video_id]}.mp4")
        rendered.append(render_video(video, predictions, out_path, names,
                                     args.score_threshold, args.fps, progress=progress))
  json_path, _ = write_submission(results, args.output)
  return {"videos": len(inputs.records), "predictions": len(results), "results": json_path,
          "rendered": rendered, "categories": "input json" if inputs.categories is not None
          else (args.categories or "training config")}


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m vis_jax.predict", allow_abbrev=False,
      description="Video instance segmentation with a trained model: results.json and, with "
                  "--render, MP4/GIF/contact-sheet visualisations. Extra --config.a.b=value "
                  "arguments override the run's config.")
  model = parser.add_mutually_exclusive_group(required=True)
  model.add_argument("--workdir", help="training directory (config.json, checkpoints/)")
  model.add_argument("--checkpoint", help="exported/converted parameters (variables/, "
                                          "config.json)")
  parser.add_argument("--step", type=int, help="--workdir checkpoint step (default: latest)")
  parser.add_argument("--input", required=True,
                      help="video file, folder of frames (or of frame folders), or dataset json")
  parser.add_argument("--frames", help="frame root of a dataset json input")
  parser.add_argument("--output", required=True, help="output directory")
  parser.add_argument("--render", action="store_true", help="also write MP4, GIF and sheet")
  parser.add_argument("--score-threshold", type=float, default=0.5,
                      help="draw predictions with at least this score (default 0.5)")
  parser.add_argument("--fps", type=float, default=10.0, help="rendered MP4 frame rate")
  parser.add_argument("--max-videos", type=int, help="only the first N videos of the input")
  parser.add_argument("--categories", help="json whose 'categories' name the model's classes "
                                           "(video/folder inputs)")
  parser.add_argument("--quiet", action="store_true", help="no progress bars")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """CLI entry point; returns the exit code (0 ok, 2 bad input)."""
  parser = _parser()
  args, extra = parser.parse_known_args(argv)
  overrides = [a for a in extra if a.startswith("--config.")]
  unknown = [a for a in extra if not a.startswith("--config.")]
  if unknown:
    parser.error(f"unrecognised arguments: {' '.join(unknown)}")
  if args.fps <= 0:
    parser.error(f"--fps must be > 0, got {args.fps}")
  try:
    summary = run(args, overrides)
  except (PredictError, DataError, common.ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
