"""How good is a frame detector? Per-frame mask quality of a trained Mask2Former (or of VITA's
frame detector) on the annotated frames of the evaluation videos.

CLI (exit code 2 with a one-line message on bad input)::

  python -m vis_jax.detector_report (--workdir DIR [--step N] | --checkpoint DIR)
      [--every 3] [--top-k 10] [--max-videos N] [--output FILE.json] [--probe]
      [--config.a.b=value ...]

Every ``--every``-th frame of every evaluation video (``config.data.eval``, or the local
validation split) goes through the detector at the test size (``config.input.min_size_test``;
override it to study resolution). The JSON report (printed, and written to ``--output``):

* ``frame_AP``, ``frame_AP50``, ``frame_AP75``, ``frame_AR10``: the YouTube-VIS metric with each
  frame as a one-frame video (COCO mask AP on frames). Detections are Mask2Former's instance
  inference: top-k over queries × classes, score = class probability × mask score.
* ``best_query_iou``: mean over annotated (instance, frame) pairs of the best IoU any query's
  mask reaches at the original frame size — mask quality without the classifier or the ranking
  (``best_query_iou_quantiles``: its distribution; gross failures sit in the low quantiles).
  ``best_query_class_accuracy``: how often that query's most likely class is the true one.
* ``resolution_ceiling_iou``: the same mean for the ground truth itself taken to the detector's
  output grid (area-averaged to 1/``common_stride`` of the test size) and back through the
  predictions' upsampling — the most this output resolution allows.
* ``failure_breakdown``: where the low best-query IoUs come from. Each (instance, frame) pair is
  in or out of three groups, and each side reports its count and mean best-query IoU:
  ``merged`` — its best query's mask also covers more than half of another annotated instance
  of the frame (two objects predicted as one); ``same_class_neighbour`` — another instance of its
  class is annotated in the frame; ``small`` — its mask is under ``SMALL_FRACTION`` of the frame.
* ``linear_probe`` (``--probe``): could any mask embedding do better on these features
  (``vis_jax/evaluation/feature_probe.py``)? Per instance, the best linear mask on the mask
  features fitted to its own ground truth: ``frame_iou`` (one embedding per instance-frame, as a
  frame query) and ``track_iou`` (one per track over its sampled frames, as a video query; video
  IoU over those frames), each split by a same-class neighbour in the frame / video. Far above
  ``best_query_iou``, it says the features separate the instances and the decoder's queries do
  not find the embedding that does.
* ``centre_votes`` (detectors with ``model.decoder.peak_prior_votes``): how well the cells of the
  output grid vote for their instance's centre. Per instance-frame, over the cells it covers
  by more than half (ground truth area-averaged to the grid; its centre the cover-weighted mean
  of the cell centres): ``vote_error`` — mean distance of the votes ``cell + offset`` from that
  centre, in units of the padded frame's side; ``vote_purity`` — the fraction of its cells
  whose vote is nearer its own centre than any other annotated instance's of the frame (frames
  with two or more instances), against ``position_purity``, the same for the cells themselves
  (what the peak prior's distance alone can tell apart); each also for the instances with a
  same-class neighbour (``same_class_neighbour``).

For a VITA workdir the detector's parameters are those under ``detector``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from input_pipeline import frames, transforms
from input_pipeline.eval_source import EvalVideo, make_eval_source
from vis_jax import evaluate as ytvis_eval
from vis_jax import predict
from vis_jax.evaluation import feature_probe, runner
from vis_jax.evaluation.submission import encode_results
from vis_jax.inference import postprocess
from vis_jax.models.mask2former_model import Mask2FormerModel


def _detector(config: Any, params: Any, model_state: Any) -> tuple[Mask2FormerModel, Any]:
  """The Mask2Former of ``config`` and its variables (VITA: the ``detector`` subtree)."""
  if config.model_name not in ("mask2former", "vita"):
    raise predict.PredictError(f"config.model_name {config.model_name!r}: the report reads a "
                               "Mask2Former image model or VITA's frame detector")
  module = Mask2FormerModel.from_config(config.model, config.data.num_classes, config.dtype)
  if config.model_name == "vita":
    params = params["detector"]
    model_state = {k: v["detector"] for k, v in model_state.items() if "detector" in v}
  return module, {"params": params, **model_state}


def _frame(video: EvalVideo, index: int) -> np.ndarray:
  """Frame ``index`` resized to the test size and zero padded: ``[1, H, W, 3]`` uint8."""
  h, w = video.resized_size
  image = np.zeros((1, *video.padded_size, 3), np.uint8)
  image[0, :h, :w] = transforms.resize_image(frames.read_frame(video.record, index), (h, w))
  return image


def _to_original(grid_logits: np.ndarray, video: EvalVideo) -> tuple[np.ndarray, np.ndarray]:
  """``[n, h, w]`` logits on the output grid → (bool ``[n, H0, W0]``, mask scores ``[n]``),
  through the predictions' upsampling chain."""
  masks, numerator, denominator = postprocess.upsample_chunk(
      jnp.asarray(grid_logits[:, None]), jnp.ones((1,), bool), tuple(video.padded_size),
      tuple(video.resized_size), tuple(video.original_size))
  return np.asarray(masks)[:, 0], np.asarray(numerator) / (np.asarray(denominator) + 1e-6)


def ceiling_grid(gt: np.ndarray, video: EvalVideo, stride: int) -> np.ndarray:
  """GT ``[g, H0, W0]`` bool → logits ``[g, h, w]`` on the output grid (area average; 0 ↔
  half covered; padding −1)."""
  h, w = video.resized_size
  grid_h, grid_w = video.padded_size[0] // stride, video.padded_size[1] // stride
  inner = (round(h / stride), round(w / stride))
  small = jax.image.resize(jnp.asarray(gt, jnp.float32), (gt.shape[0], *inner), "linear",
                           antialias=True)
  grid = jnp.full((gt.shape[0], grid_h, grid_w), -1.0).at[:, :inner[0], :inner[1]].set(
      small * 2.0 - 1.0)
  return np.asarray(grid)


def ceiling_masks(gt: np.ndarray, video: EvalVideo, stride: int) -> np.ndarray:
  """GT ``[g, H0, W0]`` → the output grid → back through the predictions' upsampling."""
  return _to_original(ceiling_grid(gt, video, stride), video)[0]


SMALL_FRACTION = 0.02
MERGE_COVERAGE = 0.5


def _overlaps(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``[n, H, W]`` × ``[g, H, W]`` bool → (intersections ``[n, g]``, areas ``[n]``, ``[g]``)."""
  p = pred.reshape(pred.shape[0], -1).astype(np.float32)
  g = gt.reshape(gt.shape[0], -1).astype(np.float32)
  return p @ g.T, p.sum(1), g.sum(1)


def _coverage(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """``[n, H, W]`` × ``[g, H, W]`` bool → fraction of each GT mask inside each prediction
  ``[n, g]`` (0 for an empty GT)."""
  inter, _, area = _overlaps(pred, gt)
  return np.where(area > 0, inter / np.maximum(area, 1.0), 0.0)


def failure_flags(best_masks: np.ndarray, gt: np.ndarray,
                  labels: Sequence[int]) -> dict[str, np.ndarray]:
  """Per GT instance of one frame, bool ``[g]`` for each group of ``failure_breakdown``.

  Args:
    best_masks: ``[g, H, W]`` bool, the best-IoU predicted mask of each instance.
    gt: ``[g, H, W]`` bool annotated masks of the frame.
    labels: ``g`` class labels.
  """
  coverage = _coverage(best_masks, gt)                              # [g (instance), g (other)]
  np.fill_diagonal(coverage, 0.0)
  labels = np.asarray(labels)
  same_class = labels[:, None] == labels[None, :]
  np.fill_diagonal(same_class, False)
  area = gt.reshape(gt.shape[0], -1).mean(1)
  return {"merged": (coverage > MERGE_COVERAGE).any(1),
          "same_class_neighbour": same_class.any(1),
          "small": area < SMALL_FRACTION}


def _breakdown(best_iou: Sequence[float], flags: dict[str, list[bool]]) -> dict[str, Any]:
  iou = np.asarray(best_iou, np.float64)

  def side(select: np.ndarray) -> dict[str, float]:
    return {"instance_frames": int(select.sum()),
            "best_query_iou": float(iou[select].mean()) if select.any() else float("nan")}

  groups = {name: np.asarray(f, bool) for name, f in flags.items()}
  return {name: {"in": side(f), "out": side(~f)} for name, f in groups.items()}


def _ious(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """``[n, H, W]`` × ``[g, H, W]`` bool → IoU ``[n, g]``."""
  inter, pred_area, gt_area = _overlaps(pred, gt)
  union = pred_area[:, None] + gt_area[None, :] - inter
  return np.where(union > 0, inter / np.maximum(union, 1.0), 0.0)


def _quantiles(values: Sequence[float]) -> dict[str, float]:
  """10/25/50/75/90th percentiles (``{}`` for no values)."""
  if not values:
    return {}
  return {f"p{q}": float(np.percentile(values, q)) for q in (10, 25, 50, 75, 90)}


# (video, frame index) → (class logits [Q, K+1], mask logits [Q, h, w] on the output grid).
FramePredictor = Callable[[EvalVideo, int], tuple[np.ndarray, np.ndarray]]


def detector_predictor(config: Any, params: Any, model_state: Any) -> FramePredictor:
  """The trained detector of ``config`` as a ``FramePredictor`` (one compiled forward)."""
  module, variables = _detector(config, params, model_state)
  forward = jax.jit(lambda v, x: module.apply(v, x))

  def predict_frame(video: EvalVideo, index: int) -> tuple[np.ndarray, np.ndarray]:
    out = forward(variables, _frame(video, index))
    return (np.asarray(out["pred_logits"][0], np.float32),
            np.asarray(out["pred_masks"][0], np.float32))

  return predict_frame


# (video, frame index) → mask features [h, w, D] on the output grid.
FeatureFunction = Callable[[EvalVideo, int], np.ndarray]


def detector_features(config: Any, params: Any, model_state: Any) -> FeatureFunction:
  """The trained detector's mask features (backbone + pixel decoder) as a ``FeatureFunction``."""
  module, variables = _detector(config, params, model_state)
  forward = jax.jit(lambda v, x: module.apply(v, x, method=type(module).pixel_features))
  return lambda video, index: np.asarray(
      forward(variables, _frame(video, index))["mask_features"][0], np.float32)


def detector_votes(config: Any, params: Any, model_state: Any) -> FeatureFunction | None:
  """The trained detector's centre offsets ``[h, w, 2]`` (backbone, pixel decoder and the
  decoder's offset head), or None without ``model.decoder.peak_prior_votes``."""
  if not config.model.decoder.get("peak_prior_votes", False):
    return None
  module, variables = _detector(config, params, model_state)

  def offsets(m: Mask2FormerModel, x: jax.Array) -> jax.Array:
    return m.predictor.centre_offsets(m.pixel_features(x)["mask_features"])

  forward = jax.jit(lambda v, x: module.apply(v, x, method=offsets))
  return lambda video, index: np.asarray(forward(variables, _frame(video, index))[0], np.float32)


def vote_statistics(offsets: np.ndarray, cover: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per instance ``(vote error, vote purity, position purity)`` (``centre_votes`` in the module
  docstring) from ``offsets [h, w, 2]`` and the instances' area fractions ``cover [g, h, w]`` on
  the grid; NaN where an instance covers no cell by more than half (and purity NaN when
  ``g < 2``)."""
  h, w = offsets.shape[:2]
  xs, ys = (np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h
  cells = np.stack(np.broadcast_arrays(xs[None, :], ys[:, None]), -1)         # [h, w, 2]
  weight = cover.sum((1, 2))
  centres = np.einsum("ghw,hwc->gc", cover, cells) / np.maximum(weight, 1e-9)[:, None]
  votes = cells + offsets
  g = len(cover)
  error, purity, position = (np.full(g, np.nan) for _ in range(3))

  def nearest(points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points[:, None] - centres[None], axis=-1).argmin(1)

  for k in range(g):
    inside = cover[k] > 0.5
    if not inside.any():
      continue
    error[k] = np.linalg.norm(votes[inside] - centres[k], axis=-1).mean()
    if g >= 2:
      purity[k] = np.mean(nearest(votes[inside]) == k)
      position[k] = np.mean(nearest(cells[inside]) == k)
  return error, purity, position


def _vote_summary(stats: list[tuple[float, float, float, bool]]) -> dict[str, Any]:
  """``centre_votes`` of the module docstring from per instance-frame ``(error, purity,
  position purity, has a same-class neighbour)``."""
  rows = np.array(stats, np.float64).reshape(-1, 4)

  def purity(select: np.ndarray) -> dict[str, Any]:
    chosen = rows[select & ~np.isnan(rows[:, 1])]
    return {"count": len(chosen),
            "vote_purity": float(chosen[:, 1].mean()) if len(chosen) else float("nan"),
            "position_purity": float(chosen[:, 2].mean()) if len(chosen) else float("nan")}

  errors = rows[~np.isnan(rows[:, 0]), 0]
  return {"vote_error": float(errors.mean()) if len(errors) else float("nan"),
          **purity(np.ones(len(rows), bool)), "same_class_neighbour": purity(rows[:, 3] > 0)}


def _grid_logits(logits: np.ndarray, video: EvalVideo, stride: int) -> np.ndarray:
  """``[g, n, h', w']`` logits on the valid part of the grid → ``[g, n, h, w]`` on the whole
  (padded) output grid, padding at -10 (empty)."""
  grid_h, grid_w = video.padded_size[0] // stride, video.padded_size[1] // stride
  full = np.full((*logits.shape[:2], grid_h, grid_w), -10.0, np.float32)
  full[:, :, :logits.shape[2], :logits.shape[3]] = logits
  return full


class _Probe:
  """``feature_probe`` fits for one video: per instance-frame and per track (module docstring:
  ``linear_probe``)."""

  def __init__(self, stride: int):
    self.stride = stride
    self.frame_iou: list[float] = []
    self.frame_same_class: list[bool] = []
    self.track_iou: list[float] = []
    self.track_same_class: list[bool] = []

  def add_video(self, video: EvalVideo, features: list[np.ndarray], gts: list[np.ndarray],
                labels: Sequence[int]) -> None:
    """``features``: per sampled frame ``[h, w, D]``; ``gts``: per sampled frame ``[g, H0, W0]``
    bool for all ``g`` tracks of the video (empty where absent)."""
    if not gts or not len(labels):
      return
    h, w = (round(s / self.stride) for s in video.resized_size)
    feats = np.stack([f[:h, :w] for f in features])                      # [n, h, w, D]
    targets = np.stack([(ceiling_grid(g, video, self.stride)[:, :h, :w] + 1) / 2
                        for g in gts], 1)                               # [g, n, h, w]
    labels = np.asarray(labels)
    same = [(labels == label).sum() > 1 for label in labels]
    inter, union = np.zeros(len(labels)), np.zeros(len(labels))
    per_track = self._masks(feature_probe.fit_masks(feats, targets), video)
    for k, gt in enumerate(gts):
      present = gt.reshape(len(labels), -1).any(1)
      per_frame = self._masks(feature_probe.fit_masks(feats[k:k + 1], targets[:, k:k + 1]),
                              video)[:, 0]
      for i in np.flatnonzero(present):
        self.frame_iou.append(float(_ious(per_frame[i:i + 1], gt[i:i + 1])[0, 0]))
        self.frame_same_class.append(bool((present & (labels == labels[i])).sum() > 1))
      overlap, pred_area, gt_area = _overlaps(per_track[:, k], gt)
      inter += np.diag(overlap)
      union += pred_area + gt_area - np.diag(overlap)
    for i in range(len(labels)):
      if union[i] > 0:
        self.track_iou.append(float(inter[i] / union[i]))
        self.track_same_class.append(same[i])

  def _masks(self, logits: np.ndarray, video: EvalVideo) -> np.ndarray:
    """``[g, n, h', w']`` fitted logits → bool ``[g, n, H0, W0]``."""
    full = _grid_logits(logits, video, self.stride)
    return np.stack([_to_original(full[:, k], video)[0] for k in range(full.shape[1])], 1)

  def summary(self) -> dict[str, Any]:
    def side(values, select):
      values, select = np.asarray(values), np.asarray(select, bool)
      return {"in": {"count": int(select.sum()),
                     "iou": float(values[select].mean()) if select.any() else float("nan")},
              "out": {"count": int((~select).sum()),
                      "iou": float(values[~select].mean()) if (~select).any() else float("nan")}}
    return {"frame_iou": float(np.mean(self.frame_iou)) if self.frame_iou else float("nan"),
            "frame_same_class_neighbour": side(self.frame_iou, self.frame_same_class),
            "track_iou": float(np.mean(self.track_iou)) if self.track_iou else float("nan"),
            "track_same_class_neighbour": side(self.track_iou, self.track_same_class)}


def report(config: Any, predict_frame: FramePredictor, every: int = 3, top_k: int = 10,
           max_videos: int | None = None, frame_features: FeatureFunction | None = None,
           frame_votes: FeatureFunction | None = None) -> dict[str, Any]:
  """Scores ``predict_frame`` on every ``every``-th frame of the evaluation videos; see the
  module docstring for the returned fields (``linear_probe`` with ``frame_features``,
  ``centre_votes`` with ``frame_votes``, the centre offsets on the output grid)."""
  if every < 1 or top_k < 1:
    raise ValueError(f"--every and --top-k must be >= 1 (got {every}, {top_k})")
  stride = int(config.model.pixel_decoder.common_stride)
  data = runner.eval_data_from_config(config)
  label_to_category = data.loaded.label_to_category_id
  source = make_eval_source(config, data.loaded)
  videos = list(source)[:max_videos] if max_videos else list(source)

  gt_videos, gt_annotations, results = [], [], []
  best_iou, best_correct, ceiling = [], [], []
  flags: dict[str, list[bool]] = {"merged": [], "same_class_neighbour": [], "small": []}
  start = time.perf_counter()
  probe = _Probe(stride) if frame_features is not None else None
  votes: list[tuple[float, float, float, bool]] = []
  for video in videos:
    height, width = video.original_size
    probe_tracks = [t for t in video.tracks if not t.iscrowd]
    probe_features, probe_gts = [], []
    for index in range(0, video.length, every):
      if probe is not None:
        probe_features.append(frame_features(video, index))
        probe_gts.append(np.stack([
            frames.decode_segmentation(t.segmentations[index], height, width)
            if t.segmentations[index] is not None else np.zeros((height, width), bool)
            for t in probe_tracks]) if probe_tracks else np.zeros((0, height, width), bool))
      tracks = [t for t in video.tracks if t.segmentations[index] is not None and not t.iscrowd]
      frame_id = len(gt_videos) + 1
      gt_videos.append({"id": frame_id, "height": height, "width": width, "length": 1,
                        "file_names": [f"{video.video_id}/{index}"]})
      gt = np.stack([frames.decode_segmentation(t.segmentations[index], height, width)
                     for t in tracks]) if tracks else np.zeros((0, height, width), bool)
      gt_categories = [int(label_to_category[t.label]) for t in tracks]
      for ann, mask in zip(encode_results(frame_id, gt[:, None], [1.0] * len(tracks),
                                          gt_categories), gt, strict=True):
        gt_annotations.append({
            "id": len(gt_annotations) + 1, "video_id": frame_id, "iscrowd": 0,
            "category_id": ann["category_id"], "segmentations": ann["segmentations"],
            "areas": [float(mask.sum())]})

      logits, grid = predict_frame(video, index)                    # [Q, K+1], [Q, h, w]
      masks, mask_scores = _to_original(grid, video)                # [Q, H0, W0], [Q]
      scores, labels, queries = postprocess.select_topk(logits, top_k)
      results.extend(encode_results(
          frame_id, masks[queries][:, None], scores * mask_scores[queries],
          [int(label_to_category[int(label)]) for label in labels]))
      if tracks:
        ious = _ious(masks, gt)                                     # [Q, g]
        best = ious.argmax(0)
        best_iou.extend(ious.max(0).tolist())
        classes = logits[:, :-1].argmax(-1)
        best_correct.extend((classes[best] == [t.label for t in tracks]).tolist())
        ceiling.extend(np.diag(_ious(ceiling_masks(gt, video, stride), gt)).tolist())
        frame_flags = failure_flags(masks[best], gt, [t.label for t in tracks])
        for name, f in frame_flags.items():
          flags[name].extend(f.tolist())
        if frame_votes is not None:
          cover = (ceiling_grid(gt, video, stride) + 1.0) / 2.0       # padding: 0
          votes.extend(zip(*vote_statistics(frame_votes(video, index), cover),
                           frame_flags["same_class_neighbour"], strict=True))
    if probe is not None:
      probe.add_video(video, probe_features, probe_gts, [t.label for t in probe_tracks])

  categories = [{"id": int(c), "name": str(c)} for c in sorted(set(label_to_category.values()))]
  scored = ytvis_eval.evaluate({"videos": gt_videos, "annotations": gt_annotations,
                                "categories": categories}, results)
  return {
      "frames": len(gt_videos),
      "instance_frames": len(best_iou),
      "test_size": [int(config.input.min_size_test), int(config.input.max_size_test)],
      "frame_AP": 100.0 * float(scored.stats["AP"]),
      "frame_AP50": 100.0 * float(scored.stats["AP50"]),
      "frame_AP75": 100.0 * float(scored.stats["AP75"]),
      "frame_AR10": 100.0 * float(scored.stats["AR10"]),
      "best_query_iou": float(np.mean(best_iou)) if best_iou else float("nan"),
      "best_query_iou_quantiles": _quantiles(best_iou),
      "best_query_class_accuracy": float(np.mean(best_correct)) if best_correct else float("nan"),
      "resolution_ceiling_iou": float(np.mean(ceiling)) if ceiling else float("nan"),
      "failure_breakdown": _breakdown(best_iou, flags),
      **({"linear_probe": probe.summary()} if probe is not None else {}),
      **({"centre_votes": _vote_summary(votes)} if frame_votes is not None else {}),
      "seconds": round(time.perf_counter() - start, 2),
  }


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m vis_jax.detector_report",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", help="training workdir (config.json + checkpoints/)")
  p.add_argument("--checkpoint", help="exported model directory (variables/ + config.json)")
  p.add_argument("--step", type=int, help="checkpoint step (default: latest)")
  p.add_argument("--every", type=int, default=3, help="use every N-th frame (default 3)")
  p.add_argument("--top-k", type=int, default=10, help="detections per frame (default 10)")
  p.add_argument("--max-videos", type=int, help="only the first N evaluation videos")
  p.add_argument("--output", help="also write the report to this JSON file")
  p.add_argument("--probe", action="store_true",
                 help="also fit the linear probe of the mask features (linear_probe)")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args, overrides = _parser().parse_known_args(argv)
  try:
    config, params, model_state = predict.load_model(args.workdir, args.checkpoint, args.step,
                                                     overrides)
    features = detector_features(config, params, model_state) if args.probe else None
    result = report(config, detector_predictor(config, params, model_state), args.every,
                    args.top_k, args.max_videos, features,
                    detector_votes(config, params, model_state))
  except (predict.PredictError, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  text = json.dumps(result, indent=2)
  print(text)
  if args.output:
    with open(args.output, "w") as f:
      f.write(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
