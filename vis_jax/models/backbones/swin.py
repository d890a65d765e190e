"""Swin Transformer backbone as Mask2Former's ``D2SwinTransformer`` (spec §1.1).

Behaviour of the official code that is kept:
  * patch embedding: the image is zero-padded (bottom/right) to a multiple of the patch size, a
    ``patch×patch`` stride-``patch`` conv, then LayerNorm (``patch_norm``);
  * every block pads its (LayerNorm-ed) input bottom/right to a multiple of the window with zeros
    — the padded tokens take part in attention, unmasked, exactly as the official code — and
    crops back afterwards;
  * odd blocks shift the windows by ``window // 2`` (cyclic ``roll``) and add the official
    region mask (−100 between tokens of different regions) computed on the padded size;
  * relative position bias from a ``[(2w−1)², heads]`` table; q scaled by ``head_dim^-0.5``;
  * patch merging pads odd H/W, concatenates (even-row/even-col, odd/even, even/odd, odd/odd)
    → LayerNorm → bias-free linear;
  * stochastic depth linearly spaced over all blocks from 0 to ``drop_path_rate``, on both the
    attention and the MLP branch, per sample; identity when ``train=False``;
  * outputs ``res2..res5`` = the stage outputs *before* patch merging, each through its own
    LayerNorm ``norm0..norm3``; MLP GELU is the exact (erf) one; LayerNorm ε = 1e-5.
Not implemented: absolute position embedding (``APE``, off in every Mask2Former config), qk_scale,
dropout/attention dropout (0 in every config).

Parameter paths mirror the official state-dict names (``layers.0.blocks.1.attn.qkv.weight`` ↔
``layers_0/blocks_1/attn/qkv/kernel``); see ``vis_jax/convert_backbones.py``.
Tensors are kept as ``[B, H, W, C]`` throughout, so every shape is static.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

LN_EPS = 1e-5
MASK_VALUE = -100.0  # the official shifted-window mask value (not -inf)

dense_init = nn.initializers.truncated_normal(stddev=0.02)


def frozen_patterns(frozen_stages: int, scope: str = "backbone") -> tuple[str, ...]:
  """Optimizer regexes for the official ``frozen_stages`` (−1 none, 0/1 patch_embed, k ≥ 2 also
  ``layers.0..k-2`` including their patch merging)."""
  names = (["patch_embed"] if frozen_stages >= 0 else []) + [
      f"layers_{i}" for i in range(max(frozen_stages - 1, 0))]
  return tuple(rf"(^|/){scope}/{name}/" for name in names)


def window_partition(x: jax.Array, window: int) -> jax.Array:
  """``[B, H, W, C]`` (H, W multiples of ``window``) → ``[B, nH·nW, window², C]``, row-major."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // window) * (w // window), window**2, c)


def window_reverse(windows: jax.Array, window: int, height: int, width: int) -> jax.Array:
  """Inverse of ``window_partition``: ``[B, nH·nW, window², C]`` → ``[B, height, width, C]``."""
  b, _, _, c = windows.shape
  x = windows.reshape(b, height // window, width // window, window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, height, width, c)


def relative_position_index(window: int) -> np.ndarray:
  """``[window², window²]`` int32 rows into the ``[(2w−1)², heads]`` bias table (official order:
  index = (Δrow + w − 1)·(2w − 1) + (Δcol + w − 1), Δ = query − key)."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
  coords = coords.reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
  return (rel[..., 0] * (2 * window - 1) + rel[..., 1]).astype(np.int32)


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
  """The official SW-MSA mask ``[nWindows, window², window²]`` (0 or −100) for a padded
  ``height × width`` map: 3×3 regions split at ``−window`` and ``−shift`` from the end of each
  axis; tokens of different regions in one window may not attend to each other."""
  def regions(n: int) -> np.ndarray:
    idx = np.arange(n)
    return (idx >= n - window).astype(np.int32) + (idx >= n - shift).astype(np.int32)

  labels = regions(height)[:, None] * 3 + regions(width)[None, :]
  labels = labels.reshape(height // window, window, width // window, window)
  labels = labels.transpose(0, 2, 1, 3).reshape(-1, window * window)
  different = labels[:, None, :] != labels[:, :, None]
  return np.where(different, MASK_VALUE, 0.0).astype(np.float32)


def _layer_norm(dtype: Dtype, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, param_dtype=jnp.float32, name=name)


def _dense(features: int, dtype: Dtype, name: str, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=dense_init, name=name)


class WindowAttention(nn.Module):
  """Window multi-head self-attention with relative position bias (W-MSA / SW-MSA)."""

  dim: int
  num_heads: int
  window_size: int
  qkv_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: np.ndarray | None) -> jax.Array:
    """Attention inside each window.

    Args:
      x: ``[B, nW, N, C]`` windows, ``N = window²``.
      mask: ``[nW, N, N]`` additive shifted-window mask, or None.

    Returns:
      ``[B, nW, N, C]`` in ``dtype``.
    """
    b, nw, n, c = x.shape
    heads = self.num_heads
    head_dim = c // heads
    w = self.window_size
    table = self.param("relative_position_bias_table", dense_init,
                       ((2 * w - 1) ** 2, heads), jnp.float32)
    qkv = _dense(3 * c, self.dtype, "qkv", self.qkv_bias)(x)
    # The official qkv output is ordered (q|k|v, head, head_dim).
    qkv = qkv.reshape(b, nw, n, 3, heads, head_dim)
    q = qkv[..., 0, :, :] * jnp.asarray(head_dim**-0.5, self.dtype)
    k, v = qkv[..., 1, :, :], qkv[..., 2, :, :]
    logits = jnp.einsum("bwqhd,bwkhd->bwhqk", q, k, preferred_element_type=jnp.float32)
    bias = table[relative_position_index(w).reshape(-1)].reshape(n, n, heads)
    logits = logits + bias.transpose(2, 0, 1)
    if mask is not None:
      logits = logits + jnp.asarray(mask)[None, :, None]
    # Softmax in fp32 so bf16 compute does not lose the −100 mask / small logits.
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bwhqk,bwkhd->bwqhd", probs, v).reshape(b, nw, n, c)
    return _dense(c, self.dtype, "proj")(out)


class Mlp(nn.Module):
  """``fc1 → GELU (exact) → fc2``."""

  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = _dense(self.hidden, self.dtype, "fc1")(x)
    y = nn.gelu(y, approximate=False)
    return _dense(x.shape[-1], self.dtype, "fc2")(y)


class SwinBlock(nn.Module):
  """Pre-norm (S)W-MSA + MLP block with stochastic depth; ``[B, H, W, C]`` → same."""

  num_heads: int
  window_size: int
  shift_size: int = 0
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    b, h, w, c = x.shape
    win, shift = self.window_size, self.shift_size
    y = _layer_norm(self.dtype, "norm1")(x)
    pad_b, pad_r = (-h) % win, (-w) % win
    y = jnp.pad(y, ((0, 0), (0, pad_b), (0, pad_r), (0, 0)))
    hp, wp = h + pad_b, w + pad_r
    mask = None
    if shift > 0:
      y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
      mask = shifted_window_mask(hp, wp, win, shift)
    y = WindowAttention(c, self.num_heads, win, self.qkv_bias, dtype=self.dtype,
                        name="attn")(window_partition(y, win), mask)
    y = window_reverse(y, win, hp, wp)
    if shift > 0:
      y = jnp.roll(y, (shift, shift), axis=(1, 2))
    y = y[:, :h, :w]
    # Stochastic depth: one Bernoulli per sample (mask broadcast over H, W, C), scaled by 1/keep.
    drop_attn = nn.Dropout(self.drop_path, broadcast_dims=(1, 2, 3), name="drop_path_attn")
    drop_mlp = nn.Dropout(self.drop_path, broadcast_dims=(1, 2, 3), name="drop_path_mlp")
    x = x.astype(self.dtype) + drop_attn(y, deterministic=not train)
    y = Mlp(int(c * self.mlp_ratio), dtype=self.dtype, name="mlp")(
        _layer_norm(self.dtype, "norm2")(x))
    return x + drop_mlp(y, deterministic=not train)


class PatchMerging(nn.Module):
  """2×2 neighbourhood concat → LayerNorm → linear: ``[B, H, W, C]`` → ``[B, ⌈H/2⌉, ⌈W/2⌉, 2C]``."""

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                        axis=-1)
    x = _layer_norm(self.dtype, "norm")(x)
    return _dense(2 * c, self.dtype, "reduction", use_bias=False)(x)


class PatchEmbed(nn.Module):
  """Pad to a multiple of ``patch_size``, conv ``patch×patch`` / ``patch``, LayerNorm."""

  embed_dim: int
  patch_size: int = 4
  patch_norm: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """``[B, H, W, 3]`` → ``[B, ⌈H/p⌉, ⌈W/p⌉, embed_dim]``."""
    p = self.patch_size
    _, h, w, _ = images.shape
    x = jnp.pad(images, ((0, 0), (0, (-h) % p), (0, (-w) % p), (0, 0)))
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                param_dtype=jnp.float32, name="proj")(x)
    if self.patch_norm:
      x = _layer_norm(self.dtype, "norm")(x)
    return x


class SwinStage(nn.Module):
  """``depth`` blocks (odd ones shifted) + optional patch merging (official ``BasicLayer``)."""

  depth: int
  num_heads: int
  window_size: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop_path: Sequence[float] = ()
  downsample: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """``[B, H, W, C]`` → (stage output ``[B, H, W, C]``, next input ``[B, ⌈H/2⌉, ⌈W/2⌉, 2C]``
    or the stage output again for the last stage)."""
    for i in range(self.depth):
      x = SwinBlock(self.num_heads, self.window_size,
                    shift_size=0 if i % 2 == 0 else self.window_size // 2,
                    mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias,
                    drop_path=float(self.drop_path[i]) if self.drop_path else 0.0,
                    dtype=self.dtype, name=f"blocks_{i}")(x, train)
    if not self.downsample:
      return x, x
    return x, PatchMerging(dtype=self.dtype, name="downsample")(x)


class SwinTransformer(nn.Module):
  """``D2SwinTransformer``: images → ``{"res2".."res5"}`` with channels C, 2C, 4C, 8C.

  Attributes:
    embed_dim: C (96 T/S, 128 B, 192 L).
    depths: blocks per stage ((2,2,6,2) T, (2,2,18,2) S/B/L).
    num_heads: heads per stage ((3,6,12,24) T/S, (4,8,16,32) B, (6,12,24,48) L).
    window_size: 7 (224-pretrained) or 12 (384-pretrained B/L).
    patch_size, mlp_ratio, qkv_bias, patch_norm: official defaults 4, 4.0, True, True.
    drop_path_rate: stochastic depth at the last block (0.3 in Mask2Former Swin configs).
    frozen_stages: official semantics (−1 = nothing frozen, the Mask2Former setting); frozen
      parts get ``stop_gradient``; pair with ``frozen_patterns`` for the optimizer.
    dtype: compute dtype (params float32; attention softmax always float32).
  """

  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window_size: int = 7
  patch_size: int = 4
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  patch_norm: bool = True
  drop_path_rate: float = 0.3
  frozen_stages: int = -1
  dtype: Dtype = jnp.float32

  @property
  def feature_channels(self) -> dict[str, int]:
    """Channels of ``res2..res5``."""
    return {f"res{i + 2}": self.embed_dim * 2**i for i in range(len(self.depths))}

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """Backbone features.

    Args:
      images: ``[B, H, W, 3]`` normalised images.
      train: enables stochastic depth (needs a ``"dropout"`` rng).

    Returns:
      ``{"res2": [B, H/4, W/4, C], "res3": [B, H/8, W/8, 2C], "res4": [.., 4C],
      "res5": [B, H/32, W/32, 8C]}`` (sizes rounded up) in ``dtype``.
    """
    if len(self.depths) != len(self.num_heads):
      raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} differ in length")
    x = PatchEmbed(self.embed_dim, self.patch_size, self.patch_norm, dtype=self.dtype,
                   name="patch_embed")(images.astype(self.dtype))
    if self.frozen_stages >= 0:
      x = jax.lax.stop_gradient(x)
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths))
    start = 0
    features = {}
    n_stages = len(self.depths)
    for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads, strict=True)):
      out, x = SwinStage(depth, heads, self.window_size, self.mlp_ratio, self.qkv_bias,
                         drop_path=tuple(float(r) for r in rates[start:start + depth]),
                         downsample=i < n_stages - 1, dtype=self.dtype,
                         name=f"layers_{i}")(x, train)
      start += depth
      if self.frozen_stages >= i + 2:
        out, x = jax.lax.stop_gradient(out), jax.lax.stop_gradient(x)
      features[f"res{i + 2}"] = _layer_norm(self.dtype, f"norm{i}")(out)
    return features
