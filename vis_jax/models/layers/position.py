"""Sine positional encodings of Mask2Former (2-D) and Mask2Former-VIS (3-D), channels-last.

Both follow facebookresearch/Mask2Former exactly (``PositionEmbeddingSine`` and
``PositionEmbeddingSine3D``), which keep DETR's normalisation: with ``normalize=True`` the
coordinate of a valid pixel is ``cumsum(not_mask) / (cumsum[last] + 1e-6) · scale`` — no −0.5
offset (that one is Deformable DETR's variant). Frequencies are ``temperature^(2⌊i/2⌋ / F)`` and
channels alternate sin/cos (even channel i: sin, odd: cos, both of frequency ⌊i/2⌋). The 2-D code
is ``[y-block, x-block]``; the 3-D code adds (not concatenates) a temporal block with ``2F``
channels of its own frequency ladder.

A mask is True where a pixel is padding; padded pixels still get an encoding (of the cumsum,
which stops growing inside padding), as in the official code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

MaskOrShape = jax.Array | Sequence[int]


def _not_mask(mask_or_shape: MaskOrShape, ndim: int) -> jax.Array:
  if isinstance(mask_or_shape, (tuple, list)):
    if len(mask_or_shape) != ndim:
      raise ValueError(f"shape {tuple(mask_or_shape)} must have {ndim} entries")
    return jnp.ones(tuple(int(n) for n in mask_or_shape), jnp.float32)
  mask = jnp.asarray(mask_or_shape)
  if mask.ndim != ndim:
    raise ValueError(f"mask of shape {mask.shape} must have {ndim} dims")
  return jnp.logical_not(mask.astype(bool)).astype(jnp.float32)


def _embed_axis(not_mask: jax.Array, axis: int, normalize: bool, scale: float) -> jax.Array:
  """Cumulative (optionally normalised) coordinate along ``axis``, same shape as ``not_mask``."""
  embed = jnp.cumsum(not_mask, axis=axis)
  if normalize:
    last = jax.lax.slice_in_dim(embed, embed.shape[axis] - 1, embed.shape[axis], axis=axis)
    embed = embed / (last + 1e-6) * scale
  return embed


def _sincos(embed: jax.Array, num_feats: int, temperature: float) -> jax.Array:
  """``[...] -> [..., num_feats]`` interleaved sin/cos of ``embed / temperature^(2⌊i/2⌋/F)``."""
  if num_feats % 2:
    raise ValueError(f"num_pos_feats must be even, got {num_feats}")
  i = jnp.arange(num_feats, dtype=jnp.float32)
  dim_t = jnp.float32(temperature) ** (2 * (i // 2) / num_feats)
  pos = embed[..., None] / dim_t
  # Even channels are sin and odd channels cos, each pair sharing a frequency.
  return jnp.stack([jnp.sin(pos[..., 0::2]), jnp.cos(pos[..., 1::2])], axis=-1).reshape(
      *embed.shape, num_feats)


def _check_scale(normalize: bool, scale: float | None) -> float:
  if scale is not None and not normalize:
    raise ValueError("normalize should be True if scale is passed")
  return 2 * math.pi if scale is None else float(scale)


def sine_position_2d(mask_or_shape: MaskOrShape, num_pos_feats: int = 128,
                     temperature: float = 10000.0, normalize: bool = True,
                     scale: float | None = None, dtype: Any = jnp.float32) -> jax.Array:
  """2-D sine encoding of Mask2Former's ``PositionEmbeddingSine`` in channels-last layout.

  Args:
    mask_or_shape: ``[B, H, W]`` bool padding mask (True = padding), or the static shape
      ``(B, H, W)`` for an all-valid map.
    num_pos_feats: features per axis ``F`` (Mask2Former: ``hidden_dim // 2`` = 128).
    temperature: frequency base.
    normalize: normalise coordinates to ``(0, scale]`` (Mask2Former: True).
    scale: coordinate scale when normalising (default 2π); passing it without ``normalize``
      raises, like the official module.
    dtype: output dtype (computed in float32).

  Returns:
    ``[B, H, W, 2F]``: channels ``[0, F)`` encode y, ``[F, 2F)`` encode x.
  """
  scale = _check_scale(normalize, scale)
  not_mask = _not_mask(mask_or_shape, 3)
  y = _sincos(_embed_axis(not_mask, 1, normalize, scale), num_pos_feats, temperature)
  x = _sincos(_embed_axis(not_mask, 2, normalize, scale), num_pos_feats, temperature)
  return jnp.concatenate([y, x], axis=-1).astype(dtype)


def sine_position_3d(mask_or_shape: MaskOrShape, num_pos_feats: int = 128,
                     temperature: float = 10000.0, normalize: bool = True,
                     scale: float | None = None, dtype: Any = jnp.float32) -> jax.Array:
  """3-D sine encoding of Mask2Former-VIS's ``PositionEmbeddingSine3D``, channels-last.

  The spatial part is ``sine_position_2d`` of each frame's mask; the temporal part encodes the
  (normalised) frame index with ``2F`` channels and frequencies ``temperature^(2⌊i/2⌋ / 2F)`` and is
  **added** to the spatial code.

  Args:
    mask_or_shape: ``[B, T, H, W]`` bool padding mask (True = padding), or the static shape
      ``(B, T, H, W)`` for all-valid clips.
    num_pos_feats: spatial features per axis ``F`` (Mask2Former-VIS: 128).
    temperature: frequency base (shared by all three axes).
    normalize: normalise coordinates to ``(0, scale]`` (Mask2Former-VIS: True).
    scale: coordinate scale when normalising (default 2π).
    dtype: output dtype (computed in float32).

  Returns:
    ``[B, T, H, W, 2F]``.
  """
  scale = _check_scale(normalize, scale)
  not_mask = _not_mask(mask_or_shape, 4)
  z = _sincos(_embed_axis(not_mask, 1, normalize, scale), 2 * num_pos_feats, temperature)
  y = _sincos(_embed_axis(not_mask, 2, normalize, scale), num_pos_feats, temperature)
  x = _sincos(_embed_axis(not_mask, 3, normalize, scale), num_pos_feats, temperature)
  return (jnp.concatenate([y, x], axis=-1) + z).astype(dtype)
