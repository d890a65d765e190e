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

A quadratic log-prior is an isotropic blob: it cannot follow a cross, a crescent or the edge
between two touching objects. With a template of side ``n`` (the configs'
``peak_prior_template``; 0 = none) the query also predicts ``n²`` weights ``a_ij`` of Gaussian
bumps on an ``n × n`` grid spanning ``[−σ₀, σ₀]²`` around the peak (spacing
``s = 2σ₀ / (n − 1)``, bump width ``s``), added to the prior:

    template(p) = Σ_ij a_ij · exp(−((dy − o_i)² + (dx − o_j)²) / (2 s²)),   o_k = −σ₀ + k·s,

a coarse, peak-relative shape the query paints (as SOLO's / CondInst's location-relative mask
heads do with features). The bumps are separable, so the sum costs one ``n × n`` contraction
per map; zero weights at the start leave the quadratic prior alone.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

PRIOR_SCALE = 0.2


def peak_prior_head(template: int = 0, **kwargs: Any) -> nn.Dense:
  """The query → ``(u_x, u_y, v, a_00 … a_(n−1)(n−1))`` head (``n = template``, row-major
  weights): zero kernel, bias ``(0, 0, −2, 0, …)`` — no linear term, a weak radial prior
  (softplus(−2) ≈ 0.13 per σ₀²) and no template at the start."""
  _check_side(template)

  def bias_init(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    return jnp.zeros(shape, dtype).at[2].set(-2.0)

  return nn.Dense(3 + template * template, kernel_init=nn.initializers.zeros,
                  bias_init=bias_init, **kwargs)


def _check_side(side: int) -> None:
  if side < 0 or side == 1:
    raise ValueError(f"peak prior template side must be 0 (none) or >= 2, got {side}")


def template_side(num_coefficients: int) -> int:
  """``n`` of a head with ``3 + n²`` outputs (0: quadratic prior only)."""
  side = round(max(num_coefficients - 3, 0) ** 0.5)
  if side * side != num_coefficients - 3:
    raise ValueError(f"peak prior coefficients must number 3 + n², got {num_coefficients}")
  _check_side(side)
  return side


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
    coefficients: ``[B, Q, 3 + n²]`` per query ``(u_x, u_y, v)`` and the template's ``n × n``
      weights (row-major: ``y`` offset, then ``x``).
    peaks: ``[B, Q, *E, 2]`` (x, y) of the previous masks' peaks (``E = (T,)`` for clips).
    size: ``(H, W)`` of the mask grid.
    scale: σ₀, in units of the (padded) frame's side (the configs' ``peak_prior_scale``).

  Returns:
    ``[B, Q, *E, H, W]`` float32.
  """
  side = template_side(coefficients.shape[-1])
  xs, ys = cell_centres(size)
  extra = peaks.ndim - 3
  coefficients = coefficients.astype(jnp.float32)
  quadratic = coefficients[..., :3].reshape(*coefficients.shape[:2], *([1] * extra), 1, 1, 3)
  dx = (xs[None, :] - peaks[..., 0, None, None]) / scale   # [B, Q, *E, 1, W]
  dy = (ys[:, None] - peaks[..., 1, None, None]) / scale   # [B, Q, *E, H, 1]
  linear = quadratic[..., 0] * dx + quadratic[..., 1] * dy
  prior = linear - jax.nn.softplus(quadratic[..., 2]) * (dx ** 2 + dy ** 2)
  if side:
    # Offsets and width in units of σ₀ (dx, dy are already divided by it).
    spacing = 2.0 / (side - 1)
    offsets = -1.0 + spacing * jnp.arange(side, dtype=jnp.float32)
    bumps = lambda d: jnp.exp(-0.5 * ((d[..., None] - offsets) / spacing) ** 2)
    bumps_x = bumps(dx[..., 0, :])                          # [B, Q, *E, W, n]
    bumps_y = bumps(dy[..., :, 0])                          # [B, Q, *E, H, n]
    weights = jnp.broadcast_to(
        coefficients[..., 3:].reshape(*coefficients.shape[:2], *([1] * extra), side, side),
        (*bumps_x.shape[:-2], side, side))
    prior = prior + jnp.einsum("...hi,...ij,...wj->...hw", bumps_y, weights, bumps_x)
  return prior
