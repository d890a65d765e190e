"""Mask pooling: features averaged under each query's soft mask (K-Net's kernel update).

Shared by the Mask2Former decoder (``decoder.mask_pooling``) and VITA (``vita.mask_pooling``):
a query's mask embedding gains a learned projection of the mask features it segments, read at
the 1/4 resolution the masks are predicted at. The sums are returned separately so that a video
of any length can be pooled a chunk of frames at a time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mask_pool_sums(mask_logits: jax.Array, features: jax.Array,
                   frame_valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """``(Σ σ(m)·F [B, Q, D], Σ σ(m) [B, Q])`` over the spatial (and time) positions.

  Args:
    mask_logits: ``[B, Q, *S]`` (``S = (H, W)`` or ``(T, H, W)``); no gradient flows through
      the weights (as through the masked-attention mask).
    features: ``[B, *S, D]``.
    frame_valid: optional ``[B, T]`` (``S = (T, H, W)``): padded frames weigh nothing.
  """
  weights = jax.nn.sigmoid(jax.lax.stop_gradient(mask_logits).astype(jnp.float32))
  if frame_valid is not None:
    weights = weights * frame_valid.astype(jnp.float32)[:, None, :, None, None]
  numerator = jnp.einsum("bq...,b...d->bqd", weights, features.astype(jnp.float32))
  return numerator, weights.sum(tuple(range(2, weights.ndim)))


def pooled_mean(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  """The pooled features ``numerator / (denominator + 1)`` (+1: an empty mask pools ~0)."""
  return numerator / (denominator[..., None] + 1.0)
