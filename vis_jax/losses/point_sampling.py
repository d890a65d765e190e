"""Point sampling for mask costs and losses (PointRend ``point_sample`` / importance sampling).

Behaviour follows detectron2's ``point_rend.point_features`` as used by Mask2Former (spec §1.4):

* ``point_sample`` is ``grid_sample(maps, 2·coords − 1, mode="bilinear", padding_mode="zeros",
  align_corners=False)``: coordinates are normalised (x, y) in [0, 1] over the whole (padded)
  map, so low-resolution logits and full-resolution ground truth are sampled at the same physical
  places without resizing either. Binary masks become soft at boundaries, as officially.
* ``uncertain_point_coords`` is ``get_uncertain_point_coords_with_randomness`` with the
  Mask2Former uncertainty ``−|logit|``: ``int(P·oversample)`` uniform candidates, keep the
  ``int(importance·P)`` most uncertain, append ``P − int(importance·P)`` fresh uniform points.
  All shapes are static; the selection is a ``top_k``.

The bilinear gather itself is ``vis_jax.models.layers.deformable.bilinear_sample`` (one row gather
of the four corners), so this module and deformable attention share one tested sampler.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vis_jax.models.layers.deformable import bilinear_sample


def point_sample(maps: jax.Array, coords: jax.Array) -> jax.Array:
  """Bilinear samples of ``maps`` at normalised ``coords`` (``grid_sample`` semantics).

  Args:
    maps: ``[N, H, W]`` or ``[N, T, H, W]`` (any dtype; bool masks are fine). With a ``T`` axis
      every frame is sampled at the same ``P`` points, as the official video matcher does.
    coords: ``[N, P, 2]`` (x, y) in [0, 1]; points outside sample zero padding.

  Returns:
    ``[N, P]`` or ``[N, T, P]`` float32 (wider if ``maps`` is wider).
  """
  if maps.ndim not in (3, 4):
    raise ValueError(f"point_sample expects [N, H, W] or [N, T, H, W] maps, got {maps.shape}")
  if coords.ndim != 3 or coords.shape[-1] != 2 or coords.shape[0] != maps.shape[0]:
    raise ValueError(f"point_sample expects coords [N, P, 2] with N = {maps.shape[0]}, "
                     f"got {coords.shape}")
  squeeze = maps.ndim == 3
  if squeeze:
    maps = maps[:, None]

  def one(m, c):  # [T, H, W], [P, 2] -> [T, P]
    # Frames as channels: one gather of T-long rows serves every frame.
    return bilinear_sample(jnp.moveaxis(m, 0, -1), c).T

  out = jax.vmap(one)(maps, coords)
  return out[:, 0] if squeeze else out


def point_sample_shared(maps: jax.Array, coords: jax.Array) -> jax.Array:
  """Samples every map at ONE shared point set (the matcher's per-sample points).

  Equivalent to ``point_sample(maps, repeat(coords))`` but computes the corner indices once and
  gathers rows holding all maps, which is what sharing the points is for.

  Args:
    maps: ``[..., H, W]``, e.g. ``[Q, T, h, w]`` predictions or ``[G, T, H, W]`` masks.
    coords: ``[P, 2]`` (x, y) in [0, 1].

  Returns:
    ``[..., P]`` float32 (wider if ``maps`` is wider).
  """
  lead = maps.shape[:-2]
  height, width = maps.shape[-2:]
  flat = maps.reshape(math.prod(lead), height, width)
  out = bilinear_sample(jnp.moveaxis(flat, 0, -1), coords)  # [P, N]
  return out.T.reshape(*lead, coords.shape[0])


def uniform_points(rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """``shape + (2,)`` uniform (x, y) in [0, 1), float32 (``torch.rand(..., 2)``)."""
  return jax.random.uniform(rng, (*shape, 2), jnp.float32)


def uncertain_point_coords(logits: jax.Array, num_points: int, rng: jax.Array,
                           oversample_ratio: float = 3.0,
                           importance_sample_ratio: float = 0.75) -> jax.Array:
  """Importance-sampled coordinates: the most uncertain oversampled points plus random ones.

  ``rng`` is split into ``(candidates, random)`` keys with ``jax.random.split(rng)``; the
  candidates are ``uniform_points(k_candidates, (N, int(num_points·oversample_ratio)))`` and the
  random rest ``uniform_points(k_random, (N, num_points − int(importance·num_points)))``.
  No gradient flows into ``logits`` (the official code runs under ``torch.no_grad``).

  Args:
    logits: ``[N, H, W]`` mask logits (one row per mask, or per (mask, frame)).
    num_points: ``P``, points per row.
    rng: PRNG key.
    oversample_ratio: candidates per output point (≥ 1).
    importance_sample_ratio: fraction of ``P`` chosen by uncertainty, in [0, 1].

  Returns:
    ``[N, P, 2]`` float32 (x, y) in [0, 1): the ``int(importance·P)`` most uncertain candidates
    first (most uncertain first), then the random points.
  """
  if oversample_ratio < 1:
    raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
  if not 0 <= importance_sample_ratio <= 1:
    raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
  n = logits.shape[0]
  num_sampled = int(num_points * oversample_ratio)
  num_uncertain = int(importance_sample_ratio * num_points)
  num_random = num_points - num_uncertain
  k_candidates, k_random = jax.random.split(rng)
  candidates = uniform_points(k_candidates, (n, num_sampled))
  sampled = point_sample(jax.lax.stop_gradient(logits), candidates)  # [N, num_sampled]
  _, idx = jax.lax.top_k(-jnp.abs(sampled), num_uncertain)
  chosen = jnp.take_along_axis(candidates, idx[..., None], axis=1)
  if num_random == 0:
    return chosen
  return jnp.concatenate([chosen, uniform_points(k_random, (n, num_random))], axis=1)
