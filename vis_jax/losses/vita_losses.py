"""VITA losses (spec §3.5): clip-level set criterion, similarity loss, frame + video combination.

Official ``VitaSetCriterion`` behaviour, expressed with ``criterion.set_criterion``:

* **L samples.** The ``L`` frame-decoder layers fed to VITA are independent samples: predictions
  ``[L, B, ...]`` are flattened to ``[L·B, ...]`` (layer-major, index ``l·B + b``) and the clip
  targets repeated ``L`` times in the same order, so every layer has its own matching and
  ``num_masks = L × #instances`` (all-reduced, / world size, ≥ 1).
* **Clip-level matching and mask losses.** Costs (class 2 / BCE 5 / dice 5) over one set of
  ``P`` uniform points per sample shared by all ``T`` frames; losses on ``P`` importance-sampled
  points per (instance, frame), concatenated to one ``T·P`` vector per instance: one BCE mean and
  one dice per instance (``mask_loss_per_frame=False``). CE over ``K+1`` with no-object weight
  ``vita_eos_coef`` (official ``VITA.NO_OBJECT_WEIGHT`` 0.1). Every VITA decoder layer
  (``aux_outputs``, final) is matched and supervised with equal weights.
* **Similarity loss** (``loss_vita_sim``, last VITA decoder layer only): per sample ``(l, b)``
  the set of (a) ``pred_fq_embed`` of every frame query that the frame-level matcher of frame
  layer ``l`` assigned to a GT instance in that frame and (b) ``pred_cq_embed`` of every video
  query the VITA matcher assigned to a GT instance; identity = the instance's track id. Logits
  are raw dot products of all pairs (self-pairs included), targets 1 for equal identities,
  BCE-with-logits averaged over all pairs of the same sample (pairs across samples never
  count). The official code re-bases track ids per clip and adds ``1000·(l·B + b)`` only to
  keep samples apart; comparing ids within a sample makes that unnecessary, so raw dataset
  ``track_ids`` (or slot indices when absent) are compared directly.
* **Total.** ``video_weight·L_v + sim_weight·L_sim`` here; ``combine_losses`` adds
  ``frame_weight·L_f`` (paper λ_v = λ_f = 1, λ_sim = 0.5).

Static shapes: the similarity set is ``T·G + G`` slots per sample (each frame-level / clip-level
target slot with the query matched to it), masked by "matched"; pair sums use the mask.

As for classification, the official similarity mean is per GPU; under ``jit`` on global arrays it
is over the global batch (differs only through per-GPU pair counts).

Config (the frame-level ``config.loss`` keys of ``criterion.py`` plus; defaults in brackets):
  num_classes: ``K`` (required by ``set_criterion``).
  vita_eos_coef: no-object CE weight of the clip-level loss [``eos_coef``, officially 0.1].
  sim_weight: λ_sim [0.5]; 0 disables the similarity loss.
  video_weight: λ_v [1.0].
  frame_weight: λ_f [1.0].

Targets (input-pipeline batch): ``masks`` bool ``[B, G, T, H, W]``, ``labels [B, G]``,
``instance_valid [B, G]``, ``present [B, G, T]`` (optional), ``track_ids [B, G]`` (optional).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from vis_jax.losses import matching
from vis_jax.losses.criterion import compute_matches, set_criterion, stack_layers

Outputs = Mapping[str, Any]
Targets = Mapping[str, jax.Array]

_LOSS_DEFAULTS = dict(sim_weight=0.5, video_weight=1.0, frame_weight=1.0)


class _Overlay:
  """Read-only view of ``cfg`` with some keys replaced (``set_criterion`` reads attributes)."""

  def __init__(self, cfg: Any, **overrides: Any):
    self._cfg, self._overrides = cfg, overrides

  def __getattr__(self, name: str) -> Any:
    if name in self._overrides:
      return self._overrides[name]
    return getattr(self._cfg, name)


def _get(cfg: Any, name: str) -> Any:
  if name == "vita_eos_coef":
    return getattr(cfg, name, cfg.eos_coef)
  return getattr(cfg, name, _LOSS_DEFAULTS[name])


# ---- targets ---------------------------------------------------------------------------------


def presence(targets: Targets) -> jax.Array:
  """``[B, G, T]`` bool: instance valid and present (non-empty mask) in the frame."""
  valid = targets["instance_valid"].astype(bool)
  present = targets.get("present")
  if present is None:
    present = jnp.any(targets["masks"], axis=(-2, -1))
  return valid[..., None] & present.astype(bool)


def clip_targets(targets: Targets) -> dict[str, jax.Array]:
  """Clip-level targets; an instance counts if it is present in some frame (official filter)."""
  return {"masks": targets["masks"], "labels": targets["labels"],
          "instance_valid": jnp.any(presence(targets), axis=-1)}


def frame_targets(targets: Targets) -> dict[str, jax.Array]:
  """Per-frame targets for the frame-level Mask2Former loss (official ``frame_targets``).

  Returns:
    ``masks [B·T, G, 1, H, W]``, ``labels [B·T, G]``, ``instance_valid [B·T, G]`` (present in
    that frame); slot ``g`` of frame ``b·T + t`` is clip slot ``g`` of clip ``b``.
  """
  masks = targets["masks"]
  b, g, t = masks.shape[:3]
  valid = jnp.swapaxes(presence(targets), 1, 2).reshape(b * t, g)
  frame_masks = jnp.swapaxes(masks, 1, 2).reshape(b * t, g, 1, *masks.shape[-2:])
  labels = jnp.repeat(targets["labels"], t, axis=0)
  return {"masks": frame_masks, "labels": labels, "instance_valid": valid}


def _repeat_samples(x: jax.Array, n: int) -> jax.Array:
  """``[B, ...]`` → ``[n·B, ...]`` in layer-major order (official ``targets * L``)."""
  return jnp.broadcast_to(x[None], (n, *x.shape)).reshape(n * x.shape[0], *x.shape[1:])


# ---- similarity loss -------------------------------------------------------------------------


def similarity_loss(fq_embed: jax.Array, cq_embed: jax.Array | None, frame_matches: jax.Array,
                    clip_matches: jax.Array, identities: jax.Array,
                    frame_valid: jax.Array, clip_valid: jax.Array) -> jax.Array:
  """``loss_vita_sim`` (module docstring).

  Args:
    fq_embed: ``[L, B, T, Qf, C]`` ``sim_embed_frame`` outputs.
    cq_embed: ``[L, B, Nv, C]`` ``sim_embed_clip`` outputs of the last VITA layer, or None
      (official ``SIM_USE_CLIP False``: frame queries only).
    frame_matches: ``[L, B, T, 2, Qf]`` frame-level matches of the ``L`` frame layers fed to
      VITA (target index = clip slot ``g``, −1 unmatched).
    clip_matches: ``[L, B, 2, Nv]`` VITA matches of the last decoder layer.
    identities: int ``[B, G]`` track identity of each slot.
    frame_valid: bool ``[B, T, G]`` slot present in the frame.
    clip_valid: bool ``[B, G]`` slot is a clip instance.

  Returns:
    float32 scalar: mean BCE over same-sample pairs of matched items.
  """
  n_l, b, t, _, qf = frame_matches.shape
  g = identities.shape[1]
  f_t2p = matching.target_to_pred(frame_matches.reshape(n_l * b * t, 2, qf), g)
  f_t2p = f_t2p.reshape(n_l, b, t, g)
  take = lambda emb, idx: jnp.take_along_axis(emb, jnp.maximum(idx, 0)[..., None], axis=-2)
  items = [take(fq_embed.astype(jnp.float32), f_t2p).reshape(n_l, b, t * g, -1)]
  selected = [((f_t2p >= 0) & frame_valid[None]).reshape(n_l, b, t * g)]
  ids = [jnp.broadcast_to(identities[None, :, None], (n_l, b, t, g)).reshape(n_l, b, t * g)]
  if cq_embed is not None:
    c_t2p = matching.target_to_pred(clip_matches.reshape(n_l * b, *clip_matches.shape[2:]), g)
    c_t2p = c_t2p.reshape(n_l, b, g)
    items.append(take(cq_embed.astype(jnp.float32), c_t2p))
    selected.append((c_t2p >= 0) & clip_valid[None])
    ids.append(jnp.broadcast_to(identities[None], (n_l, b, g)))
  x = jnp.concatenate(items, axis=2)
  sel = jnp.concatenate(selected, axis=2)
  ident = jnp.concatenate(ids, axis=2)
  logits = jnp.einsum("lbic,lbjc->lbij", x, x, precision=jax.lax.Precision.HIGHEST)
  target = (ident[..., :, None] == ident[..., None, :]).astype(jnp.float32)
  pair = (sel[..., :, None] & sel[..., None, :]).astype(jnp.float32)
  bce = jax.nn.softplus(logits) - logits * target
  return jnp.sum(pair * bce) / (jnp.sum(pair) + 1e-6)


# ---- criteria --------------------------------------------------------------------------------


def _flatten_samples(outputs: Outputs, n_l: int) -> dict[str, Any]:
  """``[L, B, ...]`` → ``[L·B, ...]`` for the keys ``set_criterion`` reads."""
  flat = lambda a: a.reshape(n_l * a.shape[1], *a.shape[2:])
  pick = lambda o: {"pred_logits": flat(o["pred_logits"]), "pred_masks": flat(o["pred_masks"])}
  out = pick(outputs)
  out["aux_outputs"] = [pick(a) for a in outputs.get("aux_outputs", ())]
  return out


def vita_criterion(video_outputs: Outputs, targets: Targets, rng: jax.Array, cfg: Any, *,
                   frame_matches: jax.Array | None = None,
                   video_matches: jax.Array | None = None,
                   axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Clip-level VITA losses (+ similarity loss).

  Args:
    video_outputs: ``VITAModule`` training outputs: ``pred_logits [L, B, Nv, K+1]``,
      ``pred_masks [L, B, Nv, T, h, w]``, ``aux_outputs`` (list, may be empty) and, for the
      similarity loss, ``pred_fq_embed [L, B, T, Qf, C]`` / ``pred_cq_embed [L, B, Nv, C]``.
    targets: input-pipeline targets (module docstring).
    rng: PRNG key, consumed like ``set_criterion``: ``(match_key, loss_key) = split(rng)``.
    cfg: loss config (module docstring).
    frame_matches: ``[L, B, T, 2, Qf]`` frame-level matches (``frame_criterion``), required when
      the similarity loss is on.
    video_matches: optional precomputed ``[D, L·B, 2, Nv]`` VITA matches (``aux``…, final).
    axis_name: data axis for ``num_masks`` inside ``shard_map``.

  Returns:
    ``(total, metrics)``; metrics ``loss_vita_{ce,mask,dice}`` (last layer),
    ``loss_vita_{ce,mask,dice}_{i}`` (``aux_outputs[i]``), ``loss_vita_sim``,
    ``num_masks_vita`` and ``loss_vita_total``.
  """
  n_l = video_outputs["pred_logits"].shape[0]
  outputs = _flatten_samples(video_outputs, n_l)
  clip = clip_targets(targets)
  reps = {k: _repeat_samples(v, n_l) for k, v in clip.items()}
  ccfg = _Overlay(cfg, mask_loss_per_frame=False, deep_supervision=True,
                  eos_coef=_get(cfg, "vita_eos_coef"))
  match_key, _ = jax.random.split(rng)
  if video_matches is None:
    logits, masks = stack_layers(outputs)
    video_matches = compute_matches(logits, masks, reps, match_key, ccfg)
  loss_v, raw = set_criterion(outputs, reps, video_matches, rng, ccfg, axis_name)
  metrics = {}
  for name, value in raw.items():
    if name.startswith("loss_") and name != "loss_total":
      metrics["loss_vita_" + name[len("loss_"):]] = value
  metrics["num_masks_vita"] = raw["num_masks"]
  total = float(_get(cfg, "video_weight")) * loss_v
  sim_weight = float(_get(cfg, "sim_weight"))
  if sim_weight > 0 and "pred_fq_embed" in video_outputs:
    if frame_matches is None:
      raise ValueError("the similarity loss needs frame_matches [L, B, T, 2, Qf]")
    b = targets["labels"].shape[0]
    ids = targets.get("track_ids")
    if ids is None:
      ids = jnp.broadcast_to(jnp.arange(targets["labels"].shape[1]), targets["labels"].shape)
    pres = presence(targets)
    sim = similarity_loss(
        video_outputs["pred_fq_embed"], video_outputs.get("pred_cq_embed"), frame_matches,
        video_matches[-1].reshape(n_l, b, *video_matches.shape[2:]), ids,
        jnp.swapaxes(pres, 1, 2), clip["instance_valid"])
    metrics["loss_vita_sim"] = sim
    total = total + sim_weight * sim
  metrics["loss_vita_total"] = total
  return total, metrics


def frame_criterion(frame_outputs: Outputs, targets: Targets, rng: jax.Array, cfg: Any, *,
                    num_frames: int, last_layer_num: int = 3, axis_name: str | None = None
                    ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
  """Frame-level Mask2Former loss on ``B·T`` frames, also returning the matches VITA needs.

  Args:
    frame_outputs: the frame decoder's outputs on ``B·T`` frames (frame ``b·T + t``):
      ``pred_logits [B·T, Qf, K+1]``, ``pred_masks [B·T, Qf, h, w]`` (or ``[B·T, Qf, 1, h, w]``),
      ``aux_outputs`` (official order: initial queries, layers 1..8).
    targets: input-pipeline targets.
    rng: PRNG key (consumed like ``set_criterion``).
    cfg: ``config.loss``.
    num_frames: ``T``.
    last_layer_num: how many of the last prediction sets' matches to return (VITA's ``L``).
    axis_name: data axis for ``num_masks`` inside ``shard_map``.

  Returns:
    ``(total, metrics, frame_matches [last_layer_num, B, T, 2, Qf])``; metrics as
    ``set_criterion`` (``loss_ce``, ``loss_ce_{i}``, …, ``num_masks``, ``loss_total``).
  """

  def with_time(o):
    m = o["pred_masks"]
    return {"pred_logits": o["pred_logits"], "pred_masks": m[:, :, None] if m.ndim == 4 else m}

  outputs = with_time(frame_outputs)
  deep = bool(getattr(cfg, "deep_supervision", True))
  outputs["aux_outputs"] = [with_time(a) for a in frame_outputs.get("aux_outputs", ())]
  fcfg = _Overlay(cfg, mask_loss_per_frame=True)
  ft = frame_targets(targets)
  logits, masks = stack_layers(outputs, deep)
  if logits.shape[0] < last_layer_num:
    raise ValueError(f"VITA needs matches of {last_layer_num} frame layers, the frame loss "
                     f"supervises {logits.shape[0]} (enable deep_supervision)")
  match_key, _ = jax.random.split(rng)
  matches = compute_matches(logits, masks, ft, match_key, fcfg)
  total, metrics = set_criterion(outputs, ft, matches, rng, fcfg, axis_name)
  bt, _, q = matches.shape[1:]
  last = matches[logits.shape[0] - last_layer_num:]
  return total, metrics, last.reshape(last_layer_num, bt // num_frames, num_frames, 2, q)


def combine_losses(frame_total: jax.Array, frame_metrics: Mapping[str, jax.Array],
                   video_total: jax.Array, video_metrics: Mapping[str, jax.Array],
                   cfg: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
  """``frame_weight·L_f + (video_weight·L_v + sim_weight·L_sim)``, and all metrics.

  ``frame_metrics["loss_total"]`` is renamed ``loss_frame_total``; ``loss_total`` is the sum.
  """
  total = float(_get(cfg, "frame_weight")) * frame_total + video_total
  metrics = {k: v for k, v in frame_metrics.items() if k != "loss_total"}
  metrics["loss_frame_total"] = frame_total
  metrics.update(video_metrics)
  metrics["loss_total"] = total
  return total, metrics


def vita_total_loss(frame_outputs: Outputs, video_outputs: Outputs, targets: Targets,
                    rng: jax.Array, cfg: Any, axis_name: str | None = None
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Everything VITA trains on: frame-level loss, clip-level loss, similarity loss.

  ``rng`` is split into ``(frame_key, video_key)``. ``L`` and ``T`` are read from
  ``video_outputs["pred_masks"]`` ``[L, B, Nv, T, h, w]``.
  """
  frame_key, video_key = jax.random.split(rng)
  n_l, _, _, t = video_outputs["pred_masks"].shape[:4]
  f_total, f_metrics, f_matches = frame_criterion(
      frame_outputs, targets, frame_key, cfg, num_frames=t, last_layer_num=n_l,
      axis_name=axis_name)
  v_total, v_metrics = vita_criterion(video_outputs, targets, video_key, cfg,
                                      frame_matches=f_matches, axis_name=axis_name)
  return combine_losses(f_total, f_metrics, v_total, v_metrics, cfg)
