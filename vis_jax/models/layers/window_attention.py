"""Attention kernels of VITA's object encoder and decoder (spec §3.3–§3.4).

Dense attention with an additive bias, an online-softmax attention over key chunks (memory
that does not grow with the number of keys' chunks), and the plain / shifted temporal window
layout of the object encoder with the official −1000 additive mask and end padding of T.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

# The official shifted-window mask adds this to blocked logits (it is not -inf).
SHIFT_MASK_VALUE = -1000.0
# Stands in for PyTorch's -inf of boolean masks: exp underflows to exactly 0 against any real
# logit, yet a row with no allowed key stays finite (uniform) instead of NaN.
KEY_BLOCKED = -1e30


# ---- attention kernels -----------------------------------------------------------------------


def dense_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None = None,
                    key_valid: jax.Array | None = None, dtype: Any = jnp.float32) -> jax.Array:
  """Scaled dot-product attention with an additive bias; softmax in float32.

  Args:
    q, k, v: ``[N, Lq, M, D]`` (q not yet scaled), ``[N, Lk, M, D]``, ``[N, Lk, M, D]``.
    bias: float ``[N, Lq, Lk]`` added to every head's logits (e.g. −1000 entries), or None.
    key_valid: bool ``[N, Lk]``; invalid keys get ``KEY_BLOCKED`` (PyTorch key padding).
    dtype: dtype of the probabilities·values product and the output.

  Returns:
    ``[N, Lq, M, D]``.
  """
  scale = jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  logits = jnp.einsum("nqmd,nkmd->nmqk", q * scale, k, preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias[:, None].astype(jnp.float32)
  if key_valid is not None:
    logits = jnp.where(key_valid[:, None, None, :], logits, KEY_BLOCKED)
  probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
  return jnp.einsum("nmqk,nkmd->nqmd", probs, v.astype(dtype))


def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                      key_valid: jax.Array | None = None, chunk: int = 1024,
                      dtype: Any = jnp.float32) -> jax.Array:
  """``dense_attention`` without a bias, evaluated over key chunks with an online softmax.

  Keeps a running maximum, normaliser and weighted value sum per (query, head) and folds in
  ``chunk`` keys per loop step (keys end-padded as invalid), so peak memory is ``O(Lq·chunk)``
  instead of ``O(Lq·Lk)``. Equals ``dense_attention`` up to float rounding.

  Args:
    q, k, v: ``[N, Lq, M, D]``, ``[N, Lk, M, D]``, ``[N, Lk, M, D]``.
    key_valid: bool ``[N, Lk]`` or None (all valid).
    chunk: keys per step (> 0).
    dtype: output dtype (accumulation is float32).

  Returns:
    ``[N, Lq, M, D]``.
  """
  if chunk <= 0:
    raise ValueError(f"chunk must be positive, got {chunk}")
  n, lq, m, d = q.shape
  lk = k.shape[1]
  n_chunks = -(-lk // chunk)
  pad = n_chunks * chunk - lk
  valid = jnp.ones((n, lk), bool) if key_valid is None else key_valid.astype(bool)
  if pad:
    k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
    valid = jnp.pad(valid, ((0, 0), (0, pad)))
  qs = q * jnp.asarray(d ** -0.5, q.dtype)

  def step(i, carry):
    run_max, denom, acc = carry
    start = i * chunk
    kc = jax.lax.dynamic_slice_in_dim(k, start, chunk, axis=1)
    vc = jax.lax.dynamic_slice_in_dim(v, start, chunk, axis=1)
    ok = jax.lax.dynamic_slice_in_dim(valid, start, chunk, axis=1)
    s = jnp.einsum("nqmd,nkmd->nmqk", qs, kc, preferred_element_type=jnp.float32)
    s = jnp.where(ok[:, None, None, :], s, KEY_BLOCKED)
    new_max = jnp.maximum(run_max, jnp.max(s, axis=-1))
    # Rescales what was accumulated under the old maximum (exactly 1 if it did not move).
    alpha = jnp.exp(run_max - new_max)
    p = jnp.exp(s - new_max[..., None])
    denom = denom * alpha + jnp.sum(p, axis=-1)
    acc = acc * alpha[..., None] + jnp.einsum("nmqk,nkmd->nmqd", p, vc.astype(jnp.float32))
    return new_max, denom, acc

  init = (jnp.full((n, m, lq), KEY_BLOCKED, jnp.float32), jnp.zeros((n, m, lq), jnp.float32),
          jnp.zeros((n, m, lq, d), jnp.float32))
  _, denom, acc = jax.lax.fori_loop(0, n_chunks, step, init)
  out = acc / denom[..., None]
  return jnp.transpose(out, (0, 2, 1, 3)).astype(dtype)


# ---- object-encoder windows ------------------------------------------------------------------


class WindowLayout(NamedTuple):
  """Where every frame sits in the (possibly shifted) windows of one encoder layer.

  Attributes:
    src: int32 ``[N, Tp]``: the frame at each window position (window ``p // W``).
    inv: int32 ``[N, Tp]``: the window position of each frame (inverse of ``src``).
    bias: float32 ``[N, Tp/W, W, W]``: additive bias per window between (query frame, key
      frame) window slots.
    shifted: whether ``src`` is a roll (False: identity, gathers are skipped).
  """
  src: jax.Array
  inv: jax.Array
  bias: jax.Array
  shifted: bool


def padded_num_frames(num_frames: int, window_size: int) -> int:
  """``ceil(T / W) · W`` (``T`` if ``W = 0``)."""
  if window_size <= 0:
    return num_frames
  return -(-num_frames // window_size) * window_size


def encoder_shift_schedule(num_layers: int, train: bool,
                           shift_in_training: bool = False) -> tuple[bool, ...]:
  """Per encoder layer, whether it uses shifted windows (official ``layer_idx % 2``)."""
  alternate = not train or shift_in_training
  return tuple(alternate and i % 2 == 1 for i in range(num_layers))


def window_layout(n_valid: jax.Array, num_frames: int, window_size: int,
                  shifted: bool) -> WindowLayout:
  """Window assignment and bias of every sample (official plain / shifted window rules).

  Args:
    n_valid: int ``[N]`` real frames per sample (≥ 1); frames ``≥ n_valid`` are padding. The
      official padded length of a sample is ``ceil(n_valid/W)·W``; the roll and the first/last
      window rules use it, so extra end padding up to ``num_frames`` changes nothing.
    num_frames: static padded length ``Tp``, a multiple of ``window_size``.
    window_size: ``W > 0``.
    shifted: shifted layer (roll by ``ceil(W/2)``, −1000 rules) or plain (key padding).

  Returns:
    ``WindowLayout``.
  """
  w, tp = window_size, num_frames
  if w <= 0 or tp % w:
    raise ValueError(f"num_frames {tp} must be a positive multiple of window_size {w}")
  nw = tp // w
  n = n_valid.astype(jnp.int32)[:, None]
  tp_n = jnp.maximum(-(-n // w) * w, w)
  pos = jnp.arange(tp, dtype=jnp.int32)[None, :]
  half = math.ceil(w / 2)
  if shifted:
    inside = pos < tp_n
    src = jnp.where(inside, (pos - half) % tp_n, pos)
    inv = jnp.where(inside, (pos + half) % tp_n, pos)
  else:
    src = inv = jnp.broadcast_to(pos, (n.shape[0], tp))
  pad = (src >= n).reshape(-1, nw, w)  # window slot holds a padding frame
  if shifted:
    k = jnp.arange(nw)[None, :]
    edge = (k == 0) | (k == tp_n // w - 1)
    blocked = pad[..., :, None] | (edge[..., None, None] & pad[..., None, :])
    wrapped = jnp.arange(w) < half  # slots of the first window that came from the video's end
    blocked = blocked | ((k == 0)[..., None, None] & (wrapped[:, None] != wrapped[None, :]))
    bias = jnp.where(blocked, SHIFT_MASK_VALUE, 0.0)
  else:
    bias = jnp.broadcast_to(jnp.where(pad[..., None, :], KEY_BLOCKED, 0.0), pad.shape + (w,))
  return WindowLayout(src, inv, bias.astype(jnp.float32), shifted)


_gather_frames = jax.vmap(lambda x, idx: x[idx])


def to_windows(x: jax.Array, layout: WindowLayout) -> jax.Array:
  """``[N, Tp, Qf, ...]`` → ``[N·Nw, W·Qf, ...]`` (window-major, then frame, then query)."""
  if layout.shifted:
    x = _gather_frames(x, layout.src)
  n, tp, qf = x.shape[:3]
  w = layout.bias.shape[-1]
  return x.reshape(n * (tp // w), w * qf, *x.shape[3:])


def from_windows(xw: jax.Array, layout: WindowLayout) -> jax.Array:
  """Inverse of ``to_windows``: ``[N·Nw, W·Qf, ...]`` → ``[N, Tp, Qf, ...]``."""
  n, tp = layout.src.shape
  w = layout.bias.shape[-1]
  x = xw.reshape(n, tp, xw.shape[1] // w, *xw.shape[2:])
  return _gather_frames(x, layout.inv) if layout.shifted else x


def expand_window_bias(bias: jax.Array, num_queries: int) -> jax.Array:
  """Frame-level ``[M, W, W]`` → token-level ``[M, W·Qf, W·Qf]`` (frame-major tokens)."""
  m, w, _ = bias.shape
  q = num_queries
  return jnp.broadcast_to(bias[:, :, None, :, None], (m, w, q, w, q)).reshape(m, w * q, w * q)


def windowed_attention(q: jax.Array, k: jax.Array, v: jax.Array, window_size: int,
                       shifted: bool, n_valid: jax.Array | None = None) -> jax.Array:
  """The object encoder's attention pattern on per-head tokens (no projections).

  Composes exactly the helpers the encoder uses (end padding, ``window_layout``,
  ``to_windows``, ``expand_window_bias``, ``dense_attention``, ``from_windows``).

  Args:
    q, k, v: ``[N, T, Qf, M, D]``.
    window_size: ``W``; 0 = global attention.
    shifted: shifted-window layer.
    n_valid: int ``[N]`` real frames per sample (default ``T``).

  Returns:
    ``[N, T, Qf, M, D]``; rows of padded frames follow the official (discarded) semantics.
  """
  n, t, qf = q.shape[:3]
  if n_valid is None:
    n_valid = jnp.full((n,), t, jnp.int32)
  if window_size == 0:  # global attention: one plain window over the clip
    window_size, shifted = t, False
  tp = padded_num_frames(t, window_size)
  pad = lambda a: jnp.pad(a, ((0, 0), (0, tp - t)) + ((0, 0),) * (a.ndim - 2))
  layout = window_layout(n_valid, tp, window_size, shifted)
  bias = expand_window_bias(layout.bias.reshape(-1, window_size, window_size), qf)
  out = dense_attention(*(to_windows(pad(a), layout) for a in (q, k, v)), bias=bias)
  return from_windows(out, layout)[:, :t]


# ---- layers ----------------------------------------------------------------------------------
