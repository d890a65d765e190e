"""The Mask2Former-VIS 3-D decoder vs a numpy re-derivation from the paper / official code.

The reference below is written from the formulas, not from our modules: memory of a level =
all frames' tokens in (t, y, x) order; key positions = 2-D sine (y block, x block, F = C/2
features each) + temporal sine with 2F features of the normalised frame index (paper eq. 3,
``PositionEmbeddingSine3D``); the 3-D attention mask = σ(bilinearly resized mask logits) ≥ 0.5
per frame, fully blocked rows unblocked (paper eqs. 1-2); masks = ``einsum(mask_embed,
mask_features)`` over ``T`` (eq. 4); post-norm cross-attention → self-attention → FFN. Every
parameter is randomised (no zero bias or unit scale hides a transposition).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from vis_jax.models import mask2former
from vis_jax.models.layers import position

B, T, C, HEADS, Q, K, LAYERS, FFN = 2, 3, 16, 2, 5, 3, 4, 32
LEVELS = ((2, 3), (4, 6), (8, 12))   # coarsest first
MASK_HW = (16, 24)


# ---- numpy reference -----------------------------------------------------------------------------


def np_sincos(coord: np.ndarray, width: int, temperature: float = 10000.0) -> np.ndarray:
  """``[...] -> [..., width]``: channel i = sin (even i) / cos (odd i) of
  coord / temperature^(2⌊i/2⌋/width)."""
  i = np.arange(width)
  freq = temperature ** (2 * (i // 2) / width)
  arg = coord[..., None] / freq
  return np.where(i % 2 == 0, np.sin(arg), np.cos(arg))


def np_position_3d(t: int, h: int, w: int, c: int) -> np.ndarray:
  """``[t, h, w, c]``: e_t ⊕ e_xy with normalised coordinates (k + 1) / (n + 1e-6) · 2π."""
  coord = lambda n: (np.arange(n) + 1) / (n + 1e-6) * 2 * math.pi  # noqa: E731
  f = c // 2
  ey = np_sincos(coord(h), f)[None, :, None, :].repeat(w, 2)
  ex = np_sincos(coord(w), f)[None, None, :, :].repeat(h, 1)
  et = np_sincos(coord(t), c)[:, None, None, :]
  return np.concatenate([ey, ex], -1) + et


def np_resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """``F.interpolate(bilinear, align_corners=False)`` on the last two axes."""

  def weights(n_in, n_out):
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
      src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
      i0 = min(int(src), n_in - 1)
      i1 = min(i0 + 1, n_in - 1)
      m[o, i0] += 1 - (src - i0)
      m[o, i1] += src - i0
    return m

  return np.einsum("oh,...hw,pw->...op", weights(x.shape[-2], size[0]), x,
                   weights(x.shape[-1], size[1]))


def np_attention_allowed(mask_logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """``[Q, T, H, W]`` logits → ``[Q, T·h·w]`` True = may attend (official ``< 0.5`` blocked)."""
  blocked = (1 / (1 + np.exp(-np_resize(mask_logits, size))) < 0.5).reshape(len(mask_logits), -1)
  blocked[blocked.all(-1)] = False
  return ~blocked


def np_layer_norm(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def np_dense(x, p):
  return x @ p["kernel"] + p["bias"]


def np_mha(q_in, k_in, v_in, p, allowed=None):
  """``nn.MultiheadAttention`` on ``[Lq, C]`` / ``[Lk, C]``; ``allowed [Lq, Lk]``."""
  d = C // HEADS
  q = np_dense(q_in, p["q_proj"]).reshape(len(q_in), HEADS, d)
  k = np_dense(k_in, p["k_proj"]).reshape(len(k_in), HEADS, d)
  v = np_dense(v_in, p["v_proj"]).reshape(len(v_in), HEADS, d)
  logits = np.einsum("qmd,kmd->mqk", q, k) / math.sqrt(d)
  if allowed is not None:
    logits = np.where(allowed[None], logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  out = np.einsum("mqk,kmd->qmd", probs, v).reshape(len(q_in), C)
  return np_dense(out, p["out_proj"])


def np_video_decoder(p, feats, mask_features):
  """One clip: ``feats`` per level ``[T, h, w, C]``, ``mask_features [T, H, W, C]`` →
  (class logits ``[L+1, Q, K+1]``, mask logits ``[L+1, Q, T, H, W]``, allowed masks used)."""
  t = mask_features.shape[0]
  memory, pos = [], []
  for level, x in enumerate(feats):
    h, w = x.shape[1:3]
    memory.append((x + p["level_embed"]["embedding"][level]).reshape(t * h * w, C))
    pos.append(np_position_3d(t, h, w, C).reshape(t * h * w, C))
  query_pos = p["query_embed"]["embedding"]
  out = p["query_feat_embed"]["embedding"]

  def heads(x, size):
    normed = np_layer_norm(x, p["decoder_norm"])
    cls = np_dense(normed, p["class_embed"])
    e = normed
    for j in range(3):
      e = np_dense(e, p["mask_embed"][f"layers_{j}"])
      e = np.maximum(e, 0) if j < 2 else e
    masks = np.einsum("qc,thwc->qthw", e, mask_features)
    return cls, masks, np_attention_allowed(masks, size)

  cls, masks, allowed = heads(out, LEVELS[0])
  all_cls, all_masks, all_allowed = [cls], [masks], [allowed]
  for i in range(LAYERS):
    level = i % 3
    ca = p[f"transformer_cross_attention_layers_{i}"]
    out = np_layer_norm(out + np_mha(out + query_pos, memory[level] + pos[level], memory[level],
                                     ca["multihead_attn"], allowed), ca["norm"])
    sa = p[f"transformer_self_attention_layers_{i}"]
    out = np_layer_norm(out + np_mha(out + query_pos, out + query_pos, out, sa["self_attn"]),
                        sa["norm"])
    ffn = p[f"transformer_ffn_layers_{i}"]
    hidden = np.maximum(np_dense(out, ffn["linear1"]), 0)
    out = np_layer_norm(out + np_dense(hidden, ffn["linear2"]), ffn["norm"])
    cls, masks, allowed = heads(out, LEVELS[(i + 1) % 3])
    all_cls.append(cls)
    all_masks.append(masks)
    all_allowed.append(allowed)
  return np.stack(all_cls), np.stack(all_masks), all_allowed


# ---- fixtures -----------------------------------------------------------------------------------


def _decoder():
  return mask2former.VideoMultiScaleMaskedTransformerDecoder(
      num_classes=K, hidden_dim=C, num_queries=Q, num_heads=HEADS, dim_feedforward=FFN,
      dec_layers=LAYERS, mask_dim=C)


def _inputs(t: int, seed: int):
  rng = np.random.default_rng(seed)
  feats = [rng.normal(size=(B, t, h, w, C)).astype(np.float32) for h, w in LEVELS]
  mask_features = rng.normal(size=(B, t, *MASK_HW, C)).astype(np.float32)
  return feats, mask_features


@pytest.fixture(scope="module")
def case():
  module = _decoder()
  feats, mask_features = _inputs(T, seed=0)
  params = module.init(jax.random.key(0), feats, mask_features)["params"]
  # Random values for every parameter (biases, norms and embeddings included).
  rng = np.random.default_rng(1)
  flat = {k: (np.asarray(v) + rng.normal(size=v.shape) * 0.3).astype(np.float32)
          for k, v in traverse_util.flatten_dict(params).items()}
  params = traverse_util.unflatten_dict(flat)
  apply = jax.jit(module.apply)
  out = apply({"params": params}, feats, mask_features)
  p64 = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)
  refs = [np_video_decoder(p64, [f[b].astype(np.float64) for f in feats],
                           mask_features[b].astype(np.float64)) for b in range(B)]
  return dict(params=params, apply=apply, feats=feats, mask_features=mask_features, out=out,
              refs=refs)


def _stacked(out):
  sets = [*out["aux_outputs"], out]
  return (np.stack([np.asarray(s["pred_logits"]) for s in sets], 1),
          np.stack([np.asarray(s["pred_masks"]) for s in sets], 1))


def _rel(a, b):
  return float(np.abs(np.asarray(a) - b).max() / max(np.abs(b).max(), 1e-12))


# ---- tests --------------------------------------------------------------------------------------


def test_every_prediction_set_matches_numpy(case):
  logits, masks = _stacked(case["out"])
  assert masks.shape == (B, LAYERS + 1, Q, T, *MASK_HW)
  for b, (ref_cls, ref_masks, _) in enumerate(case["refs"]):
    assert _rel(logits[b], ref_cls) < 1e-4, b
    assert _rel(masks[b], ref_masks) < 1e-4, b


def test_attention_masks_are_3d_and_exercised(case):
  """The masks the reference used block some keys of some rows and differ between frames, so
  the comparison above tested the 3-D masked attention, not plain attention."""
  allowed = [a for _, _, used in case["refs"] for a in used[:-1]]
  partial = [(~row).any() and row.any() for a in allowed for row in a]
  assert sum(partial) >= len(partial) // 4
  per_frame = [a.reshape(Q, T, -1) for a in allowed]
  assert any((a[:, 0] != a[:, 1]).any() for a in per_frame)
  # Our attention-mask function equals the reference on the reference's own logits.
  _, ref_masks, used = case["refs"][0]
  for i, size in enumerate([LEVELS[0]] + [LEVELS[(j + 1) % 3] for j in range(LAYERS)]):
    got = mask2former.attention_mask_from_logits(jnp.asarray(ref_masks[i][None], jnp.float32),
                                                 size)[0]
    np.testing.assert_array_equal(np.asarray(got), used[i])


def test_temporal_position_matches_numpy():
  got = np.asarray(position.sine_position_3d((1, 4, 3, 5), num_pos_feats=C // 2))[0]
  np.testing.assert_allclose(got, np_position_3d(4, 3, 5, C), atol=2e-5)
  # e_t is added on top of e_xy: the frame-to-frame difference is e_t(t1) − e_t(t0), the same
  # at every pixel.
  diff = got[1] - got[0]
  np.testing.assert_allclose(diff, np.broadcast_to(diff[0, 0], diff.shape), atol=1e-5)


def test_memory_is_time_major_and_temporal_code_matters(case):
  """Reversing the frames is not a symmetry: the temporal encoding tells frames apart."""
  feats = [f[:, ::-1].copy() for f in case["feats"]]
  mask_features = case["mask_features"][:, ::-1].copy()
  out = case["apply"]({"params": case["params"]}, feats, mask_features)
  flipped = np.asarray(out["pred_masks"])[:, :, ::-1]
  assert _rel(flipped, np.asarray(case["out"]["pred_masks"])) > 1e-3


def test_padded_frames_change_nothing(case):
  """Two extra garbage frames marked invalid: the real frames' predictions are unchanged (the
  temporal code is normalised over valid frames only, padded keys are never attended)."""
  extra_feats, extra_mask = _inputs(2, seed=5)
  feats = [np.concatenate([f, e * 10], 1) for f, e in zip(case["feats"], extra_feats,
                                                           strict=True)]
  mask_features = np.concatenate([case["mask_features"], extra_mask * 10], 1)
  frame_valid = np.arange(T + 2)[None].repeat(B, 0) < T
  out = case["apply"]({"params": case["params"]}, feats, mask_features, frame_valid)
  logits, masks = _stacked(out)
  for b, (ref_cls, ref_masks, _) in enumerate(case["refs"]):
    assert _rel(logits[b], ref_cls) < 1e-4
    assert _rel(masks[b][:, :, :T], ref_masks) < 1e-4
