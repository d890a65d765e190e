"""Mask2Former-VIS (spec §2, paper "Mask2Former for Video Instance Segmentation") and its bundle
(``config.model_name = "mask2former_vis"``).

Model: the image model (``Mask2FormerModel``: backbone → pixel decoder, run per frame on the
``B·T`` frames) with the 3-D decoder (``VideoMultiScaleMaskedTransformerDecoder``): queries
attend to all frames' tokens under a 3-D attention mask, keys carry the 3-D sine encoding
``e_t ⊕ e_xy``, masks are ``[B, Q, T, H/4, W/4]`` volumes. Same parameter tree as the image
model (``backbone``, ``pixel_decoder``, ``predictor``), so COCO image checkpoints and official
M2F-VIS checkpoints load with the same converter (``python -m vis_jax.convert --from
detectron2``). With ``T = 1`` it computes the image model's function (the temporal code is then
the same vector on every key, which the softmax ignores; tested).

Training (the official ``VideoSetCriterion``): clip-level Hungarian matching with the
``num_points`` random points shared by all frames (one ``T·P`` vector per query), importance
sampling per (instance, frame), BCE and dice per frame summed and divided by the number of
instances (``vis_jax/losses/criterion.py``, ``mask_loss_per_frame=True``), deep supervision.
Official clips have ``T = 2``.

**Label quirk** (spec §2.1.6): the official code labels an instance with its class in the
*last* sampled frame, and an instance absent from that frame gets the no-object class (its
masks are still supervised). We use the track's own class for every instance present in at
least one frame — the fix IFC and VITA made — because the quirk teaches the classifier to call
real objects "no object". ``config.loss.label_from_last_frame = True`` reproduces the official
behaviour (for matching published numbers exactly).

Inference (``predict_video``, spec §2.3), results in the format of every bundle:
* **whole video** (``length ≤ inference.max_frames_whole``): backbone + pixel decoder in chunks
  of ``inference.chunk_size`` frames (features kept on the device), then the decoder on all
  frames at once; ``T`` is padded to a multiple of ``inference.length_bucket`` with
  ``frame_valid`` (padded frames are neither attended nor counted by the temporal encoding, so
  the result equals the unpadded one and videos of similar length share one compilation);
  top-``k`` (query, class) pairs (10, hard-coded officially), masks streamed into per-frame RLEs.
  Score = class probability (official; ``inference.mask_score = True`` multiplies the mask
  score in, as image Mask2Former and VITA do).
* **chunked** (longer videos; the stitching users of the official code hand-roll): clips of
  ``clip_length`` frames overlapping by ``clip_overlap`` (all the same length: one compilation),
  the queries of each clip's top ``clip_candidates`` pairs linked to tracks by mask IoU on the
  shared frames (``vis_jax/inference/clip_linker.py``), masks averaged where clips overlap,
  class probabilities averaged over a track's clips, top-``k`` (track, class) pairs. Frames
  leave memory as soon as no later clip covers them.

``config.model`` = ``mask2former_model.default_config()`` + ``inference``
(``default_inference_config()``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from pycocotools import mask as mask_util

from configs.common import ConfigDict
from input_pipeline import eval_source
from vis_jax.inference import clip_linker, postprocess
from vis_jax.losses import centre_offsets, criterion
from vis_jax.models.base import Batch, Metrics, ModelBundle
from vis_jax.models.mask2former import VideoMultiScaleMaskedTransformerDecoder
from vis_jax.models.mask2former_model import Mask2FormerModel, criterion_config


def default_inference_config() -> ConfigDict:
  """``config.model.inference`` (official: whole video, top-10, class-probability scores)."""
  return ConfigDict(dict(
      top_k=10,                # detections per video (official: 10)
      mask_score=False,        # score × mask score (image M2F / VITA); official M2F-VIS: False
      max_frames_whole=120,    # longer videos use the chunked mode
      chunk_size=16,           # frames per backbone + pixel-decoder pass
      length_bucket=16,        # whole-video T padded to a multiple of this (1 = exact T)
      clip_length=64,          # chunked mode: frames per clip
      clip_overlap=16,         # chunked mode: frames shared by consecutive clips (< clip_length)
      clip_candidates=20,      # chunked mode: (query, class) pairs per clip whose queries link
      link_iou_threshold=0.5,  # chunked mode: minimum mask IoU to continue a track
      link_soft_iou=True,      # soft IoU on probabilities (IFC) or hard IoU on binary masks
  ))


class Mask2FormerVISModel(Mask2FormerModel):
  """``Mask2FormerModel`` with the 3-D video decoder, on clips ``[B, T, H, W, 3]``.

  Build it with ``Mask2FormerVISModel.from_config(config.model, num_classes, config.dtype)``.
  """

  decoder_class = VideoMultiScaleMaskedTransformerDecoder

  def __call__(self, images: jax.Array, image_valid: jax.Array | None = None,
               frame_valid: jax.Array | None = None, train: bool = False,
               pilot: dict[str, jax.Array] | None = None) -> dict[str, Any]:
    """Runs the whole model on clips.

    Args:
      images: uint8 ``[B, T, H, W, 3]`` RGB, zero padded bottom/right.
      image_valid: optional bool ``[B, H, W]`` (shared by a clip's frames).
      frame_valid: optional bool ``[B, T]``, False for padded frames.
      train: Swin stochastic depth (needs a ``"dropout"`` rng).
      pilot: ``decoder.mask_piloting`` training inputs (ground-truth tracks ``masks
        [B, G, T, H, W]``, ``labels [B, G]``, ``valid [B, G]``); adds ``pilot_outputs``.

    Returns:
      ``pred_logits [B, Q, K+1]``, ``pred_masks [B, Q, T, Hp/4, Wp/4]`` (last layer),
      ``aux_outputs`` (list of ``L`` dicts with the same keys: initial queries, layers
      1..L−1), ``query_features [L, B, Q, C]``.
    """
    b, t = images.shape[:2]
    valid = None if image_valid is None else jnp.repeat(image_valid, t, axis=0)
    multi_scale, mask_features = self.frame_features(
        images.reshape(b * t, *images.shape[2:]), valid, train)
    clips = lambda x: x.reshape(b, t, *x.shape[1:])  # noqa: E731
    return self.decode_video([clips(x) for x in multi_scale], clips(mask_features), frame_valid,
                             pilot)

  def frame_features(self, frames: jax.Array, valid: jax.Array | None = None,
                     train: bool = False) -> tuple[list[jax.Array], jax.Array]:
    """Per-frame backbone + pixel decoder: ``[n, H, W, 3]`` → (3 maps ``[n, h_l, w_l, C]``
    coarsest first, mask features ``[n, Hp/4, Wp/4, D]``)."""
    pix = self.pixel_features(frames, valid, train)
    return list(pix["multi_scale_features"]), pix["mask_features"]

  def decode_video(self, multi_scale: Sequence[jax.Array], mask_features: jax.Array,
                   frame_valid: jax.Array | None = None,
                   pilot: dict[str, jax.Array] | None = None) -> dict[str, Any]:
    """The 3-D decoder on clip features ``[B, T, ...]`` (see ``__call__``)."""
    if pilot is None:
      return self.predictor(multi_scale, mask_features, frame_valid)
    return self.predictor(multi_scale, mask_features, frame_valid, pilot)


# ---- training ----------------------------------------------------------------------------------


def video_targets(batch: Batch, num_classes: int, label_from_last_frame: bool = False
                  ) -> dict[str, jax.Array]:
  """Criterion targets of a clip batch.

  Args:
    batch: ``masks [B, G, T, H, W]``, ``labels [B, G]``, ``present [B, G, T]``,
      ``instance_valid [B, G]`` (present in ≥ 1 frame, as the official ``valid_idx``).
    num_classes: ``K`` (the no-object class).
    label_from_last_frame: the official quirk: instances absent from the last frame are
      labelled no-object (see the module docstring).

  Returns:
    ``masks``, ``labels``, ``instance_valid`` for ``criterion.set_criterion``.
  """
  labels = batch["labels"]
  if label_from_last_frame:
    labels = jnp.where(batch["present"][:, :, -1], labels, num_classes)
  return {"masks": batch["masks"], "labels": labels, "instance_valid": batch["instance_valid"]}


def _fp32_set(o: dict[str, Any]) -> dict[str, Any]:
  return {k: o[k].astype(jnp.float32) for k in ("pred_logits", "pred_masks")}


def _fp32(outputs: dict[str, Any]) -> dict[str, Any]:
  return dict(_fp32_set(outputs), aux_outputs=[_fp32_set(a) for a in outputs["aux_outputs"]])


class Mask2FormerVIS(ModelBundle):
  """Bundle for ``config.model_name = "mask2former_vis"`` (see the module docstring)."""

  batch_keys = ("images", "image_valid", "masks", "labels", "present", "instance_valid")

  def __init__(self, config: ConfigDict):
    super().__init__(config)
    self.module = Mask2FormerVISModel.from_config(config.model, config.data.num_classes,
                                                  config.dtype)
    self.loss_cfg = criterion_config(config)
    self.num_classes = int(config.data.num_classes)
    self.label_from_last_frame = bool(config.loss.get("label_from_last_frame", False))
    self.mask_piloting = bool(config.model.decoder.get("mask_piloting", False))
    self.mask_piloting_weight = float(config.loss.get("mask_piloting_weight", 1.0))
    self.centre_offset_weight = float(config.loss.get("centre_offset_weight", 0.0))
    self.inference = config.model.get("inference", default_inference_config())

  def init(self, rng: jax.Array, batch: Batch) -> tuple[Any, Any]:
    params_key, dropout_key = jax.random.split(rng)
    variables = dict(self.module.init({"params": params_key, "dropout": dropout_key},
                                      batch["images"], batch["image_valid"]))
    return variables.pop("params"), variables  # {"frozen_bn": ...} for ResNet, {} for Swin

  def loss(self, params: Any, model_state: Any, batch: Batch, rng: jax.Array
           ) -> tuple[jax.Array, Metrics]:
    dropout_key, criterion_key = jax.random.split(rng)
    targets = video_targets(batch, self.num_classes, self.label_from_last_frame)
    pilot = None
    if self.mask_piloting:
      # The piloted query's content is its track's class (even where the official quirk
      # supervises it as no-object).
      pilot = {"masks": batch["masks"], "labels": batch["labels"],
               "valid": batch["instance_valid"]}
    outputs = self.module.apply({"params": params, **model_state}, batch["images"],
                                batch["image_valid"], train=True, pilot=pilot,
                                rngs={"dropout": dropout_key})
    total, metrics = criterion.set_criterion(_fp32(outputs), targets, None, criterion_key,
                                             self.loss_cfg)
    if self.mask_piloting:
      total, metrics = criterion.add_piloted_losses(
          total, metrics, [_fp32_set(o) for o in outputs["pilot_outputs"]], targets,
          criterion_key, self.loss_cfg, self.mask_piloting_weight)
    if self.centre_offset_weight:
      # The frame detector's centre votes (model.decoder.peak_prior_votes) keep their own loss
      # while the detector is fine-tuned on clips.
      metrics["loss_centre_offset"] = centre_offsets.clip_centre_offset_loss(
          outputs["centre_offsets"], batch["masks"], batch["present"], batch["instance_valid"],
          batch["image_valid"])
      total = total + self.centre_offset_weight * metrics["loss_centre_offset"]
      metrics["loss_total"] = total
    return total, metrics

  # ---- inference ------------------------------------------------------------------------------

  @functools.cached_property
  def _jitted(self) -> dict[str, Any]:
    apply = self.module.apply

    def features(variables, frames, valid):
      return apply(variables, frames, valid, method=Mask2FormerVISModel.frame_features)

    def decode(variables, multi_scale, mask_features, frame_valid):
      out = apply(variables, [x[None] for x in multi_scale], mask_features[None],
                  frame_valid[None], method=Mask2FormerVISModel.decode_video)
      return out["pred_logits"][0], out["pred_masks"][0]

    def frames(masks, start, size):  # one compilation for every start
      return jax.lax.dynamic_slice_in_dim(masks, start, size, axis=1)

    return {"features": jax.jit(features), "decode": jax.jit(decode),
            "take": jax.jit(lambda masks, index: masks[index]),
            "frames": jax.jit(frames, static_argnums=2)}

  def _clip_predictions(self, variables: Any, frames: Sequence[np.ndarray], length: int,
                        video: eval_source.EvalVideo) -> tuple[jax.Array, jax.Array]:
    """Decoder outputs for ``length`` frames given in chunks of ``chunk_size`` (the last one
    zero-padded): ``(class logits [Q, K+1], mask logits [Q, T_pad, h, w])`` on the device,
    ``T_pad`` = ``length`` rounded up to ``length_bucket``."""
    cfg = self.inference
    chunk = int(cfg.chunk_size)
    valid = np.zeros((chunk, *video.padded_size), bool)
    valid[:, :video.resized_size[0], :video.resized_size[1]] = True
    multi_scale, mask_features = [], []
    for part in frames:
      ms, mf = self._jitted["features"](variables, part, valid)
      multi_scale.append(ms)
      mask_features.append(mf)
    bucket = max(int(cfg.length_bucket), 1)
    t_pad = -(-length // bucket) * bucket

    def assemble(parts):
      x = jnp.concatenate(parts)[:t_pad]
      return jnp.pad(x, [(0, t_pad - x.shape[0])] + [(0, 0)] * (x.ndim - 1))

    levels = [assemble([ms[level] for ms in multi_scale]) for level in range(len(multi_scale[0]))]
    return self._jitted["decode"](variables, levels, assemble(mask_features),
                                  np.arange(t_pad) < length)

  def _chunks(self, images: np.ndarray) -> list[np.ndarray]:
    """``[n, H, W, 3]`` → chunks of ``chunk_size`` frames, the last one zero-padded."""
    chunk = int(self.inference.chunk_size)
    out = []
    for s in range(0, len(images), chunk):
      part = images[s:s + chunk]
      out.append(np.pad(part, [(0, chunk - len(part))] + [(0, 0)] * 3))
    return out

  def predict_video(self, params: Any, model_state: Any, video: eval_source.EvalVideo
                    ) -> list[dict[str, Any]]:
    variables = {"params": params, **model_state}
    if video.length <= int(self.inference.max_frames_whole):
      return self._predict_whole(variables, video)
    return self._predict_chunked(variables, video)

  def _predict_whole(self, variables: Any, video: eval_source.EvalVideo) -> list[dict[str, Any]]:
    cfg = self.inference
    chunk = int(cfg.chunk_size)
    frames = [part.images for part in eval_source.iter_frame_chunks(video, chunk, pad_last=True)]
    logits, masks = self._clip_predictions(variables, frames, video.length, video)
    scores, labels, query_index = postprocess.select_topk(logits, int(cfg.top_k))
    selected = self._jitted["take"](masks, jnp.asarray(query_index))
    stream = postprocess.StreamingMasks(len(scores), video.padded_size, video.resized_size,
                                        video.original_size)
    step = max(int(cfg.length_bucket), 1)
    for s in range(0, video.length, step):
      stream.add_chunk(self._jitted["frames"](selected, s, step), min(step, video.length - s))
    final = np.asarray(scores, np.float64)
    if cfg.mask_score:
      final = final * stream.mask_scores()
    return _by_score([{"score": float(s), "label": int(label), "segmentations": rles}
                      for s, label, rles in zip(final, labels, stream.rles, strict=True)])

  def _predict_chunked(self, variables: Any, video: eval_source.EvalVideo
                       ) -> list[dict[str, Any]]:
    cfg = self.inference
    clip_length = int(cfg.clip_length)
    stride = clip_length - int(cfg.clip_overlap)
    if clip_length < 1 or not 1 <= stride <= clip_length:
      raise ValueError(f"config.model.inference: need clip_length >= 1 and 0 <= clip_overlap < "
                       f"clip_length, got {clip_length} and {cfg.clip_overlap}")
    starts = clip_linker.clip_starts(video.length, clip_length, stride)
    mask_stride = int(self.config.model.pixel_decoder.common_stride)
    mask_hw = (-(-video.resized_size[0] // mask_stride), -(-video.resized_size[1] // mask_stride))
    linker = clip_linker.ClipLinker(float(cfg.link_iou_threshold), bool(cfg.link_soft_iou),
                                    valid_hw=mask_hw)
    tracks = _TrackMasks(video, clip_length)
    clips = clip_linker.iter_clips(video, clip_length, stride, int(cfg.chunk_size))
    for index, (start, frames) in enumerate(clips):
      logits, masks = self._clip_predictions(variables, self._chunks(frames), len(frames),
                                             video)
      _, _, pairs = postprocess.select_topk(logits, int(cfg.clip_candidates))
      queries = np.asarray(list(dict.fromkeys(int(q) for q in pairs)), np.int64)
      probs = _softmax(np.asarray(logits, np.float32))[:, :-1]
      # Gather a fixed number of rows (one compilation), keep the real ones.
      rows = np.zeros(len(pairs), np.int64)
      rows[:len(queries)] = queries
      cand = np.asarray(self._jitted["take"](masks, jnp.asarray(rows)))
      cand = cand[:len(queries), :len(frames)]
      linker.add_clip(start, cand, probs[queries])
      following = starts[index + 1] if index + 1 < len(starts) else None
      tracks.add(linker.pop_final(following))

    probs = linker.class_probs()
    num_classes = probs.shape[1]
    flat = probs.reshape(-1)
    order = np.argsort(-flat, kind="stable")[:min(int(cfg.top_k), flat.size)]
    results = []
    mask_scores = tracks.mask_scores(linker.num_tracks)
    for i in order:
      track, label = divmod(int(i), num_classes)
      score = float(flat[i]) * (float(mask_scores[track]) if cfg.mask_score else 1.0)
      results.append({"score": score, "label": label,
                      "segmentations": tracks.segmentations(track)})
    return _by_score(results)


def _by_score(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Highest score first (stable): with ``mask_score`` the top-k by class probability is
  re-ordered by the final score, the same way on the whole-video and the chunked path."""
  return sorted(results, key=lambda r: -r["score"])


def _softmax(logits: np.ndarray) -> np.ndarray:
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


class _TrackMasks:
  """Per-frame RLEs of stitched tracks, encoded segment by segment (``clip_linker.Segment``).

  Segments are padded to ``frames`` frames and the track count to a multiple of 8, so the
  upsampling compiles for a few shapes only.
  """

  def __init__(self, video: eval_source.EvalVideo, frames: int):
    self.video = video
    self.frames = int(frames)
    self.rles: dict[int, dict[int, dict[str, Any]]] = {}
    self.numerator: dict[int, float] = {}
    self.denominator: dict[int, float] = {}
    h, w = video.original_size
    empty = mask_util.encode(np.zeros((h, w, 1), np.uint8, order="F"))[0]
    empty["counts"] = empty["counts"].decode("ascii")
    self.empty = empty

  def add(self, segment: clip_linker.Segment | None) -> None:
    if segment is None or not len(segment.track_ids):
      return
    n, f = segment.mask_logits.shape[:2]
    logits = np.full((-(-n // 8) * 8, max(self.frames, f), *segment.mask_logits.shape[2:]),
                     clip_linker.ABSENT_LOGIT, np.float32)
    logits[:n, :f] = segment.mask_logits
    v = self.video
    rles, numerator, denominator = postprocess.upsample_and_encode(
        logits, f, v.padded_size, v.resized_size, v.original_size)
    for m, track in enumerate(segment.track_ids):
      track = int(track)
      self.numerator[track] = self.numerator.get(track, 0.0) + numerator[m]
      self.denominator[track] = self.denominator.get(track, 0.0) + denominator[m]
      mine = self.rles.setdefault(track, {})
      for k in np.flatnonzero(segment.present[m]):
        mine[segment.start + int(k)] = rles[m][k]

  def mask_scores(self, num_tracks: int) -> np.ndarray:
    return np.asarray([self.numerator.get(j, 0.0) / (self.denominator.get(j, 0.0) + 1e-6)
                       for j in range(num_tracks)])

  def segmentations(self, track: int) -> list[dict[str, Any]]:
    mine = self.rles.get(track, {})
    return [mine.get(f, self.empty) for f in range(self.video.length)]
