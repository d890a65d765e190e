"""Multi-head attention with PyTorch ``nn.MultiheadAttention`` semantics, batch-first.

The official code bases use ``nn.MultiheadAttention`` whose packed ``in_proj_weight [3C, C]`` holds
the q, k, v projections as row blocks; here they are three ``Dense`` layers (``q_proj``, ``k_proj``,
``v_proj``) plus ``out_proj`` — Hugging Face's layout — so both checkpoint styles map onto one
parameter tree (the converter splits the packed weight). Heads are contiguous ``C / M`` chunks of
the feature axis, as in PyTorch.

Masks use the Flax convention, **True = may attend** (PyTorch boolean masks mean the opposite).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# The official layers xavier-fill the packed [3C, C] in_proj_weight as ONE matrix, so each q/k/v
# block has bound sqrt(6 / 4C), i.e. variance_scaling(0.5, fan_avg) on its own [C, C] kernel.
packed_in_proj_init = nn.initializers.variance_scaling(0.5, "fan_avg", "uniform")


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          mask: jax.Array | None = None, dtype: Any = jnp.float32) -> jax.Array:
  """Scaled dot-product attention with the softmax in float32.

  Args:
    query: ``[B, Lq, M, D]`` (not yet scaled).
    key: ``[B, Lk, M, D]``.
    value: ``[B, Lk, M, D]``.
    mask: bool, broadcastable to ``[B, M, Lq, Lk]``, True = may attend; None = attend everywhere.
      A row with no allowed key gets uniform weights (PyTorch would give NaN); Mask2Former never
      produces one because it unblocks such rows first.
    dtype: dtype of the returned values and of the probability·value product.

  Returns:
    ``[B, Lq, M, D]``.
  """
  scale = query.shape[-1] ** -0.5
  logits = jnp.einsum("bqmd,bkmd->bmqk", query * jnp.asarray(scale, query.dtype), key,
                      preferred_element_type=jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
  return jnp.einsum("bmqk,bkmd->bqmd", probs, value.astype(dtype))


class MultiHeadAttention(nn.Module):
  """``nn.MultiheadAttention(C, M)`` (no dropout, kdim = vdim = C), batch-first.

  Attributes:
    num_heads: heads ``M``; the width ``C`` is taken from the query.
    dtype: compute dtype of the projections and of the attention output.
    param_dtype: parameter dtype.
  """
  num_heads: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array,
               mask: jax.Array | None = None) -> jax.Array:
    """Attends ``query`` to ``key``/``value``.

    Args:
      query: ``[B, Lq, C]`` (positional embedding already added by the caller).
      key: ``[B, Lk, C]`` (likewise).
      value: ``[B, Lk, C]``.
      mask: bool, broadcastable to ``[B, M, Lq, Lk]``, True = may attend.

    Returns:
      ``[B, Lq, C]`` in ``dtype``.
    """
    c = query.shape[-1]
    m = self.num_heads
    if c % m:
      raise ValueError(f"width {c} must be divisible by num_heads {m}")

    def proj(name, init):
      return nn.Dense(c, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                      kernel_init=init, bias_init=nn.initializers.zeros)

    def heads(x):
      return x.reshape(*x.shape[:-1], m, c // m)

    q = heads(proj("q_proj", packed_in_proj_init)(query))
    k = heads(proj("k_proj", packed_in_proj_init)(key))
    v = heads(proj("v_proj", packed_in_proj_init)(value))
    out = dot_product_attention(q, k, v, mask, self.dtype)
    out = out.reshape(*out.shape[:-2], c)
    return proj("out_proj", nn.initializers.xavier_uniform())(out)
