"""Bipartite matching of predictions to (clip-level) ground-truth instances.

Costs (official ``HungarianMatcher`` / ``VideoHungarianMatcher``, spec §1.4 and §2.1.4): per
sample ONE set of ``P`` uniform points shared by all predictions, all targets and all ``T`` frames
(so each query is compared on ``T·P`` values), ``cost = w_mask·BCE + w_class·(−p_class) +
w_dice·dice`` with weights 5 / 2 / 5, computed in fp32 (matmuls at HIGHEST precision so GPUs do
not silently use TF32). Image models are the ``T = 1`` case.

Matching conventions (scenic style), shared by all matchers:

* input ``cost [B, Q, G]`` (predictions × targets) and ``num_valid [B]``; valid targets are the
  first ``num_valid[b]`` columns (the input pipeline pads instances at the end), padded columns
  are ignored whatever their value;
* output ``matches int32 [B, 2, Q]``: row 0 a permutation of the prediction indices, row 1 the
  matched target index. Matched predictions come first in ascending prediction order, then the
  unmatched ones (ascending) with target index −1. Exactly ``min(Q, num_valid[b])`` predictions
  are matched. ``G > Q`` (more targets than queries, never the case officially) is allowed: every
  prediction is matched and ``num_valid − Q`` targets stay unmatched (they get no mask loss).

Matchers (``method``):

* ``"scipy"``: ``scipy.optimize.linear_sum_assignment`` on the host through
  ``jax.pure_callback(vmap_method="expand_dims")``: one host call per batch, however many vmapped
  axes, and ``match_all_layers`` folds all decoder layers into that batch so one call matches
  every layer. Padded columns are sliced off on the host. Inside ``jax.shard_map`` each device
  matches its own shard; under plain ``jit`` with sharded inputs XLA instead gathers the whole
  cost on device 0 (works, but does not scale across hosts) — ``match_all_layers_sharded``
  wraps the matcher in ``shard_map`` over the context mesh for trainers.
* ``"hungarian"``: exact pure-JAX shortest-augmenting-path solver (the Jonker–Volgenant /
  Crouse algorithm scipy uses) in ``lax`` loops; no host round trip, O(G·(Q+G)) loop steps.
* ``"greedy"``: pure-JAX repeated global arg-min; fast, approximate.

Costs are ``stop_gradient``-ed and sanitised (``nan_to_num``, clamp to ±``COST_BOUND``) before any
matcher, so the matchers never see non-finite values and never need a JVP.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from vis_jax.losses.point_sampling import point_sample_shared

MATCHERS = ("scipy", "hungarian", "greedy")
COST_BOUND = 1e5
_HIGHEST = jax.lax.Precision.HIGHEST


# ---- costs ---------------------------------------------------------------------------------


def batch_sigmoid_ce_cost(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean sigmoid BCE of every prediction against every target (official ``batch_sigmoid_ce``).

  The official form is ``(pos @ t + neg @ (1 − t)) / N`` with ``pos = softplus(−x)``,
  ``neg = softplus(x)``; since ``pos − neg = −x`` it equals ``(Σ neg − x @ t) / N``: one matmul.

  Args:
    logits: ``[..., Q, N]`` prediction logits at ``N`` sampled points.
    targets: ``[..., G, N]`` target values in [0, 1] at the same points.

  Returns:
    ``[..., Q, G]`` float32.
  """
  logits = logits.astype(jnp.float32)
  targets = targets.astype(jnp.float32)
  n = logits.shape[-1]
  neg = jnp.sum(jax.nn.softplus(logits), axis=-1)[..., :, None]
  cross = jnp.einsum("...qn,...gn->...qg", logits, targets, precision=_HIGHEST)
  return (neg - cross) / max(n, 1)


def batch_dice_cost(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """``1 − (2·Σσ(x)t + 1) / (Σσ(x) + Σt + 1)`` for every pair (official ``batch_dice_loss``).

  Args:
    logits: ``[..., Q, N]``.
    targets: ``[..., G, N]``.

  Returns:
    ``[..., Q, G]`` float32.
  """
  probs = jax.nn.sigmoid(logits.astype(jnp.float32))
  targets = targets.astype(jnp.float32)
  numerator = 2 * jnp.einsum("...qn,...gn->...qg", probs, targets, precision=_HIGHEST)
  denominator = jnp.sum(probs, -1)[..., :, None] + jnp.sum(targets, -1)[..., None, :]
  return 1 - (numerator + 1) / (denominator + 1)


def mask_cost(pred_logits: jax.Array, pred_masks: jax.Array, labels: jax.Array,
              target_masks: jax.Array, point_coords: jax.Array, *, class_weight: float = 2.0,
              mask_weight: float = 5.0, dice_weight: float = 5.0) -> jax.Array:
  """The official matching cost matrix (no gradient).

  Args:
    pred_logits: ``[B, Q, K+1]`` class logits (last = no-object).
    pred_masks: ``[B, Q, T, h, w]`` mask logits (any resolution).
    labels: ``[B, G]`` int class ids; padding (−1) is clipped to 0, its columns are arbitrary
      and ignored by the matchers.
    target_masks: ``[B, G, T, H, W]`` bool/float masks at the (padded) input resolution.
    point_coords: ``[B, P, 2]`` (x, y) in [0, 1], shared by predictions, targets and frames
      (``point_sampling.uniform_points(rng, (B, P))`` for the official random points).
    class_weight, mask_weight, dice_weight: cost weights (official 2 / 5 / 5).

  Returns:
    ``[B, Q, G]`` float32 cost.
  """
  pred_logits = jax.lax.stop_gradient(pred_logits).astype(jnp.float32)
  pred_masks = jax.lax.stop_gradient(pred_masks)
  b, q = pred_logits.shape[:2]
  g = labels.shape[1]
  probs = jax.nn.softmax(pred_logits, axis=-1)
  label_idx = jnp.broadcast_to(jnp.maximum(labels, 0)[:, None, :], (b, q, g))
  cost_class = -jnp.take_along_axis(probs, label_idx, axis=-1)
  # [B, Q, T, P] -> [B, Q, T·P]: frames share the points, so a query is one T·P-long vector.
  n = pred_masks.shape[2] * point_coords.shape[1]  # explicit: reshape(-1) fails when G = 0
  pred_pts = jax.vmap(point_sample_shared)(pred_masks, point_coords).reshape(b, q, n)
  tgt_pts = jax.vmap(point_sample_shared)(target_masks, point_coords).reshape(b, g, n)
  cost = class_weight * cost_class
  if mask_weight:
    cost = cost + mask_weight * batch_sigmoid_ce_cost(pred_pts, tgt_pts)
  if dice_weight:
    cost = cost + dice_weight * batch_dice_cost(pred_pts, tgt_pts)
  return cost


def sanitize_cost(cost: jax.Array) -> jax.Array:
  """fp32, no gradient, NaN → +bound, ±inf → ±bound, clamped to ±``COST_BOUND``."""
  cost = jax.lax.stop_gradient(cost).astype(jnp.float32)
  cost = jnp.nan_to_num(cost, nan=COST_BOUND, posinf=COST_BOUND, neginf=-COST_BOUND)
  return jnp.clip(cost, -COST_BOUND, COST_BOUND)


# ---- output format helpers -------------------------------------------------------------------


def _format(pred_to_tgt: jax.Array) -> jax.Array:
  """``[..., Q]`` target per prediction (−1 = none) → ``[..., 2, Q]`` scenic-style matches."""
  q = pred_to_tgt.shape[-1]
  key = jnp.where(pred_to_tgt >= 0, 0, q) + jnp.arange(q)
  order = jnp.argsort(key, axis=-1).astype(jnp.int32)
  return jnp.stack([order, jnp.take_along_axis(pred_to_tgt, order, axis=-1)], axis=-2)


def pred_to_target(matches: jax.Array) -> jax.Array:
  """``[..., 2, Q]`` matches → ``[..., Q]`` int32 matched target of each prediction (−1 = none)."""
  preds, tgts = matches[..., 0, :], matches[..., 1, :]
  # Row 0 is a permutation, so inverting it by a sort is exact (no scatter collisions).
  order = jnp.argsort(preds, axis=-1)
  return jnp.take_along_axis(tgts, order, axis=-1).astype(jnp.int32)


def target_to_pred(matches: jax.Array, num_targets: int) -> jax.Array:
  """``[B, 2, Q]`` matches → ``[B, G]`` int32 matched prediction of each target (−1 = none)."""
  b, _, q = matches.shape
  preds, tgts = matches[:, 0], matches[:, 1]
  # Unmatched entries all write to a spare column G, which is dropped.
  slot = jnp.where(tgts >= 0, tgts, num_targets)
  out = jnp.full((b, num_targets + 1), -1, jnp.int32)
  out = out.at[jnp.arange(b)[:, None], slot].set(preds.astype(jnp.int32))
  return out[:, :num_targets]


# ---- scipy on the host -----------------------------------------------------------------------


def _host_match(cost: np.ndarray, num_valid: np.ndarray) -> np.ndarray:
  """Host side of ``hungarian_match``; leading dims may broadcast (``vmap_method=expand_dims``)."""
  cost = np.asarray(cost, np.float64)
  num_valid = np.asarray(num_valid)
  q, g = cost.shape[-2:]
  lead = np.broadcast_shapes(cost.shape[:-2], num_valid.shape)
  cost = np.broadcast_to(cost, lead + (q, g))
  num_valid = np.broadcast_to(num_valid, lead)
  out = np.empty(lead + (2, q), np.int32)
  for idx in np.ndindex(*lead):
    n = int(min(max(num_valid[idx], 0), g))
    rows, cols = linear_sum_assignment(cost[idx][:, :n])
    unmatched = np.setdiff1d(np.arange(q), rows, assume_unique=True)
    out[idx][0] = np.concatenate([rows, unmatched])
    out[idx][1] = np.concatenate([cols, np.full(unmatched.shape, -1)])
  return out


def hungarian_match(cost: jax.Array, num_valid: jax.Array) -> jax.Array:
  """Exact matching by scipy on the host, one callback for the whole (vmapped) batch.

  Args:
    cost: ``[B, Q, G]`` (any float dtype; gradients are stopped).
    num_valid: ``[B]`` int number of valid (leading) target columns.

  Returns:
    ``[B, 2, Q]`` int32 matches (module docstring).
  """
  cost = sanitize_cost(cost)
  out = jax.ShapeDtypeStruct((*cost.shape[:-2], 2, cost.shape[-2]), jnp.int32)
  return jax.pure_callback(_host_match, out, cost, num_valid.astype(jnp.int32),
                           vmap_method="expand_dims")


# ---- pure-JAX exact solver -------------------------------------------------------------------


def _lsa_rows(cost: jax.Array, active: jax.Array) -> jax.Array:
  """Min-cost assignment of every active row to a distinct column (shortest augmenting paths).

  Crouse's formulation of Jonker–Volgenant (as scipy): one Dijkstra-like search per row over
  reduced costs with dual variables ``u`` (rows) and ``v`` (columns), then augmentation along the
  shortest path. Inactive rows are skipped (left unassigned).

  Args:
    cost: ``[n, m]`` finite float32 with ``#active ≤ m``.
    active: ``[n]`` bool.

  Returns:
    ``[n]`` int32 column of each row (−1 for inactive rows).
  """
  n, m = cost.shape
  inf = jnp.array(jnp.inf, cost.dtype)
  rows = jnp.arange(n)

  def phase(cur, state):
    u, v, col4row, row4col = state
    is_active = active[cur]

    def search_cond(s):
      return ~s[-1]

    def search_body(s):
      i, min_val, shortest, path, in_sr, in_sc, _, _ = s
      in_sr = in_sr.at[i].set(True)
      reduced = min_val + cost[i] - u[i] - v
      better = ~in_sc & (reduced < shortest)
      path = jnp.where(better, i, path)
      shortest = jnp.where(better, reduced, shortest)
      masked = jnp.where(in_sc, inf, shortest)
      low = jnp.min(masked)
      tied = masked == low
      # Among equally short columns prefer a free one: it ends the search sooner.
      free_tied = tied & (row4col < 0)
      j = jnp.where(jnp.any(free_tied), jnp.argmax(free_tied), jnp.argmax(tied))
      in_sc = in_sc.at[j].set(True)
      found = row4col[j] < 0
      i = jnp.where(found, i, row4col[j])
      return i, low, shortest, path, in_sr, in_sc, j, found

    init = (cur, jnp.zeros((), cost.dtype), jnp.full((m,), inf), jnp.full((m,), -1),
            jnp.zeros((n,), bool), jnp.zeros((m,), bool), jnp.array(-1), ~is_active)
    _, min_val, shortest, path, in_sr, in_sc, sink, _ = jax.lax.while_loop(
        search_cond, search_body, init)

    # Dual update (before augmentation: uses the old col4row of the visited rows).
    du = jnp.where(in_sr & (rows != cur),
                   min_val - shortest[jnp.clip(col4row, 0, m - 1)], 0.0)
    du = du + jnp.where(rows == cur, min_val, 0.0)
    dv = jnp.where(in_sc, min_val - shortest, 0.0)
    u = jnp.where(is_active, u + du, u)
    v = jnp.where(is_active, v - dv, v)

    def aug_body(s):
      j, col4row, row4col, _ = s
      i = path[j]
      row4col = row4col.at[j].set(i)
      nxt = col4row[i]
      col4row = col4row.at[i].set(j)
      return nxt, col4row, row4col, i == cur

    _, col4row, row4col, _ = jax.lax.while_loop(
        lambda s: ~s[-1], aug_body, (sink, col4row, row4col, ~is_active))
    return u, v, col4row, row4col

  state = (jnp.zeros((n,), cost.dtype), jnp.zeros((m,), cost.dtype),
           jnp.full((n,), -1), jnp.full((m,), -1))
  _, _, col4row, _ = jax.lax.fori_loop(0, n, phase, state)
  return col4row.astype(jnp.int32)


def _jax_hungarian_one(cost: jax.Array, num_valid: jax.Array) -> jax.Array:
  """``[Q, G]``, scalar → ``[Q]`` target per prediction (exact)."""
  q, g = cost.shape
  valid = jnp.arange(g) < num_valid
  rows = cost.T  # targets as rows: at most G searches, and only for valid targets
  extra = max(0, g - q)
  if extra:
    # More targets than predictions: dummy columns absorb the targets left unmatched. A dummy
    # costs more than any augmenting path over real columns (≤ Q·range once shifted to ≥ 0), so
    # the optimum still matches min(Q, num_valid) targets at the minimum real cost.
    lo = jnp.min(jnp.where(valid[:, None], rows, jnp.inf))
    hi = jnp.max(jnp.where(valid[:, None], rows, -jnp.inf))
    lo = jnp.where(jnp.isfinite(lo), lo, 0.0)
    spread = jnp.where(jnp.isfinite(hi), hi, lo) - lo
    rows = rows - lo
    dummy = 1.0 + jnp.minimum(num_valid, q) * (spread + 1.0)
    rows = jnp.concatenate([rows, jnp.full((g, extra), dummy, rows.dtype)], axis=1)
  col = _lsa_rows(rows, valid)
  ok = valid & (col >= 0) & (col < q)
  slot = jnp.where(ok, col, q)
  return jnp.full((q + 1,), -1, jnp.int32).at[slot].set(jnp.arange(g, dtype=jnp.int32))[:q]


def jax_hungarian_match(cost: jax.Array, num_valid: jax.Array) -> jax.Array:
  """Exact pure-JAX matching (same optimum as scipy); ``[B, Q, G]``, ``[B]`` → ``[B, 2, Q]``."""
  cost = sanitize_cost(cost)
  b, q, g = cost.shape
  if g == 0:
    return _format(jnp.full((b, q), -1, jnp.int32))
  return _format(jax.vmap(_jax_hungarian_one)(cost, num_valid.astype(jnp.int32)))


# ---- pure-JAX greedy -------------------------------------------------------------------------


def _greedy_one(cost: jax.Array, num_valid: jax.Array) -> jax.Array:
  q, g = cost.shape
  cost = jnp.where(jnp.arange(g)[None, :] < num_valid, cost, jnp.inf)

  def step(_, state):
    cost, p2t = state
    flat = jnp.argmin(cost)
    i, j = flat // g, flat % g
    ok = jnp.isfinite(cost[i, j])
    p2t = jnp.where(ok, p2t.at[i].set(j.astype(jnp.int32)), p2t)
    cost = cost.at[i, :].set(jnp.inf).at[:, j].set(jnp.inf)
    return cost, p2t

  _, p2t = jax.lax.fori_loop(0, min(q, g), step, (cost, jnp.full((q,), -1, jnp.int32)))
  return p2t


def greedy_match(cost: jax.Array, num_valid: jax.Array) -> jax.Array:
  """Greedy matching (repeatedly take the globally cheapest free pair); ``[B, 2, Q]``."""
  cost = sanitize_cost(cost)
  b, q, g = cost.shape
  if g == 0:
    return _format(jnp.full((b, q), -1, jnp.int32))
  return _format(jax.vmap(_greedy_one)(cost, num_valid.astype(jnp.int32)))


# ---- dispatch --------------------------------------------------------------------------------


def match(cost: jax.Array, num_valid: jax.Array, method: str = "scipy") -> jax.Array:
  """Matches ``cost [B, Q, G]`` with ``num_valid [B]`` by ``method`` → ``[B, 2, Q]`` int32."""
  fns = {"scipy": hungarian_match, "hungarian": jax_hungarian_match, "greedy": greedy_match}
  if method not in fns:
    raise ValueError(f"unknown matcher {method!r}; known: {MATCHERS}")
  return fns[method](cost, num_valid)


def match_all_layers(costs: jax.Array, num_valid: jax.Array, method: str = "scipy") -> jax.Array:
  """Matches every decoder layer at once (ONE host callback for ``"scipy"``).

  Args:
    costs: ``[L, B, Q, G]`` per-layer costs.
    num_valid: ``[B]`` valid targets per sample (shared by all layers).
    method: one of ``MATCHERS``.

  Returns:
    ``[L, B, 2, Q]`` int32 matches.
  """
  n_layers, b, q, g = costs.shape
  flat_valid = jnp.broadcast_to(num_valid, (n_layers, b)).reshape(-1)
  flat = match(costs.reshape(n_layers * b, q, g), flat_valid, method)
  return flat.reshape(n_layers, b, 2, q)


def match_all_layers_sharded(costs: jax.Array, num_valid: jax.Array, method: str = "scipy",
                             batch_axes: tuple[str, ...] | list[str] = ("data",)) -> jax.Array:
  """``match_all_layers`` run per device: each device matches its own shard of the batch.

  Under ``jit`` with data-sharded global arrays a bare ``pure_callback`` is placed on device 0,
  which gathers every device's costs there (and onto one host). Wrapping the matcher in
  ``jax.shard_map`` over the context mesh (``jax.set_mesh``) keeps the cost matrices where they
  were computed: one host call per device, on that device's host. Samples are matched
  independently, so the result equals the unsharded call exactly.

  Falls back to the plain call when there is no context mesh, when ``batch_axes`` span a
  single device, or when ``B`` is not divisible by their size (e.g. a micro-batch smaller than
  the device count).

  Args:
    costs: ``[L, B, Q, G]`` per-layer costs, B sharded over ``batch_axes``.
    num_valid: ``[B]`` valid targets per sample.
    method: one of ``MATCHERS``.
    batch_axes: mesh axes the batch is split over (``config.sharding.batch_axes``); names
      absent from the mesh are ignored.

  Returns:
    ``[L, B, 2, Q]`` int32 matches.
  """
  mesh = jax.sharding.get_abstract_mesh()
  axes = () if mesh.empty else tuple(a for a in batch_axes if a in mesh.axis_names)
  size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
  if size == 1 or costs.shape[1] % size:
    return match_all_layers(costs, num_valid, method)
  spec = jax.P(axes)
  local = jax.shard_map(lambda c, n: match_all_layers(c, n, method), mesh=mesh,
                        in_specs=(jax.P(None, axes), spec), out_specs=jax.P(None, axes),
                        check_vma=False)
  return local(costs, num_valid)
