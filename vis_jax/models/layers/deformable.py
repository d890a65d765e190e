"""Multi-scale deformable attention (Deformable DETR / Mask2Former pixel decoder).

Behaviour follows the official PyTorch fallback ``ms_deform_attn_core_pytorch`` and the
``MSDeformAttn`` module of facebookresearch/Mask2Former (spec §1.2): bilinear sampling with
``grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)`` semantics, offsets
normalised by each level's (W, H), the softmax taken jointly over levels × points per head.

Notation: ``B`` batch, ``Lq`` queries, ``S = Σ_l H_l·W_l`` flattened value tokens, ``M`` heads,
``D`` channels per head, ``L`` levels, ``P`` points. Locations are (x, y) in [0, 1] with (0, 0) the
top-left corner of the top-left pixel and (1, 1) the bottom-right corner of the bottom-right pixel.

The sampler is a plain gather of the four bilinear corners per point (one gather over all levels,
whose corner indices are offset into the flattened value), followed by one weighted reduction, so
XLA sees gather → multiply → reduce and can fuse them. Level shapes are static Python tuples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

SpatialShapes = Sequence[tuple[int, int]]
BATCH_MODES = ("vmap", "map")


def _corners(locations: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
  """Flat indices and bilinear weights of the 4 corners around each location.

  Args:
    locations: ``[..., 2]`` (x, y) in normalised [0, 1] image coordinates (any real value).
    height: static map height ``H``.
    width: static map width ``W``.

  Returns:
    ``(indices [..., 4] int32, weights [..., 4] float32)``; indices are row-major into ``H·W``,
    always in range; corners outside the map carry weight 0 (``padding_mode="zeros"``).
  """
  locations = locations.astype(jnp.float32)
  # align_corners=False: pixel i covers [i, i+1) in units of pixels, so its centre sits at
  # u·W = i + 0.5; the −0.5 turns a normalised coordinate into a pixel-centre coordinate.
  x = locations[..., 0] * width - 0.5
  y = locations[..., 1] * height - 0.5
  # Clipping before the int cast keeps inf/huge coordinates defined; any clipped corner is out of
  # range either way, so its contribution (0) is unchanged.
  x0 = jnp.clip(jnp.floor(x), -2, width).astype(jnp.int32)
  y0 = jnp.clip(jnp.floor(y), -2, height).astype(jnp.int32)
  xs = jnp.stack([x0, x0 + 1, x0, x0 + 1], axis=-1)
  ys = jnp.stack([y0, y0, y0 + 1, y0 + 1], axis=-1)
  # Tent weights from each corner's own integer coordinate (not floor/fraction pairs): XLA may
  # evaluate x in several fusions, FMA-contracted in some and not in others, so floor(x) can
  # differ by one between the index and the weight computation when x is within an ulp of an
  # integer. Tent weights keep the sample continuous in x whichever rounding each side saw.
  weights = (jnp.maximum(0.0, 1.0 - jnp.abs(x[..., None] - xs.astype(jnp.float32)))
             * jnp.maximum(0.0, 1.0 - jnp.abs(y[..., None] - ys.astype(jnp.float32))))
  valid = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
  weights = jnp.where(valid, weights, 0.0)
  indices = jnp.clip(ys, 0, height - 1) * width + jnp.clip(xs, 0, width - 1)
  return indices, weights


def bilinear_sample(value: jax.Array, locations: jax.Array) -> jax.Array:
  """Samples a channels-last map at normalised locations, like ``grid_sample(2·loc − 1)``.

  Matches ``torch.nn.functional.grid_sample(mode="bilinear", padding_mode="zeros",
  align_corners=False)`` applied to ``grid = 2 * locations - 1``: the pixel coordinate is
  ``x = u·W − 0.5``, ``y = v·H − 0.5`` and corners outside the map contribute zero.

  Args:
    value: ``[H, W, C]`` feature map.
    locations: ``[..., 2]`` (x, y) in [0, 1] (values outside are allowed).

  Returns:
    ``[..., C]`` samples, in ``promote(value.dtype, float32)``.
  """
  height, width, channels = value.shape
  indices, weights = _corners(locations, height, width)
  gathered = value.reshape(height * width, channels)[indices]  # [..., 4, C]
  return jnp.einsum("...kc,...k->...c", gathered, weights)


def _level_starts(spatial_shapes: SpatialShapes) -> list[int]:
  starts, total = [], 0
  for h, w in spatial_shapes:
    starts.append(total)
    total += h * w
  return starts


def _sample_one(value: jax.Array, locations: jax.Array, weights: jax.Array,
                spatial_shapes: SpatialShapes) -> jax.Array:
  """Deformable sampling for one (batch, head) pair.

  Args:
    value: ``[S, D]``.
    locations: ``[Lq, L, P, 2]``.
    weights: ``[Lq, L, P]`` attention weights.
    spatial_shapes: static ``((H_l, W_l), ...)``.

  Returns:
    ``[Lq, D]``.
  """
  indices, corner_w = [], []
  starts = _level_starts(spatial_shapes)
  for level, ((h, w), start) in enumerate(zip(spatial_shapes, starts, strict=True)):
    idx, cw = _corners(locations[:, level], h, w)  # [Lq, P, 4]
    indices.append(idx + start)
    corner_w.append(cw * weights[:, level, :, None].astype(jnp.float32))
  lq = locations.shape[0]
  indices = jnp.stack(indices, axis=1).reshape(lq, -1)  # [Lq, L·P·4]
  corner_w = jnp.stack(corner_w, axis=1).reshape(lq, -1)
  return jnp.einsum("qkd,qk->qd", value[indices], corner_w)


def ms_deform_attn_core(value: jax.Array, spatial_shapes: SpatialShapes,
                        sampling_locations: jax.Array, attention_weights: jax.Array, *,
                        batch_mode: str = "vmap", map_batch_size: int | None = None,
                        query_chunk: int | None = None, remat: bool = False) -> jax.Array:
  """Multi-scale deformable attention core (the official ``ms_deform_attn_core_pytorch``).

  Args:
    value: ``[B, S, M, D]`` with ``S = Σ_l H_l·W_l``, levels concatenated in order, row-major.
    spatial_shapes: static tuple ``((H_0, W_0), ..., (H_{L-1}, W_{L-1}))``.
    sampling_locations: ``[B, Lq, M, L, P, 2]`` (x, y) in [0, 1].
    attention_weights: ``[B, Lq, M, L, P]``, already normalised.
    batch_mode: ``"vmap"`` runs all ``B·M`` (batch, head) pairs at once; ``"map"`` loops over
      them with ``lax.map`` (``map_batch_size`` pairs per step) to bound peak memory.
    map_batch_size: pairs per ``lax.map`` step (``None`` = one); ignored for ``"vmap"``.
    query_chunk: if set, queries are processed ``query_chunk`` at a time (``lax.map``; the query
      axis is zero-padded to a multiple), bounding the gathered ``[.., Lq, L·P·4, D]`` tensor.
    remat: wrap the sampler in ``jax.checkpoint`` so the gathered corners are recomputed in the
      backward pass instead of stored.

  Returns:
    ``[B, Lq, M·D]`` (heads contiguous along the last axis), float32 unless ``value`` is wider.
  """
  b, s, m, d = value.shape
  _, lq, m2, n_levels, n_points, _ = sampling_locations.shape
  spatial_shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
  if sum(h * w for h, w in spatial_shapes) != s:
    raise ValueError(f"value has {s} tokens but spatial_shapes {spatial_shapes} sum to "
                     f"{sum(h * w for h, w in spatial_shapes)}")
  if len(spatial_shapes) != n_levels or m2 != m:
    raise ValueError(f"sampling_locations {sampling_locations.shape} does not match value "
                     f"{value.shape} / {len(spatial_shapes)} levels")
  if attention_weights.shape != sampling_locations.shape[:-1]:
    raise ValueError(f"attention_weights {attention_weights.shape} != "
                     f"{sampling_locations.shape[:-1]}")
  if batch_mode not in BATCH_MODES:
    raise ValueError(f"batch_mode {batch_mode!r} not in {BATCH_MODES}")

  def sample(v, loc, w):  # [S, D], [q, L, P, 2], [q, L, P] -> [q, D]
    return _sample_one(v, loc, w, spatial_shapes)

  if remat:
    sample = jax.checkpoint(sample)

  if query_chunk is not None and query_chunk < lq:
    per_query = sample
    n_chunks = -(-lq // query_chunk)
    pad = n_chunks * query_chunk - lq

    def sample(v, loc, w):
      # Padded queries sample with weight 0 and are sliced off.
      loc = jnp.pad(loc, ((0, pad), (0, 0), (0, 0), (0, 0)))
      w = jnp.pad(w, ((0, pad), (0, 0), (0, 0)))
      loc = loc.reshape(n_chunks, query_chunk, *loc.shape[1:])
      w = w.reshape(n_chunks, query_chunk, *w.shape[1:])
      out = jax.lax.map(lambda args: per_query(v, *args), (loc, w))
      return out.reshape(n_chunks * query_chunk, -1)[:lq]

  # (batch, head) pairs become one leading axis.
  v = jnp.moveaxis(value, 2, 1).reshape(b * m, s, d)
  loc = jnp.moveaxis(sampling_locations, 2, 1).reshape(b * m, lq, n_levels, n_points, 2)
  w = jnp.moveaxis(attention_weights, 2, 1).reshape(b * m, lq, n_levels, n_points)
  if batch_mode == "vmap":
    out = jax.vmap(sample)(v, loc, w)
  else:
    out = jax.lax.map(lambda args: sample(*args), (v, loc, w), batch_size=map_batch_size)
  out = out.reshape(b, m, lq, d)
  return jnp.moveaxis(out, 1, 2).reshape(b, lq, m * d)


def sampling_offsets_bias_init(n_heads: int, n_levels: int, n_points: int) -> np.ndarray:
  """The official "grid direction" bias of ``sampling_offsets``: ``[M·L·P·2]`` float32.

  Head ``h`` points along angle ``2πh/M``, scaled so its larger |component| is 1, and point ``p``
  reaches ``p + 1`` times that far; the same for every level. Ordered (head, level, point, xy).
  """
  thetas = np.arange(n_heads, dtype=np.float32) * np.float32(2.0 * math.pi / n_heads)
  grid = np.stack([np.cos(thetas), np.sin(thetas)], -1)
  grid = grid / np.abs(grid).max(-1, keepdims=True)
  scale = np.arange(1, n_points + 1, dtype=np.float32)[None, None, :, None]
  grid = np.broadcast_to(grid[:, None, None, :], (n_heads, n_levels, n_points, 2)) * scale
  return grid.reshape(-1).astype(np.float32)


class MSDeformAttn(nn.Module):
  """Multi-scale deformable attention module (official ``MSDeformAttn``).

  Submodule names equal the official ones (``sampling_offsets``, ``attention_weights``,
  ``value_proj``, ``output_proj``); each is a ``Dense`` whose kernel is the transposed
  ``nn.Linear.weight``, its output axis ordered exactly as the official ``.view`` calls read it.

  Attributes:
    d_model: model width ``C``.
    n_levels: feature levels ``L`` (the Mask2Former pixel decoder uses 3).
    n_heads: heads ``M``; ``D = C / M``.
    n_points: sampling points per head and level ``P``.
    dtype: compute dtype of the four projections. Offsets, the softmax, sampling locations and the
      bilinear sampling are always float32 (spec §8.6: the official pixel decoder runs in fp32).
    param_dtype: parameter dtype.
    batch_mode, map_batch_size, query_chunk, remat: memory knobs of ``ms_deform_attn_core``.
  """
  d_model: int = 256
  n_levels: int = 4
  n_heads: int = 8
  n_points: int = 4
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  batch_mode: str = "vmap"
  map_batch_size: int | None = None
  query_chunk: int | None = None
  remat: bool = False

  @nn.compact
  def __call__(self, query: jax.Array, reference_points: jax.Array, input_flatten: jax.Array,
               spatial_shapes: SpatialShapes,
               input_padding_mask: jax.Array | None = None) -> jax.Array:
    """Deformable attention from ``query`` into the flattened multi-scale ``input_flatten``.

    Args:
      query: ``[B, Lq, C]`` (queries already carry their positional embedding).
      reference_points: ``[B, Lq, L, 2]`` (x, y) in [0, 1], or ``[B, Lq, L, 4]`` boxes
        (cx, cy, w, h) for which offsets are scaled by ``0.5·(w, h) / P`` (official 4-d branch).
      input_flatten: ``[B, S, C]``, levels concatenated row-major in ``spatial_shapes`` order.
      spatial_shapes: static ``((H_0, W_0), ..., (H_{L-1}, W_{L-1}))``.
      input_padding_mask: ``[B, S]`` bool, True = padding (its value is zeroed), or None.

    Returns:
      ``[B, Lq, C]`` in ``dtype``.
    """
    c, m, n_levels, n_points = self.d_model, self.n_heads, self.n_levels, self.n_points
    if c % m:
      raise ValueError(f"d_model {c} must be divisible by n_heads {m}")
    spatial_shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
    if len(spatial_shapes) != n_levels:
      raise ValueError(f"{len(spatial_shapes)} spatial shapes for n_levels={n_levels}")
    b, lq, _ = query.shape
    s = input_flatten.shape[1]
    if sum(h * w for h, w in spatial_shapes) != s:
      raise ValueError(f"input_flatten has {s} tokens, spatial_shapes {spatial_shapes} disagree")

    def dense(features, name, kernel_init, bias_init):
      return nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                      kernel_init=kernel_init, bias_init=bias_init)

    bias_grid = sampling_offsets_bias_init(m, n_levels, n_points)
    offsets_bias_init = lambda key, shape, dtype=jnp.float32: jnp.asarray(bias_grid, dtype)
    zeros = nn.initializers.zeros
    xavier = nn.initializers.xavier_uniform()

    value = dense(c, "value_proj", xavier, zeros)(input_flatten)
    if input_padding_mask is not None:
      value = jnp.where(input_padding_mask[..., None], jnp.zeros((), value.dtype), value)
    value = value.astype(jnp.float32).reshape(b, s, m, c // m)

    offsets = dense(m * n_levels * n_points * 2, "sampling_offsets", zeros,
                    offsets_bias_init)(query)
    offsets = offsets.astype(jnp.float32).reshape(b, lq, m, n_levels, n_points, 2)
    logits = dense(m * n_levels * n_points, "attention_weights", zeros, zeros)(query)
    logits = logits.astype(jnp.float32).reshape(b, lq, m, n_levels * n_points)
    attn = jax.nn.softmax(logits, axis=-1).reshape(b, lq, m, n_levels, n_points)

    ref = reference_points.astype(jnp.float32)
    if ref.shape[-1] == 2:
      normaliser = jnp.asarray([[w, h] for h, w in spatial_shapes], jnp.float32)  # [L, 2]
      locations = ref[:, :, None, :, None, :] + offsets / normaliser[:, None, :]
    elif ref.shape[-1] == 4:
      locations = (ref[:, :, None, :, None, :2]
                   + offsets / n_points * ref[:, :, None, :, None, 2:] * 0.5)
    else:
      raise ValueError(f"reference_points last dim must be 2 or 4, got {ref.shape}")

    out = ms_deform_attn_core(value, spatial_shapes, locations, attn,
                              batch_mode=self.batch_mode, map_batch_size=self.map_batch_size,
                              query_chunk=self.query_chunk, remat=self.remat)
    return dense(c, "output_proj", xavier, zeros)(out.astype(self.dtype))
