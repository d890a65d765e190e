"""Peak prior: a query's mask logits drawn towards the peak of its previous mask (not official).

Same-class neighbours have alike mask features, so an embedding that matches one of them
matches both, and a Mask2Former query's mask (and with it its next masked attention) covers
both. CondInst (Tian et al. 2020) makes its dynamic mask heads instance-aware with coordinates
relative to the instance's location. Here the location is the arg-max cell of the query's
previous mask prediction (per frame; no gradient flows through it, as through CondInst's
locations), and the query predicts three coefficients ``(u_x, u_y, v)`` of an additive
log-prior on its next mask logits:

    prior(p) = (u_x·dx + u_y·dy) / σ₀ − softplus(v)·(dx² + dy²) / σ₀²,   (dx, dy) = p − peak,

coordinates normalised to [0, 1] over the padded frame, σ₀ the prior's length scale (the
configs' ``peak_prior_scale``; default ``PRIOR_SCALE = 0.2``, about twice an object's radius in
the synthetic data). A query can so keep the object under its peak and drop a
neighbour of the same class; with ``v → −∞`` and ``u = 0`` the prior vanishes.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

PRIOR_SCALE = 0.2


def peak_prior_head(**kwargs: Any) -> nn.Dense:
  """The query → ``(u_x, u_y, v)`` head: zero kernel, bias ``(0, 0, −2)`` — no linear term and
  a weak radial prior (softplus(−2) ≈ 0.13 per σ₀²) at the start."""
  return nn.Dense(3, kernel_init=nn.initializers.zeros,
                  bias_init=lambda key, shape, dtype: jnp.array([0.0, 0.0, -2.0], dtype),
                  **kwargs)


def cell_centres(size: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
  """``(xs [W], ys [H])``: normalised centres of an ``H × W`` grid's cells."""
  h, w = size
  return ((jnp.arange(w, dtype=jnp.float32) + 0.5) / w,
          (jnp.arange(h, dtype=jnp.float32) + 0.5) / h)


def peak_coordinates(mask_logits: jax.Array) -> jax.Array:
  """``[..., 2]`` normalised (x, y) centre of each ``[..., H, W]`` map's arg-max cell (the
  first one on ties, row-major), without gradient."""
  h, w = mask_logits.shape[-2:]
  flat = jax.lax.stop_gradient(mask_logits).reshape(*mask_logits.shape[:-2], h * w)
  index = jnp.argmax(flat, axis=-1)
  xs, ys = cell_centres((h, w))
  return jnp.stack([xs[index % w], ys[index // w]], -1)


def peak_log_prior(coefficients: jax.Array, peaks: jax.Array, size: tuple[int, int],
                   scale: float) -> jax.Array:
  """The additive mask log-prior of the module docstring.

  Args:
    coefficients: ``[B, Q, 3]`` per query ``(u_x, u_y, v)``.
    peaks: ``[B, Q, *E, 2]`` (x, y) of the previous masks' peaks (``E = (T,)`` for clips).
    size: ``(H, W)`` of the mask grid.
    scale: σ₀, in units of the (padded) frame's side (the configs' ``peak_prior_scale``).

  Returns:
    ``[B, Q, *E, H, W]`` float32.
  """
  xs, ys = cell_centres(size)
  extra = peaks.ndim - 3
  coefficients = coefficients.astype(jnp.float32).reshape(
      *coefficients.shape[:2], *([1] * extra), 1, 1, 3)
  dx = (xs[None, :] - peaks[..., 0, None, None]) / scale   # [B, Q, *E, 1, W]
  dy = (ys[:, None] - peaks[..., 1, None, None]) / scale   # [B, Q, *E, H, 1]
  linear = coefficients[..., 0] * dx + coefficients[..., 1] * dy
  return linear - jax.nn.softplus(coefficients[..., 2]) * (dx ** 2 + dy ** 2)
