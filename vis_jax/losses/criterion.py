"""Set criterion of Mask2Former / Mask2Former-VIS (and the shape-compatible VITA variant).

Behaviour follows the official ``SetCriterion`` / ``VideoSetCriterion`` (spec §1.4, §2.1.5):

* ``loss_ce``: cross-entropy over ``K+1`` classes for every query; matched queries take their
  target's class, the rest the no-object class ``K``. Class weights are 1 and ``eos_coef`` for
  no-object, with PyTorch's weighted mean ``Σ w·ce / Σ w`` over the ``B·Q`` queries.
* ``loss_mask`` / ``loss_dice``: per matched (instance, frame) row, ``num_points`` importance-
  sampled points (``uncertain_point_coords`` on the predicted logits: oversample 3, importance
  0.75), ground truth sampled at the same normalised coordinates at full resolution (no
  gradient). BCE is averaged over points, dice uses +1 smoothing; both are summed over rows and
  divided by ``num_masks``, so in M2F-VIS the mask losses scale with ``T``.
  ``mask_loss_per_frame=False`` selects the VITA reduction (§3.5): the ``T`` point sets of an
  instance are concatenated, one BCE mean and one dice per instance.
* ``num_masks``: valid GT instances in the global batch, clamped ≥ 1. Under ``jit`` with global
  (sharded) arrays the plain sum already IS global. Inside ``shard_map`` pass ``axis_name``: the
  count is ``psum``-ed and divided by the axis size (the official all-reduce / world size), so
  per-device mask losses averaged over devices equal the global ones.
* deep supervision: every auxiliary prediction set gets its own matching and the same losses with
  equal weight; metrics ``loss_ce`` … for the last layer, ``loss_ce_0`` … for ``aux_outputs[i]``.

Static shapes: mask losses are evaluated for all ``G`` target slots (the prediction matched to
each slot is gathered) and weighted by "valid and matched". Every matched pair owns exactly one
target slot, so this equals the official per-matched-pair loss while evaluating ``G`` (max
instances, ≈ 10–25) rows instead of ``Q`` (100). The classification loss runs over all queries.

The loss is computed per (global) batch; officially the classification mean is per GPU and then
averaged across GPUs, which differs only through the per-GPU weight sums.

Config (``cfg``, an ``ml_collections.ConfigDict``; official values in brackets):
  num_classes: ``K`` foreground classes; no-object is index ``K`` [40 YTVIS, 25 OVIS].
  eos_coef: classification weight of the no-object class [0.1].
  class_weight: weight of ``loss_ce`` and of the matcher's class cost [2.0].
  mask_weight: weight of ``loss_mask`` (BCE) and of the matcher's BCE cost [5.0].
  dice_weight: weight of ``loss_dice`` and of the matcher's dice cost [5.0].
  num_points: points per mask for both matching and losses [12544].
  oversample_ratio: importance-sampling candidates per point [3.0].
  importance_sample_ratio: fraction of points chosen by uncertainty [0.75].
  matcher: ``"scipy"`` (host Hungarian), ``"hungarian"`` (pure-JAX exact) or ``"greedy"``.
  batch_axes: mesh axes the batch is sharded over; with a mesh in context the Hungarian
    matcher runs per device (``matching.match_all_layers_sharded``) [() = plain host call].
  deep_supervision: also supervise ``outputs["aux_outputs"]`` [True].
  mask_loss_per_frame: optional, default True (M2F-VIS); False = VITA clip-level reduction.

RNG: ``set_criterion`` splits ``rng`` into ``(match_key, loss_key)``; matching points are
``uniform_points(match_key, (L, B, num_points))`` and layer ``l`` samples its loss points with
``jax.random.split(loss_key, L)[l]`` (layers ordered ``aux_outputs..., final``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from vis_jax.losses import matching
from vis_jax.losses.point_sampling import point_sample, uncertain_point_coords, uniform_points

Outputs = Mapping[str, Any]
Targets = Mapping[str, jax.Array]


def _get(cfg: Any, name: str, default: Any) -> Any:
  return getattr(cfg, name, default)


def stack_layers(outputs: Outputs, deep_supervision: bool = True) -> tuple[jax.Array, jax.Array]:
  """Stacks ``aux_outputs`` (in order) and the final prediction along a new leading layer axis.

  Args:
    outputs: ``{"pred_logits": [B, Q, K+1], "pred_masks": [B, Q, T, h, w],
      "aux_outputs": optional sequence of dicts with the same two keys}``.
    deep_supervision: if False the auxiliary outputs are ignored (``L = 1``).

  Returns:
    ``(logits [L, B, Q, K+1], masks [L, B, Q, T, h, w])``, the final layer last.
  """
  sets = list(outputs.get("aux_outputs", ()) if deep_supervision else ()) + [outputs]
  logits = jnp.stack([s["pred_logits"] for s in sets])
  masks = jnp.stack([s["pred_masks"] for s in sets])
  return logits, masks


def num_masks_normalizer(instance_valid: jax.Array, axis_name: str | None = None) -> jax.Array:
  """Number of valid GT instances used to normalise the mask losses (≥ 1), float32 scalar.

  Args:
    instance_valid: ``[B, G]`` bool. Under ``jit`` with global arrays the sum is global.
    axis_name: inside ``shard_map``/``pmap``: the data axis; the local counts are summed over
      it and divided by its size, as the official all-reduce / world size.
  """
  n = jnp.sum(instance_valid).astype(jnp.float32)
  if axis_name is not None:
    n = jax.lax.psum(n, axis_name) / jax.lax.psum(1.0, axis_name)
  return jnp.maximum(n, 1.0)


def compute_matches(logits: jax.Array, masks: jax.Array, targets: Targets, rng: jax.Array,
                    cfg: Any) -> jax.Array:
  """Matches every layer with the official costs in one matcher call.

  Valid targets need not be leading: columns are stably reordered valid-first before matching
  and the returned target indices refer to the original slots.

  Args:
    logits: ``[L, B, Q, K+1]``.
    masks: ``[L, B, Q, T, h, w]`` mask logits.
    targets: ``masks [B, G, T, H, W]``, ``labels [B, G]``, ``instance_valid [B, G]``.
    rng: key for the uniform matching points (fresh per layer and sample, as officially).
    cfg: see module docstring.

  Returns:
    ``[L, B, 2, Q]`` int32 matches (``matching`` module conventions).
  """
  n_layers, b = logits.shape[:2]
  valid = targets["instance_valid"]
  g = valid.shape[1]
  coords = uniform_points(rng, (n_layers, b, int(cfg.num_points)))
  cost_fn = lambda lg, mk, pc: matching.mask_cost(
      lg, mk, targets["labels"], targets["masks"], pc, class_weight=cfg.class_weight,
      mask_weight=cfg.mask_weight, dice_weight=cfg.dice_weight)
  costs = jax.vmap(cost_fn)(logits, masks, coords)  # [L, B, Q, G]
  order = jnp.argsort(~valid, axis=-1, stable=True)  # valid slots first, original order kept
  costs = jnp.take_along_axis(costs, order[None, :, None, :], axis=-1)
  num_valid = jnp.sum(valid, axis=-1)
  # Per device when a mesh is in context (``cfg.batch_axes``, set by the model bundles from
  # ``config.sharding.batch_axes``); the plain host call otherwise. Same result either way.
  m = matching.match_all_layers_sharded(costs, num_valid, _get(cfg, "matcher", "scipy"),
                                        tuple(_get(cfg, "batch_axes", ())))
  tgt = m[:, :, 1]
  if g:
    orig = jnp.take_along_axis(jnp.broadcast_to(order, (n_layers, b, g)),
                               jnp.maximum(tgt, 0), axis=-1)
    tgt = jnp.where(tgt >= 0, orig, -1)
  return jnp.stack([m[:, :, 0], tgt.astype(jnp.int32)], axis=2)


def classification_loss(pred_logits: jax.Array, labels: jax.Array, matches: jax.Array,
                        num_classes: int, eos_coef: float) -> jax.Array:
  """Weighted CE over ``K+1`` classes, ``Σ w·ce / Σ w`` over all ``B·Q`` queries.

  Args:
    pred_logits: ``[B, Q, K+1]``.
    labels: ``[B, G]`` target classes.
    matches: ``[B, 2, Q]``.
    num_classes: ``K``.
    eos_coef: weight of the no-object class ``K``.

  Returns:
    float32 scalar.
  """
  p2t = matching.pred_to_target(matches)  # [B, Q]
  if labels.shape[1]:
    matched_cls = jnp.take_along_axis(labels, jnp.maximum(p2t, 0), axis=1)
  else:
    matched_cls = jnp.zeros_like(p2t)
  target = jnp.where(p2t >= 0, matched_cls, num_classes)
  weight = jnp.where(target == num_classes, eos_coef, 1.0)
  logp = jax.nn.log_softmax(pred_logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
  return jnp.sum(weight * nll) / jnp.maximum(jnp.sum(weight), 1e-12)


def matched_pred_masks(pred_masks: jax.Array, matches: jax.Array,
                       instance_valid: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The predicted mask matched to each target slot, and which slots count.

  Args:
    pred_masks: ``[B, Q, T, h, w]``.
    matches: ``[B, 2, Q]``.
    instance_valid: ``[B, G]``.

  Returns:
    ``(masks [B, G, T, h, w], weight [B, G] float32)``; weight is 1 for valid matched targets,
    0 otherwise (their rows hold an arbitrary prediction).
  """
  t2p = matching.target_to_pred(matches, instance_valid.shape[1])
  weight = ((t2p >= 0) & instance_valid).astype(jnp.float32)
  src = jax.vmap(lambda m, i: m[i])(pred_masks, jnp.maximum(t2p, 0))
  return src, weight


def loss_point_coords(pred_masks: jax.Array, matches: jax.Array, instance_valid: jax.Array,
                      rng: jax.Array, cfg: Any) -> jax.Array:
  """Importance-sampled points per (target slot, frame) on the matched predicted logits.

  Returns:
    ``[B, G, T, P, 2]``.
  """
  src, _ = matched_pred_masks(pred_masks, matches, instance_valid)
  b, g, t, h, w = src.shape
  coords = uncertain_point_coords(
      src.reshape(b * g * t, h, w), int(cfg.num_points), rng,
      oversample_ratio=float(cfg.oversample_ratio),
      importance_sample_ratio=float(cfg.importance_sample_ratio))
  return coords.reshape(b, g, t, int(cfg.num_points), 2)


def layer_losses(pred_logits: jax.Array, pred_masks: jax.Array, targets: Targets,
                 matches: jax.Array, point_coords: jax.Array, num_masks: jax.Array,
                 cfg: Any) -> dict[str, jax.Array]:
  """Unweighted ``loss_ce``, ``loss_mask``, ``loss_dice`` of one prediction set.

  Args:
    pred_logits: ``[B, Q, K+1]``.
    pred_masks: ``[B, Q, T, h, w]`` mask logits.
    targets: ``masks [B, G, T, H, W]``, ``labels [B, G]``, ``instance_valid [B, G]``.
    matches: ``[B, 2, Q]``.
    point_coords: ``[B, G, T, P, 2]`` loss points per (target slot, frame).
    num_masks: normaliser (``num_masks_normalizer``).
    cfg: see module docstring.

  Returns:
    Dict of float32 scalars.
  """
  valid = targets["instance_valid"]
  loss_ce = classification_loss(pred_logits, targets["labels"], matches, int(cfg.num_classes),
                                float(cfg.eos_coef))
  src, weight = matched_pred_masks(pred_masks, matches, valid)
  b, g, t, h, w = src.shape
  n_pts = point_coords.shape[-2]
  rows = point_coords.reshape(b * g * t, n_pts, 2)
  logits = point_sample(src.reshape(b * g * t, h, w), rows).reshape(b, g, t, n_pts)
  tgt = targets["masks"]
  labels = point_sample(tgt.reshape(b * g * t, *tgt.shape[-2:]), rows)
  labels = jax.lax.stop_gradient(labels).reshape(b, g, t, n_pts)
  if not _get(cfg, "mask_loss_per_frame", True):
    logits = logits.reshape(b, g, 1, t * n_pts)
    labels = labels.reshape(b, g, 1, t * n_pts)
  bce = jnp.mean(jax.nn.softplus(logits) - logits * labels, axis=-1)  # [B, G, T']
  probs = jax.nn.sigmoid(logits)
  dice = 1 - (2 * jnp.sum(probs * labels, -1) + 1) / (
      jnp.sum(probs, -1) + jnp.sum(labels, -1) + 1)
  loss_mask = jnp.sum(weight[..., None] * bce) / num_masks
  loss_dice = jnp.sum(weight[..., None] * dice) / num_masks
  return {"loss_ce": loss_ce, "loss_mask": loss_mask, "loss_dice": loss_dice}


def set_criterion(outputs: Outputs, targets: Targets, matches: jax.Array | None,
                  rng: jax.Array, cfg: Any,
                  axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Total weighted loss over all supervised layers, and per-layer metrics.

  Args:
    outputs: ``pred_logits [B, Q, K+1]``, ``pred_masks [B, Q, T, h, w]`` (logits, any
      resolution) and optionally ``aux_outputs`` (list of dicts with the same keys).
    targets: ``masks`` bool ``[B, G, T, H, W]``, ``labels`` int ``[B, G]``, ``instance_valid``
      bool ``[B, G]`` (``present`` is not needed: absent frames hold empty masks, which the
      official loss also supervises).
    matches: ``None`` to match here (``cfg.matcher``), or precomputed ``[L, B, 2, Q]`` int32
      for the ``L`` supervised layers (``aux_outputs...``, final).
    rng: PRNG key (see module docstring for how it is consumed).
    cfg: see module docstring.
    axis_name: data axis for the ``num_masks`` reduction inside ``shard_map`` (None under jit).

  Returns:
    ``(total, metrics)``: ``total = Σ_layers (class_weight·ce + mask_weight·bce +
    dice_weight·dice)``; metrics hold the unweighted terms per layer (``loss_ce`` final,
    ``loss_ce_{i}`` for ``aux_outputs[i]``), ``num_masks`` and ``loss_total``.
  """
  logits, masks = stack_layers(outputs, bool(_get(cfg, "deep_supervision", True)))
  n_layers = logits.shape[0]
  valid = targets["instance_valid"]
  num_masks = num_masks_normalizer(valid, axis_name)
  match_key, loss_key = jax.random.split(rng)
  if matches is None:
    matches = compute_matches(logits, masks, targets, match_key, cfg)
  if matches.shape[0] != n_layers:
    raise ValueError(f"matches {matches.shape} must have one entry per supervised layer "
                     f"({n_layers})")

  def one_layer(lg, mk, m, key):
    coords = loss_point_coords(mk, m, valid, key, cfg)
    return layer_losses(lg, mk, targets, m, coords, num_masks, cfg)

  per_layer = jax.vmap(one_layer)(logits, masks, matches, jax.random.split(loss_key, n_layers))
  weights = {"loss_ce": float(cfg.class_weight), "loss_mask": float(cfg.mask_weight),
             "loss_dice": float(cfg.dice_weight)}
  total = sum(weights[k] * jnp.sum(v) for k, v in per_layer.items())
  metrics = {}
  for name, values in per_layer.items():
    metrics[name] = values[-1]
    for i in range(n_layers - 1):
      metrics[f"{name}_{i}"] = values[i]
  metrics["num_masks"] = num_masks
  metrics["loss_total"] = total
  return total, metrics


def piloted_criterion(prediction_sets: list[Outputs], targets: Targets, rng: jax.Array,
                      cfg: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Losses of mask-piloted queries (``decoder.mask_piloting``): ``set_criterion`` with the
  matching fixed — query ``g`` of every set answers for target slot ``g`` — instead of the
  Hungarian one. Padding slots' queries are trained towards no-object, as unmatched queries are.

  Args:
    prediction_sets: dicts ``pred_logits [B, G, K+1]``, ``pred_masks [B, G, T, h, w]``: the
      initial prediction, then every layer (the last one is the final prediction).
    targets: as ``set_criterion`` (``G`` slots).
    rng, cfg: as ``set_criterion``.

  Returns:
    ``(total, metrics)``; the metrics of ``set_criterion`` renamed ``loss_pilot_*``.
  """
  outputs = dict(prediction_sets[-1], aux_outputs=list(prediction_sets[:-1]))
  n_layers = len(prediction_sets) if bool(_get(cfg, "deep_supervision", True)) else 1
  valid = targets["instance_valid"]
  b, g = valid.shape
  slots = jnp.broadcast_to(jnp.arange(g, dtype=jnp.int32), (b, g))
  matches = jnp.stack([slots, jnp.where(valid, slots, -1)], axis=1)         # [B, 2, G]
  total, metrics = set_criterion(outputs, targets, jnp.broadcast_to(matches, (n_layers, b, 2, g)),
                                 rng, cfg)
  metrics = {k.replace("loss_", "loss_pilot_"): v for k, v in metrics.items()
             if k.startswith("loss_")}
  return total, metrics


def add_piloted_losses(total: jax.Array, metrics: dict[str, jax.Array],
                       prediction_sets: list[Outputs], targets: Targets, rng: jax.Array,
                       cfg: Any, weight: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """``total + weight · piloted_criterion(...)`` and the metrics with its ``loss_pilot_*``
  added (``loss_total`` updated); ``rng`` is the main criterion's key (folded here)."""
  pilot_total, pilot_metrics = piloted_criterion(prediction_sets, targets,
                                                 jax.random.fold_in(rng, 1), cfg)
  total = total + weight * pilot_total
  return total, dict(metrics, **pilot_metrics, loss_total=total)
