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

Both draw a query towards the *place* of its peak, and a same-class neighbour touching it is
still close. With centre votes (the configs' ``peak_prior_votes``; Panoptic-DeepLab's centre
offsets, Cheng et al. 2020) a dense head on the mask features predicts at every cell ``p`` the
offset ``o(p)`` to the centre of mass of the instance covering it (trained by
``losses/centre_offsets.py``; a linear read-out, or ``CentreOffsetTower`` first with the
configs' ``centre_offset_width``), and the query adds

    vote_prior(p) = −softplus(w) · |ν(p) − ν(peak)|² / σ₀²,   ν(p) = p + o(p),

``w`` from its own zero-kernel head (``vote_prior_head``): cells of the peak's instance vote
for the peak's centre and keep their logits, cells of a neighbour vote for another centre and
are pushed down however close they are. The votes carry no gradient into the prior (the offset
head learns from its own loss only), and with zero offsets — the head's initialisation — ``ν``
is the cell itself and the term is one more radial prior.
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


def peak_index(mask_logits: jax.Array) -> jax.Array:
  """``[...]`` row-major flat index of each ``[..., H, W]`` map's arg-max cell (the first one
  on ties), without gradient."""
  h, w = mask_logits.shape[-2:]
  flat = jax.lax.stop_gradient(mask_logits).reshape(*mask_logits.shape[:-2], h * w)
  return jnp.argmax(flat, axis=-1)


def peak_coordinates(mask_logits: jax.Array) -> jax.Array:
  """``[..., 2]`` normalised (x, y) centre of each ``[..., H, W]`` map's arg-max cell (the
  first one on ties, row-major), without gradient."""
  h, w = mask_logits.shape[-2:]
  index = peak_index(mask_logits)
  xs, ys = cell_centres((h, w))
  return jnp.stack([xs[index % w], ys[index // w]], -1)


def centre_offset_head(**kwargs: Any) -> nn.Dense:
  """Mask features (or the ``CentreOffsetTower``'s output) → ``(o_x, o_y)``, each cell's
  offset to its instance's centre of mass (normalised frame units); zero-initialised, so every
  cell first votes for itself."""
  return nn.Dense(2, kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros,
                  **kwargs)


class CentreOffsetTower(nn.Module):
  """Two ``3 × 3`` convolutions (``width`` channels, ReLU, zero padding) on ``[..., H, W, D]``
  mask features before ``centre_offset_head`` (Panoptic-DeepLab's offset head is a small conv
  tower too): a cell's offset depends on where the instance's extent lies around it, which a
  per-cell linear read-out of the mask features has to find in one vector."""
  width: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(2):
      x = nn.relu(nn.Conv(self.width, (3, 3), padding="SAME", dtype=self.dtype,
                          param_dtype=self.param_dtype, name=f"conv_{i}")(x))
    return x


def vote_prior_head(**kwargs: Any) -> nn.Dense:
  """The query → ``w`` head of the vote prior: zero kernel, bias −2 (as ``v``'s)."""
  return nn.Dense(1, kernel_init=nn.initializers.zeros,
                  bias_init=nn.initializers.constant(-2.0), **kwargs)


def centre_votes(offsets: jax.Array) -> jax.Array:
  """``[..., H, W, 2]`` offsets → the (x, y) centres the cells vote for, ``ν(p) = p + o(p)``,
  float32 and without gradient."""
  xs, ys = cell_centres(offsets.shape[-3:-1])
  cells = jnp.stack(jnp.broadcast_arrays(xs[None, :], ys[:, None]), -1)
  return cells + jax.lax.stop_gradient(offsets).astype(jnp.float32)


def vote_log_prior(coefficient: jax.Array, votes: jax.Array, peaks: jax.Array,
                   scale: float) -> jax.Array:
  """The vote prior of the module docstring.

  Args:
    coefficient: ``[B, Q, 1]`` per query ``w``.
    votes: ``[B, *E, H, W, 2]`` ``centre_votes`` of the frames (``E = (T,)`` for clips).
    peaks: ``[B, Q, *E]`` int ``peak_index`` of the query's previous masks.
    scale: σ₀ (as ``peak_log_prior``).

  Returns:
    ``[B, Q, *E, H, W]`` float32.
  """
  b, q = peaks.shape[:2]
  h, w = votes.shape[-3:-1]
  flat = votes.reshape(b, 1, -1, h * w, 2)                               # [B, 1, ΠE, HW, 2]
  index = peaks.reshape(b, q, -1, 1, 1)                                  # [B, Q, ΠE, 1, 1]
  at_peak = jnp.take_along_axis(flat, index, axis=-2)                    # [B, Q, ΠE, 1, 2]
  distance2 = jnp.sum(jnp.square(flat - at_peak), -1) / scale ** 2       # [B, Q, ΠE, HW]
  weight = jax.nn.softplus(coefficient.astype(jnp.float32)).reshape(b, q, 1, 1)
  return (-weight * distance2).reshape(b, q, *peaks.shape[2:], h, w)


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
