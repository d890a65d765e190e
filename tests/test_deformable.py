"""Deformable attention vs independent references.

References: a per-point numpy loop of ``grid_sample(bilinear, zeros, align_corners=False)``
(float64), finite differences of that loop, and (when torch is installed) ``F.grid_sample``
composed as the official PyTorch fallback does plus a small torch re-implementation of the
official ``MSDeformAttn`` fed the same weights.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vis_jax.models.layers import deformable

SHAPES = ((4, 5), (3, 2), (1, 3))  # deliberately non-square, one single-row level
S = sum(h * w for h, w in SHAPES)
B, LQ, M, D, P = 2, 6, 2, 3, 3
L = len(SHAPES)


def np_grid_sample_point(img: np.ndarray, u: float, v: float) -> np.ndarray:
  """One bilinear sample of ``img [H, W, C]`` at normalised (u, v), zero outside the map."""
  h, w, _ = img.shape
  x, y = u * w - 0.5, v * h - 0.5  # align_corners=False pixel-centre convention
  x0, y0 = math.floor(x), math.floor(y)
  out = np.zeros(img.shape[-1], np.float64)
  for yi, wy in ((y0, y0 + 1 - y), (y0 + 1, y - y0)):
    for xi, wx in ((x0, x0 + 1 - x), (x0 + 1, x - x0)):
      if 0 <= xi < w and 0 <= yi < h:
        out += wy * wx * img[yi, xi]
  return out


def np_ms_deform_attn(value, shapes, loc, weights) -> np.ndarray:
  """Loop reference: value [B,S,M,D], loc [B,Lq,M,L,P,2], weights [B,Lq,M,L,P] -> [B,Lq,M*D]."""
  value, loc, weights = (np.asarray(a, np.float64) for a in (value, loc, weights))
  b_, s_, m_, d_ = value.shape
  lq = loc.shape[1]
  out = np.zeros((b_, lq, m_, d_))
  start = 0
  for lvl, (h, w) in enumerate(shapes):
    maps = value[:, start:start + h * w].reshape(b_, h, w, m_, d_)
    start += h * w
    for b in range(b_):
      for q in range(lq):
        for m in range(m_):
          for p in range(loc.shape[4]):
            u, v = loc[b, q, m, lvl, p]
            out[b, q, m] += weights[b, q, m, lvl, p] * np_grid_sample_point(maps[b, :, :, m], u, v)
  return out.reshape(b_, lq, m_ * d_)


def special_locations(shapes) -> np.ndarray:
  """Borders, pixel centres, pixel edges and far-outside points for every level's grid."""
  pts = [(0.0, 0.0), (1.0, 1.0), (0.0, 1.0), (1.0, 0.0), (0.5, 0.5), (-2.0, 0.3), (0.4, 7.0),
         (-50.0, 50.0)]
  for h, w in shapes:
    pts += [(0.5 / w, 0.5 / h), (1 - 0.5 / w, 1 - 0.5 / h), (1 / w, 1 / h),  # centres / edges
            (-0.5 / w, 0.5), (1 + 0.5 / w, 0.5), (0.5, -0.5 / h), (0.5, 1 + 0.5 / h),
            (-0.25 / w, -0.25 / h), (1 + 0.25 / w, 1 + 0.25 / h)]  # half-out corners
  return np.asarray(pts, np.float32)


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  value = rng.normal(size=(B, S, M, D)).astype(np.float32)
  loc = rng.uniform(-0.3, 1.3, size=(B, LQ, M, L, P, 2)).astype(np.float32)
  special = special_locations(SHAPES)
  flat = loc.reshape(-1, 2)
  flat[:len(special)] = special  # every level sees border cases through the flat layout
  loc = flat.reshape(loc.shape)
  logits = rng.normal(size=(B, LQ, M, L * P))
  weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  weights = weights.reshape(B, LQ, M, L, P).astype(np.float32)
  return value, loc, weights


@pytest.fixture(scope="module")
def reference(inputs):
  return np_ms_deform_attn(*inputs[:1], SHAPES, *inputs[1:])


def test_bilinear_sample_matches_numpy_loop():
  rng = np.random.default_rng(1)
  img = rng.normal(size=(4, 5, 3)).astype(np.float32)
  locs = np.concatenate([special_locations([(4, 5)]),
                         rng.uniform(-0.4, 1.4, size=(40, 2)).astype(np.float32)])
  locs = locs[:48].reshape(6, 8, 2)  # arbitrary leading dims
  got = np.asarray(jax.jit(deformable.bilinear_sample)(img, locs))
  want = np.stack([np_grid_sample_point(img, u, v) for u, v in locs.reshape(-1, 2)])
  assert got.shape == (6, 8, 3)
  np.testing.assert_allclose(got.reshape(-1, 3), want, atol=1e-5)
  # Far outside the map nothing is sampled; at the exact corner only a quarter of a pixel.
  np.testing.assert_allclose(got.reshape(-1, 3)[1], 0.25 * img[-1, -1], atol=1e-6)


@pytest.mark.parametrize("kwargs", [
    {},
    {"batch_mode": "map"},
    {"batch_mode": "map", "map_batch_size": 3},
    {"query_chunk": 4},  # 6 queries: exercises the padded last chunk
    {"batch_mode": "map", "query_chunk": 2, "remat": True},
], ids=str)
def test_core_matches_numpy_loop(inputs, reference, kwargs):
  fn = jax.jit(functools.partial(deformable.ms_deform_attn_core, spatial_shapes=SHAPES, **kwargs))
  value, loc, weights = inputs
  got = fn(value, sampling_locations=loc, attention_weights=weights)
  assert got.shape == (B, LQ, M * D) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), reference, atol=2e-5)


def _grad_case():
  """Tiny case whose points stay ≥0.1 px from grid lines, so the loop is linear near them."""
  rng = np.random.default_rng(2)
  shapes = ((3, 4), (2, 2))
  b, lq, m, d, p = 1, 2, 2, 2, 2
  value = rng.normal(size=(b, sum(h * w for h, w in shapes), m, d))
  loc = np.empty((b, lq, m, len(shapes), p, 2))
  for lvl, (h, w) in enumerate(shapes):
    for axis, n in ((0, w), (1, h)):
      # Pixel coordinate k + f with k from -1 (partly outside) to n-1 (partly outside).
      k = rng.integers(-1, n, size=(b, lq, m, p))
      f = rng.uniform(0.1, 0.9, size=(b, lq, m, p))
      loc[:, :, :, lvl, :, axis] = (k + f + 0.5) / n
  weights = rng.uniform(0.1, 1.0, size=(b, lq, m, len(shapes), p))
  cot = rng.normal(size=(b, lq, m * d))
  return shapes, value, loc, weights, cot


def _fd_grad(fn, x, eps=1e-6):
  grad = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    xp, xm = x.copy(), x.copy()
    xp[i] += eps
    xm[i] -= eps
    grad[i] = (fn(xp) - fn(xm)) / (2 * eps)
  return grad


@pytest.mark.parametrize("kwargs", [{}, {"batch_mode": "map", "query_chunk": 1, "remat": True}],
                         ids=str)
def test_core_gradients_match_finite_differences(kwargs):
  shapes, value, loc, weights, cot = _grad_case()
  core = functools.partial(deformable.ms_deform_attn_core, spatial_shapes=shapes, **kwargs)
  loss = lambda v, x, w: jnp.sum(core(v, sampling_locations=x, attention_weights=w) * cot)
  args = [a.astype(np.float32) for a in (value, loc, weights)]
  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)
  np_loss = [
      lambda v: np.sum(np_ms_deform_attn(v, shapes, loc, weights) * cot),
      lambda x: np.sum(np_ms_deform_attn(value, shapes, x, weights) * cot),
      lambda w: np.sum(np_ms_deform_attn(value, shapes, loc, w) * cot),
  ]
  for g, f, x in zip(grads, np_loss, (value, loc, weights), strict=True):
    g = np.asarray(g)
    assert np.all(np.isfinite(g))
    want = _fd_grad(f, x)
    np.testing.assert_allclose(g, want, atol=1e-4 * max(1.0, np.abs(want).max()))


def test_core_gradients_finite_at_borders(inputs):
  value, loc, weights = inputs
  core = functools.partial(deformable.ms_deform_attn_core, spatial_shapes=SHAPES)
  loss = lambda v, x, w: jnp.sum(core(v, sampling_locations=x, attention_weights=w) ** 2)
  for g in jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(value, loc, weights):
    assert np.all(np.isfinite(np.asarray(g)))


def test_core_rejects_inconsistent_shapes(inputs):
  value, loc, weights = inputs
  with pytest.raises(ValueError, match="tokens"):
    deformable.ms_deform_attn_core(value, ((4, 5), (3, 2)), loc, weights)
  with pytest.raises(ValueError, match="batch_mode"):
    deformable.ms_deform_attn_core(value, SHAPES, loc, weights, batch_mode="loop")


# ------------------------------------------------------------------------------------------------
# MSDeformAttn module.

C, HEADS, LEVELS, POINTS = 16, 4, 3, 2
MOD_LQ = 5


@pytest.fixture(scope="module")
def module_case():
  rng = np.random.default_rng(3)
  query = rng.normal(size=(B, MOD_LQ, C)).astype(np.float32)
  ref = rng.uniform(0.0, 1.0, size=(B, MOD_LQ, LEVELS, 2)).astype(np.float32)
  boxes = np.concatenate([ref, rng.uniform(0.1, 0.6, size=ref.shape).astype(np.float32)], -1)
  flat = rng.normal(size=(B, S, C)).astype(np.float32)
  mask = rng.uniform(size=(B, S)) < 0.3
  module = deformable.MSDeformAttn(d_model=C, n_levels=LEVELS, n_heads=HEADS, n_points=POINTS)
  init = jax.jit(module.init, static_argnums=(4,))(jax.random.key(0), query, ref, flat, SHAPES)
  # Random parameters: the official init makes attention uniform and offsets query-independent,
  # which would leave most of the forward untested.
  leaves, tree = jax.tree.flatten(init)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(
      tree, [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)])
  apply = jax.jit(module.apply, static_argnums=(4,))
  return module, init, params, apply, query, ref, boxes, flat, mask


def test_init_follows_official_scheme(module_case):
  init = module_case[1]["params"]
  # Hand-derived directions for 4 heads (angles 0, π/2, π, 3π/2), times point index + 1.
  dirs = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], np.float32)
  want = np.stack([np.stack([dirs * (p + 1) for p in range(POINTS)], 1)] * LEVELS, 1)
  np.testing.assert_allclose(init["sampling_offsets"]["bias"], want.reshape(-1), atol=1e-6)
  np.testing.assert_allclose(deformable.sampling_offsets_bias_init(8, 1, 1).reshape(8, 2),
                             [[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]],
                             atol=1e-6)
  assert not np.any(init["sampling_offsets"]["kernel"])
  assert not np.any(init["attention_weights"]["kernel"])
  assert not np.any(init["attention_weights"]["bias"])
  for name in ("value_proj", "output_proj"):
    kernel = np.asarray(init[name]["kernel"])
    assert kernel.shape == (C, C) and not np.any(init[name]["bias"])
    assert np.abs(kernel).max() <= math.sqrt(6 / (2 * C)) and kernel.std() > 0.5 * math.sqrt(1 / C)


def test_padding_mask_hides_padded_tokens(module_case):
  _, _, params, apply, query, ref, _, flat, mask = module_case
  noisy = np.where(mask[..., None], 100.0, flat).astype(np.float32)
  a = apply(params, query, ref, flat, SHAPES, mask)
  b = apply(params, query, ref, noisy, SHAPES, mask)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  assert not np.allclose(np.asarray(a), np.asarray(apply(params, query, ref, flat, SHAPES)))


def test_bf16_projections_keep_sampling_in_fp32(module_case):
  module, _, params, apply, query, ref, _, flat, _ = module_case
  bf16 = deformable.MSDeformAttn(d_model=C, n_levels=LEVELS, n_heads=HEADS, n_points=POINTS,
                                 dtype=jnp.bfloat16)
  fn = lambda p, q, r, x: bf16.apply(p, q, r, x, SHAPES)
  out = jax.jit(fn)(params, query, ref, flat)
  assert out.dtype == jnp.bfloat16
  want = np.asarray(apply(params, query, ref, flat, SHAPES))
  np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=0.05 * np.abs(want).max())
  eqns = list(_all_eqns(jax.make_jaxpr(fn)(params, query, ref, flat).jaxpr))
  gathers = [e for e in eqns if e.primitive.name == "gather"]
  exps = [e for e in eqns if e.primitive.name == "exp"]  # the softmax
  assert gathers and all(e.invars[0].aval.dtype == jnp.float32 for e in gathers)
  assert exps and all(e.invars[0].aval.dtype == jnp.float32 for e in exps)


def _all_eqns(jaxpr):
  """Equations of a jaxpr and of every sub-jaxpr (pjit, checkpoint, scan, ...)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          yield from _all_eqns(sub)


def test_module_rejects_wrong_level_count(module_case):
  module, _, params, _, query, ref, _, flat, _ = module_case
  with pytest.raises(ValueError, match="spatial shapes"):
    module.apply(params, query, ref, flat, SHAPES[:2])


# ------------------------------------------------------------------------------------------------
# PyTorch cross-checks (official fallback composition and module re-implementation).


def torch_core(value, shapes, loc, weights):
  """``ms_deform_attn_core_pytorch`` composition, written from its documented behaviour."""
  import torch
  import torch.nn.functional as F
  b, _, m, d = value.shape
  lq, n_levels, n_points = loc.shape[1], loc.shape[3], loc.shape[4]
  sizes = [h * w for h, w in shapes]
  grids = 2 * loc - 1
  sampled = []
  for lvl, (v_l, (h, w)) in enumerate(zip(value.split(sizes, dim=1), shapes, strict=True)):
    v_l = v_l.permute(0, 2, 3, 1).reshape(b * m, d, h, w)  # [B*M, D, H, W]
    g_l = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # [B*M, Lq, P, 2]
    sampled.append(F.grid_sample(v_l, g_l, mode="bilinear", padding_mode="zeros",
                                 align_corners=False))  # [B*M, D, Lq, P]
  w = weights.transpose(1, 2).reshape(b * m, 1, lq, n_levels * n_points)
  out = (torch.stack(sampled, dim=-2).flatten(-2) * w).sum(-1)  # [B*M, D, Lq]
  return out.view(b, m * d, lq).transpose(1, 2)


def torch_msdeform(params, query, ref, flat, shapes, mask, n_heads, n_points):
  """The official module's forward on Flax parameters (Dense kernel = Linear weight ᵀ)."""
  import torch
  t = lambda a: torch.tensor(np.array(a), dtype=torch.float64)
  lin = lambda name, x: x @ t(params[name]["kernel"]) + t(params[name]["bias"])
  query, ref, flat = t(query), t(ref), t(flat)
  b, lq, c = query.shape
  n_levels = len(shapes)
  value = lin("value_proj", flat)
  if mask is not None:
    value = value.masked_fill(torch.as_tensor(mask)[..., None], 0.0)
  value = value.view(b, -1, n_heads, c // n_heads)
  off = lin("sampling_offsets", query).view(b, lq, n_heads, n_levels, n_points, 2)
  attn = lin("attention_weights", query).view(b, lq, n_heads, n_levels * n_points)
  attn = torch.softmax(attn, -1).view(b, lq, n_heads, n_levels, n_points)
  if ref.shape[-1] == 2:
    norm = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float64)
    loc = ref[:, :, None, :, None, :] + off / norm[None, None, None, :, None, :]
  else:
    loc = ref[:, :, None, :, None, :2] + off / n_points * ref[:, :, None, :, None, 2:] * 0.5
  return lin("output_proj", torch_core(value, shapes, loc, attn)).numpy()


def _rel_err(got, want):
  return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


def test_core_matches_torch_grid_sample(inputs, reference):
  torch = pytest.importorskip("torch")
  value, loc, weights = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in inputs)
  want = torch_core(value, SHAPES, loc, weights)
  np.testing.assert_allclose(want.detach().numpy(), reference, atol=1e-10)  # both references agree
  cot = np.random.default_rng(4).normal(size=want.shape)
  (want * torch.as_tensor(cot)).sum().backward()
  core = functools.partial(deformable.ms_deform_attn_core, spatial_shapes=SHAPES)
  got, vjp = jax.vjp(lambda v, x, w: core(v, sampling_locations=x, attention_weights=w), *inputs)
  assert _rel_err(got, want.detach().numpy()) <= 1e-5
  g_value, g_loc, g_weights = vjp(jnp.asarray(cot, jnp.float32))
  assert _rel_err(g_value, value.grad.numpy()) <= 1e-4
  assert _rel_err(g_weights, weights.grad.numpy()) <= 1e-4
  # On a grid line the location derivative is one-sided and which side float32 vs float64
  # rounding lands on is arbitrary, so only points off the grid lines are compared.
  sizes = np.array([[w, h] for h, w in SHAPES], np.float64)[:, None, :]  # [L, 1, 2]
  pix = inputs[1].astype(np.float64) * sizes - 0.5
  off_grid = np.all(np.abs(pix - np.round(pix)) > 1e-3, axis=-1, keepdims=True)
  assert off_grid.mean() > 0.8
  want_loc = np.where(off_grid, loc.grad.numpy(), 0.0)
  assert _rel_err(np.where(off_grid, g_loc, 0.0), want_loc) <= 1e-4


@pytest.mark.parametrize("variant", ["points", "points+mask", "boxes"])
def test_module_matches_torch_reimplementation(module_case, variant):
  pytest.importorskip("torch")
  _, _, params, apply, query, ref, boxes, flat, mask = module_case
  ref_in = boxes if variant == "boxes" else ref
  mask_in = mask if variant == "points+mask" else None
  got = apply(params, query, ref_in, flat, SHAPES, mask_in)
  want = torch_msdeform(params["params"], query, ref_in, flat, SHAPES, mask_in, HEADS, POINTS)
  assert got.shape == (B, MOD_LQ, C)
  assert _rel_err(got, want) <= 1e-4


def test_grid_aligned_points_sample_their_pixel_under_jit():
  # Points on pixel centres (x = u·W − 0.5 integral up to rounding): the sample must be that
  # pixel whatever rounding XLA applies to x in different fusions (tent weights, not floor/frac).
  rng = np.random.default_rng(3)
  for h, w in ((12, 20), (24, 40), (48, 80)):
    value = rng.normal(size=(h, w, 4)).astype(np.float32)
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    locations = np.stack([(jj + 0.5) / w, (ii + 0.5) / h], -1).reshape(-1, 2).astype(np.float32)
    got = jax.jit(deformable.bilinear_sample)(jnp.asarray(value), jnp.asarray(locations))
    np.testing.assert_allclose(np.asarray(got), value.reshape(-1, 4), atol=1e-5)
