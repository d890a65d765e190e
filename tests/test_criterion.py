"""Set criterion vs a PyTorch re-implementation of the official ``VideoSetCriterion`` losses.

The reference below follows the official code path: ``F.cross_entropy`` with ``empty_weight``,
matched pairs gathered per sample, ``flatten(0, 1)`` to (instance, frame) rows, ``grid_sample``
point sampling, ``binary_cross_entropy_with_logits(...).mean(1).sum() / num_masks`` and the +1
dice. Loss points come from the criterion's own documented RNG use (importance sampling itself is
tested in test_matching.py), so the comparison is exact.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from vis_jax.losses import criterion, matching, point_sampling

B, Q, T, G, K = 2, 5, 2, 3, 4
h, w, H, W = 4, 6, 8, 12


def make_cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      num_classes=K, eos_coef=0.1, class_weight=2.0, mask_weight=5.0, dice_weight=5.0,
      num_points=24, oversample_ratio=3.0, importance_sample_ratio=0.75, matcher="scipy",
      deep_supervision=True))
  cfg.update(overrides)
  return cfg


CFG = make_cfg()
VITA_CFG = make_cfg(mask_loss_per_frame=False)


def make_outputs(rng, n_aux=1, b=B, q=Q):
  def one():
    return {"pred_logits": jnp.asarray(rng.normal(size=(b, q, K + 1)), jnp.float32),
            "pred_masks": jnp.asarray(3 * rng.normal(size=(b, q, T, h, w)), jnp.float32)}
  out = one()
  out["aux_outputs"] = [one() for _ in range(n_aux)]
  return out


def make_targets(rng, valid, g=G):
  valid = np.asarray(valid, bool)
  b = valid.shape[0]
  masks = (rng.random((b, g, T, H, W)) > 0.5) & valid[:, :, None, None, None]
  if g:
    masks[0, 0, 1] = False  # an instance absent from one frame: still supervised (empty mask)
  labels = np.where(valid, rng.integers(0, K, size=(b, g)), -1).astype(np.int32)
  return {"masks": jnp.asarray(masks), "labels": jnp.asarray(labels),
          "instance_valid": jnp.asarray(valid)}


def random_matches(rng, n_layers, valid):
  out = np.zeros((n_layers, len(valid), 2, Q), np.int32)
  for layer in range(n_layers):
    for b, v in enumerate(valid):
      idx = np.flatnonzero(v)
      k = min(Q, len(idx))
      preds = np.sort(rng.choice(Q, k, replace=False))
      rest = np.setdiff1d(np.arange(Q), preds)
      out[layer, b, 0] = np.concatenate([preds, rest])
      out[layer, b, 1] = np.concatenate([rng.permutation(idx)[:k], -np.ones(Q - k)])
  return out


def torch_official_losses(logits, masks, targets, matches, coords, num_masks, per_frame=True):
  """One layer, official formulas; coords [B, G, T, P, 2] indexed by target slot."""
  logits = torch.tensor(np.asarray(logits), dtype=torch.float64)
  masks = torch.tensor(np.asarray(masks), dtype=torch.float64)
  labels = np.asarray(targets["labels"])
  tmasks = torch.tensor(np.asarray(targets["masks"]), dtype=torch.float64)
  coords = torch.tensor(np.asarray(coords), dtype=torch.float64)
  matches = np.asarray(matches)
  target_classes = torch.full(logits.shape[:2], K, dtype=torch.int64)
  src, tgt, pts = [], [], []
  for b in range(logits.shape[0]):
    for p, g in zip(matches[b, 0], matches[b, 1], strict=True):
      if g < 0:
        continue
      target_classes[b, p] = int(labels[b, g])
      src.append(masks[b, p])
      tgt.append(tmasks[b, g])
      pts.append(coords[b, g])
  empty_weight = torch.ones(K + 1, dtype=torch.float64)
  empty_weight[-1] = CFG.eos_coef
  loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, empty_weight)
  src = torch.stack(src).flatten(0, 1)[:, None]  # [N·T, 1, h, w]
  tgt = torch.stack(tgt).flatten(0, 1)[:, None]
  pts = torch.stack(pts).flatten(0, 1)  # [N·T, P, 2]

  def point_sample(maps, c):
    return F.grid_sample(maps, 2 * c[:, :, None] - 1, align_corners=False)[:, 0, :, 0]

  point_logits, point_labels = point_sample(src, pts), point_sample(tgt, pts)
  if not per_frame:  # VITA: one vector of T·P per instance
    point_logits = point_logits.reshape(-1, T * pts.shape[1])
    point_labels = point_labels.reshape(-1, T * pts.shape[1])
  bce = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none")
  loss_mask = bce.mean(1).sum() / num_masks
  sig = point_logits.sigmoid()
  dice = 1 - (2 * (sig * point_labels).sum(-1) + 1) / (sig.sum(-1) + point_labels.sum(-1) + 1)
  return {"loss_ce": float(loss_ce), "loss_mask": float(loss_mask),
          "loss_dice": float(dice.sum() / num_masks)}


@pytest.fixture(scope="module")
def criterion_fn():
  """set_criterion jitted once; shapes are shared by the tests that use it."""
  return jax.jit(lambda o, t, m, k: criterion.set_criterion(o, t, m, k, CFG))


VALID = [[True, True, False], [True, False, False]]


def test_fixed_matching_equals_official_torch_losses(criterion_fn):
  rng = np.random.default_rng(0)
  outputs, targets = make_outputs(rng), make_targets(rng, VALID)
  matches = random_matches(rng, 2, np.asarray(VALID))
  key = jax.random.key(11)
  total, metrics = criterion_fn(outputs, targets, matches, key)
  num_masks = 3.0
  assert float(metrics["num_masks"]) == num_masks
  _, loss_key = jax.random.split(key)
  layer_keys = jax.random.split(loss_key, 2)
  layers = [outputs["aux_outputs"][0], outputs]
  point_coords = jax.jit(lambda mk, m, v, k: criterion.loss_point_coords(mk, m, v, k, CFG))
  want_total = 0.0
  for layer, (out, suffix) in enumerate(zip(layers, ("_0", ""), strict=True)):
    coords = point_coords(out["pred_masks"], matches[layer], targets["instance_valid"],
                          layer_keys[layer])
    assert coords.shape == (B, G, T, CFG.num_points, 2)
    want = torch_official_losses(out["pred_logits"], out["pred_masks"], targets, matches[layer],
                                 coords, num_masks)
    for name, value in want.items():
      assert float(metrics[name + suffix]) == pytest.approx(value, rel=1e-5, abs=1e-6), name
    want_total += 2 * want["loss_ce"] + 5 * want["loss_mask"] + 5 * want["loss_dice"]
    if layer == 1:  # VITA reduction on the same points
      vita = jax.jit(lambda *a: criterion.layer_losses(*a, VITA_CFG))(
          out["pred_logits"], out["pred_masks"], targets, matches[layer], coords,
          jnp.float32(num_masks))
      want_vita = torch_official_losses(out["pred_logits"], out["pred_masks"], targets,
                                        matches[layer], coords, num_masks, per_frame=False)
      for name, value in want_vita.items():
        assert float(vita[name]) == pytest.approx(value, rel=1e-5, abs=1e-6), name
  assert float(total) == pytest.approx(want_total, rel=1e-5)
  assert float(metrics["loss_total"]) == pytest.approx(want_total, rel=1e-5)
  assert set(metrics) == {f"loss_{n}{s}" for n in ("ce", "mask", "dice") for s in ("", "_0")} | {
      "num_masks", "loss_total"}


def test_matches_computed_inside_equal_scipy_on_official_costs(criterion_fn):
  # Valid slots deliberately not leading: the criterion must reorder before the host slicing.
  rng = np.random.default_rng(1)
  valid = [[False, True, True], [True, False, True]]
  outputs, targets = make_outputs(rng), make_targets(rng, valid)
  key = jax.random.key(5)
  match_key, _ = jax.random.split(key)
  logits, masks = criterion.stack_layers(outputs)
  got = np.asarray(jax.jit(lambda lg, mk, t, k: criterion.compute_matches(lg, mk, t, k, CFG))(
      logits, masks, targets, match_key))
  coords = point_sampling.uniform_points(match_key, (2, B, CFG.num_points))
  cost_fn = jax.jit(matching.mask_cost)
  for layer in range(2):
    cost = np.asarray(cost_fn(logits[layer], masks[layer], targets["labels"],
                                         targets["masks"], coords[layer]))
    for b in range(B):
      cols = np.flatnonzero(valid[b])
      rows, sel = linear_sum_assignment(cost[b][:, cols])
      k = len(rows)
      np.testing.assert_array_equal(got[layer, b, 0, :k], rows)
      np.testing.assert_array_equal(got[layer, b, 1, :k], cols[sel])
      assert (got[layer, b, 1, k:] == -1).all()
  # The criterion matching internally is the same as passing these matches in.
  total_inside, _ = jax.jit(lambda o, t, k: criterion.set_criterion(o, t, None, k, CFG))(
      outputs, targets, key)
  total_given, _ = criterion_fn(outputs, targets, got, key)
  assert float(total_inside) == pytest.approx(float(total_given), rel=1e-6)


def test_gradients_flow_through_criterion_with_matcher_in_loop():
  rng = np.random.default_rng(2)
  outputs, targets = make_outputs(rng), make_targets(rng, VALID)
  loss = lambda o: criterion.set_criterion(o, targets, None, jax.random.key(0), CFG)[0]
  value, grads = jax.jit(jax.value_and_grad(loss))(outputs)
  assert np.isfinite(float(value))
  for layer in (grads, grads["aux_outputs"][0]):
    g_logits = np.asarray(layer["pred_logits"])
    g_masks = np.asarray(layer["pred_masks"])
    assert np.isfinite(g_logits).all() and np.isfinite(g_masks).all()
    assert (np.abs(g_logits).sum(-1) > 0).all()  # every query gets a classification gradient
    # Mask gradients reach exactly the matched queries: min(Q, #valid) per sample.
    touched = (np.abs(g_masks).reshape(B, Q, -1).sum(-1) > 0).sum(-1)
    np.testing.assert_array_equal(touched, np.sum(VALID, axis=1))


def test_no_targets_without_deep_supervision():
  rng = np.random.default_rng(3)
  outputs, targets = make_outputs(rng, b=1), make_targets(rng, np.zeros((1, 0), bool), g=0)
  cfg = make_cfg(deep_supervision=False, matcher="hungarian")
  total, metrics = jax.jit(lambda o, t: criterion.set_criterion(
      o, t, None, jax.random.key(0), cfg))(outputs, targets)
  assert set(metrics) == {"loss_ce", "loss_mask", "loss_dice", "num_masks", "loss_total"}
  assert float(metrics["loss_mask"]) == 0 and float(metrics["loss_dice"]) == 0
  assert float(metrics["num_masks"]) == 1  # clamped
  logits = np.asarray(outputs["pred_logits"], np.float64)
  # All queries are no-object: the weighted mean is a plain mean of -log p(no-object).
  ce = np.mean(np.log(np.exp(logits).sum(-1)) - logits[..., K])
  assert float(metrics["loss_ce"]) == pytest.approx(ce, rel=1e-5)
  assert float(total) == pytest.approx(2 * ce, rel=1e-5)


def test_num_masks_is_reduced_over_the_data_axis():
  valid = np.zeros((4, 2, 3), bool)  # 4 "devices" x 2 samples x 3 slots
  valid[0, 0, :2] = valid[2, 1, :] = True
  per_device = jax.vmap(lambda v: criterion.num_masks_normalizer(v, "data"),
                        axis_name="data")(valid)
  np.testing.assert_allclose(per_device, [max(5 / 4, 1.0)] * 4)  # official: sum / world size
  assert float(criterion.num_masks_normalizer(valid.reshape(8, 3))) == 5.0
  assert float(criterion.num_masks_normalizer(np.zeros((2, 3), bool))) == 1.0


def test_matches_with_wrong_layer_count_are_rejected():
  rng = np.random.default_rng(4)
  with pytest.raises(ValueError, match="one entry per supervised layer"):
    criterion.set_criterion(make_outputs(rng), make_targets(rng, VALID),
                            random_matches(rng, 1, np.asarray(VALID)), jax.random.key(0), CFG)
