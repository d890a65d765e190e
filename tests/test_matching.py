"""Point sampling, matching costs and matchers vs independent references.

References: ``torch.nn.functional.grid_sample`` (the op the official ``point_sample`` wraps), the
official cost formulas re-derived in numpy (two-einsum BCE, dice), and
``scipy.optimize.linear_sum_assignment`` on the valid columns (by total cost for the pure-JAX
solver, exactly for the scipy path). Multi-device matching runs on 8 simulated CPU devices in a
subprocess.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from vis_jax.losses import matching, point_sampling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torch_point_sample(maps: np.ndarray, coords: np.ndarray) -> np.ndarray:
  """Official ``point_sample``: maps [N, C, H, W], coords [N, P, 2] -> [N, C, P] (float64)."""
  grid = 2.0 * torch.from_numpy(np.array(coords, np.float64))[:, :, None] - 1.0
  out = F.grid_sample(torch.from_numpy(np.array(maps, np.float64)), grid, mode="bilinear",
                      padding_mode="zeros", align_corners=False)
  return out[..., 0].numpy()


# ---- point sampling ---------------------------------------------------------------------------


def test_point_sample_matches_grid_sample():
  rng = np.random.default_rng(0)
  maps = rng.normal(size=(3, 2, 5, 7)).astype(np.float32)
  coords = rng.uniform(-0.2, 1.2, size=(3, 11, 2)).astype(np.float32)
  coords[0, :4] = [[0, 0], [1, 1], [0.5 / 7, 0.5 / 5], [1, 0]]  # borders and a pixel centre
  want = torch_point_sample(maps, coords)
  np.testing.assert_allclose(point_sampling.point_sample(maps, coords), want, atol=1e-5)
  np.testing.assert_allclose(point_sampling.point_sample(maps[:, 0], coords), want[:, 0],
                             atol=1e-5)
  masks = maps > 0  # bool ground truth becomes soft at boundaries
  np.testing.assert_allclose(point_sampling.point_sample(masks, coords),
                             torch_point_sample(masks.astype(np.float64), coords), atol=1e-5)
  shared = point_sampling.point_sample_shared(maps, coords[0])
  np.testing.assert_allclose(shared, torch_point_sample(maps, np.repeat(coords[:1], 3, 0)),
                             atol=1e-5)


def test_uncertain_points_pick_most_uncertain_candidates():
  # Logit 50 except a zero 4x4 block (rows/cols 2-5) of an 8x8 map: |logit| is exactly 0 for
  # points between the block's outer pixel centres, (2.5, 5.5) in pixels, and positive elsewhere
  # (also at the border, where zero padding pulls the interpolation below 50). About 14% of the
  # 200 candidates fall there, more than the 10 uncertain points kept.
  logits = np.full((2, 8, 8), 50.0, np.float32)
  logits[:, 2:6, 2:6] = 0.0
  logits[1] *= -1  # sign must not matter
  num_points, ratio, importance = 40, 5.0, 0.25
  key = jax.random.key(3)
  coords = np.asarray(point_sampling.uncertain_point_coords(logits, num_points, key, ratio,
                                                             importance))
  n_unc = int(importance * num_points)
  assert coords.shape == (2, num_points, 2)
  chosen = coords[:, :n_unc]
  assert ((chosen * 8 > 2.5) & (chosen * 8 < 5.5)).all(), chosen * 8
  # Re-derive with numpy + grid_sample from the documented key use.
  k_cand, k_rand = jax.random.split(key)
  cand = np.asarray(point_sampling.uniform_points(k_cand, (2, int(num_points * ratio))))
  unc = -np.abs(torch_point_sample(logits[:, None], cand)[:, 0])
  order = np.argsort(-unc, axis=1, kind="stable")[:, :n_unc]
  np.testing.assert_array_equal(chosen, np.take_along_axis(cand, order[..., None], 1))
  np.testing.assert_array_equal(
      coords[:, n_unc:], point_sampling.uniform_points(k_rand, (2, num_points - n_unc)))


# ---- costs ------------------------------------------------------------------------------------


def np_official_cost(logits, pred_masks, labels, tgt_masks, coords, wc=2.0, wm=5.0, wd=5.0):
  """Official VideoHungarianMatcher cost for one sample, float64 (two-einsum BCE)."""
  q, t = pred_masks.shape[:2]
  g = tgt_masks.shape[0]
  prob = np.exp(logits - logits.max(-1, keepdims=True))
  prob /= prob.sum(-1, keepdims=True)
  cost_class = -prob[:, labels]
  out = torch_point_sample(pred_masks, np.repeat(coords[None], q, 0)).reshape(q, -1)
  tgt = torch_point_sample(tgt_masks.astype(np.float64), np.repeat(coords[None], g, 0))
  tgt = tgt.reshape(g, -1)
  pos = np.logaddexp(0, -out)  # BCE-with-logits against 1
  neg = np.logaddexp(0, out)   # ... against 0
  bce = (np.einsum("nc,mc->nm", pos, tgt) + np.einsum("nc,mc->nm", neg, 1 - tgt)) / out.shape[1]
  sig = 1 / (1 + np.exp(-out))
  dice = 1 - (2 * np.einsum("nc,mc->nm", sig, tgt) + 1) / (
      sig.sum(-1)[:, None] + tgt.sum(-1)[None, :] + 1)
  return wm * bce + wc * cost_class + wd * dice


def test_mask_cost_matches_official_formulas():
  rng = np.random.default_rng(1)
  b, q, g, t, k = 2, 4, 3, 2, 5
  logits = rng.normal(size=(b, q, k + 1)).astype(np.float32)
  pred = (3 * rng.normal(size=(b, q, t, 4, 6))).astype(np.float32)
  tgt = rng.random((b, g, t, 8, 12)) > 0.6
  labels = rng.integers(0, k, size=(b, g)).astype(np.int32)
  coords = rng.random((b, 50, 2)).astype(np.float32)
  got = matching.mask_cost(logits, pred, labels, tgt, coords)
  assert got.shape == (b, q, g) and got.dtype == jnp.float32
  for i in range(b):
    np.testing.assert_allclose(got[i], np_official_cost(logits[i], pred[i], labels[i], tgt[i],
                                                        coords[i]), rtol=1e-5, atol=1e-5)
  # Class-only weights isolate the class term.
  only_cls = matching.mask_cost(logits, pred, labels, tgt, coords, mask_weight=0.0,
                                dice_weight=0.0)
  np.testing.assert_allclose(only_cls[0], np_official_cost(logits[0], pred[0], labels[0], tgt[0],
                                                           coords[0], 1.0, 0.0, 0.0) * 2,
                             atol=1e-6)


# ---- matchers ---------------------------------------------------------------------------------


def scipy_reference(cost: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, float]:
  c = np.clip(np.nan_to_num(cost.astype(np.float64), nan=matching.COST_BOUND,
                            posinf=matching.COST_BOUND, neginf=-matching.COST_BOUND),
              -matching.COST_BOUND, matching.COST_BOUND)[:, :n]
  rows, cols = linear_sum_assignment(c)
  return rows, cols, float(c[rows, cols].sum())


def random_costs(rng, b, q, g, with_ties=False):
  cost = rng.normal(size=(b, q, g)).astype(np.float32)
  if with_ties and b > 1:
    cost[1] = rng.integers(0, 3, size=(q, g))  # many equal costs and equal optima
  num_valid = rng.integers(0, g + 1, size=b)
  if b > 2:
    num_valid[2] = g
  cost += 100.0 * (np.arange(g) >= num_valid[:, None, None])  # padding must be ignored
  if b > 3 and g:
    cost[3, 0, 0], cost[3, -1, -1] = np.nan, -np.inf
  return cost, num_valid.astype(np.int32)


def check_format(m: np.ndarray, q: int, n: int):
  rows, cols = m
  k = min(q, n)
  assert sorted(rows.tolist()) == list(range(q))
  assert (cols[:k] >= 0).all() and (cols[:k] < n).all() and len(set(cols[:k].tolist())) == k
  assert (cols[k:] == -1).all()
  assert (np.diff(rows[:k]) > 0).all() and (np.diff(rows[k:]) > 0).all()
  return rows[:k], cols[:k]


# (B, Q, G): Q > G, square, G = 0, and G > Q (never official: every prediction gets a target).
SHAPES = ((5, 7, 4), (4, 5, 5), (2, 4, 0), (4, 3, 6), (48, 12, 9))
JITTED = {name: jax.jit(lambda c, n, name=name: matching.match(c, n, name))
          for name in matching.MATCHERS}


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matchers_against_scipy(shape):
  b, q, g = shape
  cost, num_valid = random_costs(np.random.default_rng(sum(shape)), b, q, g, with_ties=True)
  for name, fn in JITTED.items():
    out = np.asarray(fn(cost, num_valid))
    assert out.shape == (b, 2, q) and out.dtype == np.int32
    for i in range(b):
      rows, cols = check_format(out[i], q, int(num_valid[i]))
      ref_rows, ref_cols, ref_total = scipy_reference(cost[i], int(num_valid[i]))
      clean = np.clip(np.nan_to_num(cost[i].astype(np.float64), nan=matching.COST_BOUND),
                      -matching.COST_BOUND, matching.COST_BOUND)
      total = float(clean[rows, cols].sum())
      if name == "scipy":
        np.testing.assert_array_equal(rows, ref_rows)
        np.testing.assert_array_equal(cols, ref_cols)
      elif name == "hungarian":
        assert total == pytest.approx(ref_total, rel=1e-5, abs=1e-4), (i, total, ref_total)
      else:  # greedy: a valid matching, never better than optimal
        assert total >= ref_total - 1e-4


def test_unknown_matcher_is_rejected():
  with pytest.raises(ValueError, match="unknown matcher"):
    matching.match(jnp.zeros((1, 2, 2)), jnp.ones((1,), jnp.int32), "auction")


def test_scipy_matcher_under_vmap_and_all_layers_one_host_call(monkeypatch):
  calls = []
  original = matching._host_match

  def counting(cost, num_valid):
    calls.append((cost.shape, num_valid.shape))
    return original(cost, num_valid)

  monkeypatch.setattr(matching, "_host_match", counting)
  rng = np.random.default_rng(7)
  v, b, q, g = 3, 4, 6, 5
  cost = rng.normal(size=(v, b, q, g)).astype(np.float32)
  num_valid = np.array([5, 0, 2, 4], np.int32)
  # vmap over a leading axis with unbatched num_valid (size-1 axis on the host side).
  out = np.asarray(jax.jit(jax.vmap(matching.hungarian_match, in_axes=(0, None)))(cost,
                                                                                   num_valid))
  assert len(calls) == 1 and calls[0] == ((v, b, q, g), (1, b))
  layers = np.asarray(jax.jit(matching.match_all_layers)(cost, num_valid))
  assert len(calls) == 2 and calls[1][0] == (v * b, q, g)
  for arr in (out, layers):
    assert arr.shape == (v, b, 2, q)
    for i in range(v):
      for j in range(b):
        rows, cols = check_format(arr[i, j], q, int(num_valid[j]))
        ref_rows, ref_cols, _ = scipy_reference(cost[i, j], int(num_valid[j]))
        np.testing.assert_array_equal(rows, ref_rows)
        np.testing.assert_array_equal(cols, ref_cols)


def test_inverse_views_of_matches():
  m = np.array([[[1, 3, 0, 2], [2, 0, -1, -1]]], np.int32)
  np.testing.assert_array_equal(matching.pred_to_target(m), [[-1, 2, -1, 0]])
  np.testing.assert_array_equal(matching.target_to_pred(m, 4), [[3, -1, 1, -1]])


def test_scipy_matcher_in_shard_map_on_eight_devices():
  script = textwrap.dedent("""
      import numpy as np, jax
      from jax.sharding import AxisType, PartitionSpec as P
      from scipy.optimize import linear_sum_assignment
      from vis_jax.losses import matching
      assert jax.device_count() == 8
      calls = []
      original = matching._host_match
      def counting(cost, num_valid):
        calls.append(cost.shape)
        return original(cost, num_valid)
      matching._host_match = counting
      mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
      rng = np.random.default_rng(0)
      layers, b, q, g = 2, 16, 6, 4
      cost = rng.normal(size=(layers, b, q, g)).astype(np.float32)
      num_valid = rng.integers(0, g + 1, size=b).astype(np.int32)
      fn = jax.jit(jax.shard_map(matching.match_all_layers, mesh=mesh,
                                 in_specs=(P(None, "data"), P("data")),
                                 out_specs=P(None, "data")))
      out = np.asarray(fn(cost, num_valid))
      assert sorted(calls) == [(layers * b // 8, q, g)] * 8, calls  # one call per device
      assert out.shape == (layers, b, 2, q)
      for l in range(layers):
        for i in range(b):
          rows, cols = linear_sum_assignment(cost[l, i, :, :num_valid[i]])
          k = len(rows)
          assert (out[l, i, 0, :k] == rows).all() and (out[l, i, 1, :k] == cols).all()
          assert (out[l, i, 1, k:] == -1).all()
      print("OK")
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
