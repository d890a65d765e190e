"""VITA end to end: the Mask2Former frame detector + the VITA module, and its bundle
(``config.model_name = "vita"``).

Training (spec §3.1): the ``B·T`` frames of a batch go through the frame detector; the
LayerNorm'ed queries of its last ``L`` decoder layers ``[L, B, T, Qf, C]`` and its un-projected
1/4 map feed VITA; the loss is frame-level Mask2Former + clip-level VITA + similarity
(``vis_jax/losses/vita_losses.py``).

Inference (spec §3.8) streams a video of any length with memory that grows with ``T`` only
through the object tokens (``Qf·C`` floats per frame):
  1. frames in chunks of ``inference.chunk_size`` → frame detector → keep the last layer's
     frame queries on the host;
  2. VITA on all frame queries (``T`` padded to a multiple of ``inference.length_bucket`` with
     ``frame_valid``, so videos of similar length share one compilation; the decoder's
     cross-attention runs over key chunks and the encoder over groups of windows,
     ``inference.vita_kv_chunk`` / ``vita_enc_window_chunk``);
     With ``inference.token_keep_ratio = r < 1`` only the ``r·Qf`` frame queries of each frame
     with the lowest no-object probability are kept (token pruning, paper Table 6);
  3. top-k (query, class) pairs, then the chosen queries' masks chunk by chunk from VITA's mask
     features — recomputed by a second backbone + pixel-decoder pass
     (``inference.mask_features = "recompute"``), or kept on the host from pass 1 (``"keep"``,
     faster for short videos; ``"auto"`` keeps up to ``keep_max_frames`` frames) — streamed
     into per-frame RLEs (``vis_jax/inference/postprocess.py``).

``config.model`` = the Mask2Former keys (``mask2former_model.default_config()``) plus ``vita``
(``vita.default_config()``) and ``inference`` (``default_inference_config()``).

Frozen-detector mode (``model.vita.freeze_detector``, paper Table 7): the detector's outputs are
``stop_gradient``-ed and its parameters (``detector/*``) added to the optimizer's frozen
patterns, so only VITA trains — typically after ``--config.init_from`` a trained detector.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs.common import ConfigDict
from input_pipeline import eval_source
from vis_jax.inference import postprocess
from vis_jax.losses import vita_losses
from vis_jax.models import vita
from vis_jax.models.base import Batch, Metrics, ModelBundle
from vis_jax.models.layers.mask_pooling import mask_pool_sums
from vis_jax.models.layers.peak_prior import centre_votes
from vis_jax.models.mask2former_model import (
  Mask2FormerModel,
  as_single_frame_clips,
  criterion_config,
)


def default_inference_config() -> ConfigDict:
  """``config.model.inference`` (official: 18-frame chunks, top-10; 20 for OVIS).

  ``vita_kv_chunk`` / ``vita_enc_window_chunk``: VITA's ``kv_chunk`` / ``enc_window_chunk`` at
  inference (0 = those of ``config.model.vita``): long videos then never build the dense
  decoder attention or all encoder windows' attention and FFN at once (same results).
  """
  return ConfigDict(dict(chunk_size=18, top_k=10, length_bucket=16, mask_features="auto",
                         keep_max_frames=36, vita_kv_chunk=2048, vita_enc_window_chunk=8,
                         token_keep_ratio=1.0))


def prune_frame_queries(queries: np.ndarray, no_object_prob: np.ndarray, ratio: float
                        ) -> tuple[np.ndarray, np.ndarray]:
  """Token pruning (paper §4.4, Table 6): per frame, the ``round(ratio·Qf)`` frame queries
  with the lowest "no object" probability (at least one).

  Args:
    queries: ``[T, Qf, C]`` frame queries.
    no_object_prob: ``[T, Qf]`` the detector's no-object probability of each query.
    ratio: ``r`` in (0, 1].

  Returns:
    ``(kept [T, k, C], slots [T, k])``: kept queries in ascending no-object order (ties: lower
    slot first) and their detector slots.
  """
  if not 0.0 < ratio <= 1.0:
    raise ValueError(f"config.model.inference.token_keep_ratio must be in (0, 1], got {ratio}")
  qf = queries.shape[1]
  k = max(1, int(round(ratio * qf)))
  slots = np.argsort(no_object_prob, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(queries, slots[..., None], axis=1), slots.astype(np.int32)


class VitaModel(nn.Module):
  """Frame detector (``detector``) + VITA module (``vita``) on clips ``[B, T, H, W, 3]``."""

  detector: Mask2FormerModel
  vita_cfg: Any
  dtype: Any = jnp.float32

  def setup(self):
    self.vita = vita.VITAModule(self.vita_cfg, self.detector.num_classes,
                                int(self.detector.decoder_config.get("num_queries", 100)),
                                dtype=self.dtype)

  def __call__(self, images: jax.Array, image_valid: jax.Array, train: bool = False
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Training forward.

    Args:
      images: uint8 ``[B, T, H, W, 3]``.
      image_valid: bool ``[B, H, W]`` (shared by the clip's frames).
      train: training behaviour.

    Returns:
      (frame outputs of the detector on ``B·T`` frames, VITA outputs with ``L`` samples).
    """
    b, t = images.shape[:2]
    frames = images.reshape(b * t, *images.shape[2:])
    valid = jnp.repeat(image_valid, t, axis=0)
    frozen = bool(vita.config_value(self.vita_cfg, "freeze_detector"))
    # A frozen detector runs as at inference (no stochastic depth) and, through
    # stop_gradient, costs no backward pass; its frame loss is still computed for the
    # similarity loss's frame-level matches and for logging.
    out = self.detector(frames, valid, train and not frozen)
    if frozen:
      out = jax.lax.stop_gradient(out)
    n_layers = int(self.vita_cfg.last_layer_num) if train else 1
    queries = out["query_features"][-n_layers:]
    queries = queries.reshape(n_layers, b, t, *queries.shape[2:])
    pixels = out["pre_mask_features"]
    pixels = pixels.reshape(b, t, *pixels.shape[1:])
    offsets = out.get("centre_offsets")
    if offsets is not None:
      offsets = offsets.reshape(b, t, *offsets.shape[1:])
    return out, self.vita(queries, pixels, train=train, centre_offsets=offsets)

  # ---- inference pieces (each jitted separately by the bundle) ------------------------------

  def frame_queries(self, frames: jax.Array, valid: jax.Array
                    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array | None], jax.Array]:
    """``[n, H, W, 3]`` → (last-layer frame queries ``[n, Qf, C]``, (VITA mask features
    ``[n, h, w, D]``, the detector's ``centre_offsets [n, h, w, 2]`` or None), the detector's
    no-object probabilities ``[n, Qf]``)."""
    out = self.detector(frames, valid)
    no_object = jax.nn.softmax(out["pred_logits"].astype(jnp.float32), axis=-1)[..., -1]
    features = (self.vita.project_mask_features(out["pre_mask_features"]),
                out.get("centre_offsets"))
    return out["query_features"][-1], features, no_object

  def mask_features(self, frames: jax.Array, valid: jax.Array
                    ) -> tuple[jax.Array, jax.Array | None]:
    """Backbone + pixel decoder only → (VITA mask features ``[n, h, w, D]``, the detector's
    ``centre_offsets [n, h, w, 2]`` — its decoder's dense head — or None)."""
    pix = self.detector.pixel_features(frames, valid)
    offsets = None
    if self.detector.decoder_config.get("peak_prior_votes", False):
      offsets = self.detector.predictor.centre_offsets(pix["mask_features"])
    return self.vita.project_mask_features(pix["pre_mask_features"]), offsets

  def video_predictions(self, queries: jax.Array, frame_valid: jax.Array,
                        query_slots: jax.Array | None = None) -> dict[str, Any]:
    """``[T, Qk, C]`` frame queries (+ ``[T]`` validity, ``[T, Qk]`` detector slots when
    pruned) → VITA outputs for one video."""
    slots = None if query_slots is None else query_slots[None]
    return self.vita(queries[None, None], None, train=False, frame_valid=frame_valid[None],
                     query_slots=slots)


class Vita(ModelBundle):
  """Bundle for ``config.model_name = "vita"``."""

  batch_keys = ("images", "image_valid", "masks", "labels", "present", "instance_valid",
                "track_ids")

  def __init__(self, config: ConfigDict):
    super().__init__(config)
    detector = Mask2FormerModel.from_config(config.model, config.data.num_classes, config.dtype)
    self.module = VitaModel(detector, ml_collections.FrozenConfigDict(config.model.vita),
                            dtype=detector.dtype)
    self.loss_cfg = criterion_config(config)
    self.inference = config.model.inference

  def frozen_patterns(self) -> tuple[str, ...]:
    # Frozen-detector mode (paper Table 7): everything outside ``vita`` (the VITA module,
    # including its own ``vita_mask_features`` projection) keeps its initial values.
    if vita.config_value(self.config.model.vita, "freeze_detector"):
      return (r"^detector/",)
    return ()

  def init(self, rng: jax.Array, batch: Batch) -> tuple[Any, Any]:
    params_key, dropout_key = jax.random.split(rng)
    # train=True creates every head (the similarity embeddings are only used in training).
    variables = dict(self.module.init({"params": params_key, "dropout": dropout_key},
                                      batch["images"], batch["image_valid"], train=True))
    return variables.pop("params"), variables

  def loss(self, params: Any, model_state: Any, batch: Batch, rng: jax.Array
           ) -> tuple[jax.Array, Metrics]:
    dropout_key, loss_key = jax.random.split(rng)
    frame_out, video_out = self.module.apply(
        {"params": params, **model_state}, batch["images"], batch["image_valid"], train=True,
        rngs={"dropout": dropout_key})
    frame_out = as_single_frame_clips(frame_out)
    video_out = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), video_out)
    total, metrics = vita_losses.vita_total_loss(frame_out, video_out, batch, loss_key,
                                                 self.loss_cfg)
    return total, metrics

  # ---- inference ------------------------------------------------------------------------------

  @functools.cached_property
  def _jitted(self) -> dict[str, Any]:
    apply = self.module.apply
    vita_cfg = self.module.vita_cfg.as_configdict()
    for key in ("kv_chunk", "enc_window_chunk"):
      if int(self.inference.get(f"vita_{key}", 0)) > 0:
        vita_cfg[key] = int(self.inference[f"vita_{key}"])
    video_apply = self.module.clone(vita_cfg=ml_collections.FrozenConfigDict(vita_cfg)).apply
    prior_scale = float(vita.config_value(vita_cfg, "peak_prior_scale"))

    def call(method, apply=apply):
      return jax.jit(lambda variables, *args: apply(variables, *args, method=method))

    def masks_from_features(mask_embed, features):
      feats = features[0]
      return jnp.einsum("kd,thwd->kthw", mask_embed, feats.astype(mask_embed.dtype))

    def pool_sums(mask_embed, features, num_valid):
      feats = features[0]
      frame_valid = jnp.arange(feats.shape[0]) < num_valid
      sums = mask_pool_sums(masks_from_features(mask_embed, features)[None], feats[None],
                            frame_valid[None])
      return tuple(x[0] for x in sums)

    def peak_prior_masks(mask_embed, previous_embed, coefficients, vote_coefficients, features):
      """``peak_prior``: the chunk's masks plus the prior centred on the previous layer's (and
      with ``peak_prior_votes`` the vote prior on the chunk's centre offsets)."""
      masks = masks_from_features(mask_embed, features)
      previous = masks_from_features(previous_embed, features)[None, None]
      prior = vita.VITAModule.peak_prior(coefficients[None, None], previous, prior_scale)
      if vote_coefficients is not None:
        votes = centre_votes(features[1])[None]                            # [1, t, h, w, 2]
        prior = prior + vita.VITAModule.vote_prior(vote_coefficients[None, None], previous,
                                                   votes, prior_scale)
      return masks + prior[0, 0]

    def pooled_embed(variables, mask_embed, numerator, denominator):
      return apply(variables, mask_embed, numerator, denominator,
                   method=lambda m, *a: m.vita.pooled_mask_embed(*a))

    return {"frame_queries": call(VitaModel.frame_queries),
            "video": call(VitaModel.video_predictions, video_apply),
            "mask_features": call(VitaModel.mask_features),
            "masks_from_features": jax.jit(masks_from_features),
            "pool_sums": jax.jit(pool_sums), "pooled_embed": jax.jit(pooled_embed),
            "peak_prior_masks": jax.jit(peak_prior_masks)}

  def predict_video(self, params: Any, model_state: Any, video: eval_source.EvalVideo
                    ) -> list[dict[str, Any]]:
    cfg = self.inference
    fns = self._jitted
    variables = {"params": params, **model_state}
    chunk = int(cfg.chunk_size)
    valid = np.zeros((chunk, *video.padded_size), bool)
    valid[:, :video.resized_size[0], :video.resized_size[1]] = True
    keep = cfg.mask_features == "keep" or (
        cfg.mask_features == "auto" and video.length <= int(cfg.keep_max_frames))

    ratio = float(cfg.get("token_keep_ratio", 1.0))
    queries, slots, kept_features = [], [], []
    for part in eval_source.iter_frame_chunks(video, chunk, pad_last=True):
      q, features, no_object = fns["frame_queries"](variables, part.images, valid)
      q = np.asarray(q[:part.num_valid], np.float32)
      if ratio < 1.0:
        q, s = prune_frame_queries(q, np.asarray(no_object[:part.num_valid]), ratio)
        slots.append(s)
      queries.append(q)
      if keep:
        kept_features.append(features)
    queries = np.concatenate(queries)
    t = queries.shape[0]
    bucket = max(int(cfg.length_bucket), 1)
    padded_t = -(-t // bucket) * bucket
    queries = np.pad(queries, ((0, padded_t - t), (0, 0), (0, 0)))
    if slots:
      # Padded frames are never attended; their slots only need to be valid indices.
      slot_array = np.pad(np.concatenate(slots), ((0, padded_t - t), (0, 0)))
      out = fns["video"](variables, queries, np.arange(padded_t) < t, slot_array)
    else:
      out = fns["video"](variables, queries, np.arange(padded_t) < t)

    scores, labels, query_index = postprocess.select_topk(out["pred_logits"][0, 0],
                                                          int(cfg.top_k))
    mask_embed = jnp.asarray(out["pred_mask_embed"][0, 0])[query_index]

    def feature_chunks():
      """((VITA mask features, centre offsets or None) of a chunk, its real frames): kept, or
      recomputed per pass."""
      if keep:
        for index, features in enumerate(kept_features):
          yield features, min(chunk, t - index * chunk)
      else:
        for part in eval_source.iter_frame_chunks(video, chunk, pad_last=True):
          yield fns["mask_features"](variables, part.images, valid), part.num_valid

    if vita.config_value(self.module.vita_cfg, "mask_pooling"):
      # First pass: pool the features under the first-pass masks of every frame.
      numerator = jnp.zeros(mask_embed.shape, jnp.float32)
      denominator = jnp.zeros(mask_embed.shape[:1], jnp.float32)
      for features, num_valid in feature_chunks():
        num, den = fns["pool_sums"](mask_embed, features, num_valid)
        numerator, denominator = numerator + num, denominator + den
      mask_embed = fns["pooled_embed"](variables, mask_embed, numerator, denominator)
    stream = postprocess.StreamingMasks(len(scores), video.padded_size, video.resized_size,
                                        video.original_size)
    if "pred_prev_mask_embed" in out:
      previous_embed = jnp.asarray(out["pred_prev_mask_embed"][0, 0])[query_index]
      coefficients = jnp.asarray(out["pred_peak_coefficients"][0, 0])[query_index]
      vote_coefficients = None
      if "pred_vote_coefficients" in out:
        vote_coefficients = jnp.asarray(out["pred_vote_coefficients"][0, 0])[query_index]
      chunk_masks = lambda features: fns["peak_prior_masks"](
          mask_embed, previous_embed, coefficients, vote_coefficients, features)
    else:
      chunk_masks = lambda features: fns["masks_from_features"](mask_embed, features)
    for features, num_valid in feature_chunks():
      stream.add_chunk(chunk_masks(features), num_valid)
    final = np.asarray(scores, np.float64) * stream.mask_scores()
    return [{"score": float(s), "label": int(label), "segmentations": rles}
            for s, label, rles in zip(final, labels, stream.rles, strict=True)]
