"""Tests of the VITA module, its converter and its losses against independent references.

References: dense numpy attention with block masks built here from frame-window membership;
a PyTorch re-implementation (written here from the official formulas: sequence-first tensors,
``torch.roll`` windows, boolean key padding / −1000 float masks, ``nn.MultiheadAttention``)
fed with a state dict carrying the official ``vita_module.*`` names; numpy / torch
re-derivations of the official clip-level and similarity losses.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.peak_prior_reference import numpy_peak_prior, numpy_vote_prior
from vis_jax.convert_vita import vita_params_from_torch
from vis_jax.losses import criterion, vita_losses
from vis_jax.models import vita

C, HEADS, FFN, QF, NV, K, CONV, MASK_DIM = 32, 2, 48, 4, 5, 3, 24, 16
ENC, DEC, W = 3, 2, 3


def small_cfg(**kw):
  base = dict(hidden_dim=C, num_heads=HEADS, dim_feedforward=FFN, enc_layers=ENC,
              dec_layers=DEC, enc_window_size=W, num_object_queries=NV, mask_dim=MASK_DIM)
  return vita.default_config(**{**base, **kw})


# ---- independent references ------------------------------------------------------------------


def window_bias_reference(t: int, w: int, shifted: bool, n: int | None = None) -> np.ndarray:
  """``[Tp, Tp]`` additive frame bias from window membership (official rules restated).

  Plain windows are ``[k·W, (k+1)·W)``. Shifted windows (shift ``h = ceil(W/2)`` over the
  clip's padded length ``P = ceil(n/W)·W``) are ``[k·W − h, (k+1)·W − h)`` for ``k ≥ 1`` and,
  for ``k = 0``, the last ``h`` frames of ``P`` together with the first ``W − h`` frames.
  """
  n = t if n is None else n
  tp = -(-t // w) * w
  p = -(-n // w) * w
  h = -(-w // 2)
  pad = np.arange(tp) >= n
  if shifted:
    win = np.array([0 if f >= p - h and f < p else (f + h) // w if f < p else 10**6 + f // w
                    for f in range(tp)])
  else:
    win = np.arange(tp) // w
  last = p // w - 1  # the clip's last (shifted) window
  bias = np.full((tp, tp), -np.inf)
  for i in range(tp):
    for j in range(tp):
      if win[i] != win[j]:
        continue
      if not shifted:
        bias[i, j] = -np.inf if pad[j] else 0.0
        continue
      k = win[i]
      edge = k in (0, last) or k >= 10**6
      wrapped_i, wrapped_j = p - h <= i < p, p - h <= j < p
      blocked = pad[i] or (edge and pad[j]) or (k == 0 and wrapped_i != wrapped_j)
      bias[i, j] = -1000.0 if blocked else 0.0
  return bias


def dense_reference(q, k, v, frame_bias):
  """numpy float64 attention over frame-major tokens with a frame-level bias."""
  n, t, qf, m, d = q.shape
  bias = np.repeat(np.repeat(frame_bias, qf, 0), qf, 1)
  qt, kt, vt = (np.asarray(a, np.float64).reshape(n, t * qf, m, d) for a in (q, k, v))
  logits = np.einsum("nqmd,nkmd->nmqk", qt / math.sqrt(d), kt) + bias
  with np.errstate(invalid="ignore"):  # rows without any allowed key become NaN (never compared)
    logits -= logits.max(-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(-1, keepdims=True)
  return np.einsum("nmqk,nkmd->nqmd", probs, vt).reshape(n, t, qf, m, d)


def official_state_dict(cfg, seed: int = 0) -> dict[str, np.ndarray]:
  """Random weights under the official ``vita_module.*`` names and shapes (spec §7.1)."""
  rng = np.random.default_rng(seed)
  c, f, nv, dm = cfg.hidden_dim, cfg.dim_feedforward, cfg.num_object_queries, cfg.mask_dim
  shapes = {}

  def linear(name, out_dim, in_dim):
    shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (out_dim, in_dim), (out_dim,)

  def norm(name):
    shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (c,)

  def mha(name):
    shapes[f"{name}.in_proj_weight"], shapes[f"{name}.in_proj_bias"] = (3 * c, c), (3 * c,)
    linear(f"{name}.out_proj", c, c)

  linear("input_proj_dec", c, c)
  for i in range(cfg.enc_layers):
    mha(f"enc_self_attn.{i}.self_attn")
    norm(f"enc_self_attn.{i}.norm")
    linear(f"enc_ffn.{i}.linear1", f, c)
    linear(f"enc_ffn.{i}.linear2", c, f)
    norm(f"enc_ffn.{i}.norm")
  for i in range(cfg.dec_layers):
    mha(f"transformer_self_attention_layers.{i}.self_attn")
    norm(f"transformer_self_attention_layers.{i}.norm")
    mha(f"transformer_cross_attention_layers.{i}.multihead_attn")
    norm(f"transformer_cross_attention_layers.{i}.norm")
    linear(f"transformer_ffn_layers.{i}.linear1", f, c)
    linear(f"transformer_ffn_layers.{i}.linear2", c, f)
    norm(f"transformer_ffn_layers.{i}.norm")
  shapes["vita_mask_features.weight"], shapes["vita_mask_features.bias"] = (dm, CONV, 1, 1), (dm,)
  norm("decoder_norm")
  shapes["query_feat.weight"] = shapes["query_embed.weight"] = (nv, c)
  shapes["fq_pos.weight"] = (QF, c)
  linear("class_embed", K + 1, c)
  linear("mask_embed.layers.0", c, c)
  linear("mask_embed.layers.1", c, c)
  linear("mask_embed.layers.2", dm, c)
  linear("sim_embed_frame", c, c)
  linear("sim_embed_clip", c, c)
  sd = {}
  for name, shape in shapes.items():
    scale = 0.5 if name.endswith(("embed.weight", "feat.weight", "fq_pos.weight")) else 0.2
    value = rng.normal(0.0, scale, shape)
    if name.endswith("norm.weight"):
      value = 1.0 + 0.1 * rng.normal(size=shape)
    sd["vita_module." + name] = value.astype(np.float32)
  return sd


class TorchVITA:
  """The official VITA forward re-written in PyTorch (sequence-first, as the official code)."""

  def __init__(self, sd, cfg):
    self.p = {k[len("vita_module."):]: torch.from_numpy(v) for k, v in sd.items()
              if k.startswith("vita_module.")}
    self.cfg = cfg
    self._mha = {}

  def lin(self, x, name):
    return F.linear(x, self.p[f"{name}.weight"], self.p[f"{name}.bias"])

  def ln(self, x, name):
    return F.layer_norm(x, (x.shape[-1],), self.p[f"{name}.weight"], self.p[f"{name}.bias"], 1e-5)

  def mha(self, name, q, k, v, **masks):
    if name not in self._mha:
      mod = torch.nn.MultiheadAttention(self.cfg.hidden_dim, self.cfg.num_heads).eval()
      mod.load_state_dict({key: self.p[f"{name}.{key}"] for key in
                           ("in_proj_weight", "in_proj_bias", "out_proj.weight",
                            "out_proj.bias")})
      self._mha[name] = mod
    return self._mha[name](q, k, v, need_weights=False, **masks)[0]

  def ffn(self, x, name):
    return self.ln(x + self.lin(F.relu(self.lin(x, f"{name}.linear1")), f"{name}.linear2"),
                   f"{name}.norm")

  @torch.no_grad()
  def __call__(self, frame_queries, pixel, train):
    cfg, heads = self.cfg, self.cfg.num_heads
    fq = torch.from_numpy(np.array(frame_queries))
    if not train:
      fq = fq[-1:]
    n_l, b, t, qf, c = fq.shape
    lb, w = n_l * b, cfg.enc_window_size
    x = self.lin(fq.reshape(lb, t, qf, c).permute(1, 2, 0, 3), "input_proj_dec")  # T,Qf,LB,C
    tp, h = -(-t // w) * w, math.ceil(w / 2)
    nw = tp // w
    x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, tp - t))
    is_pad = torch.zeros(lb, tp, dtype=torch.bool)
    is_pad[:, t:] = True
    for i in range(cfg.enc_layers):
      shifted = (not train) and i % 2 == 1  # official: plain if training or layer_idx even
      pad_now = torch.roll(is_pad, h, 1) if shifted else is_pad
      if shifted:
        x = torch.roll(x, h, 0)
      xw = x.reshape(nw, w, qf, lb, c).permute(1, 2, 3, 0, 4).reshape(w * qf, lb * nw, c)
      name = f"enc_self_attn.{i}"
      if shifted:
        frames = pad_now.reshape(lb, nw, w)
        block = frames[..., :, None].expand(lb, nw, w, w).clone()
        block[:, 0] |= frames[:, 0][:, None, :]
        block[:, -1] |= frames[:, -1][:, None, :]
        block[:, 0, :h, h:] = True
        block[:, 0, h:, :h] = True
        tok = block.repeat_interleave(qf, 2).repeat_interleave(qf, 3).reshape(
            lb * nw, w * qf, w * qf)
        mask = (tok.float() * -1000.0).repeat_interleave(heads, 0)
        xw = self.ln(xw + self.mha(f"{name}.self_attn", xw, xw, xw, attn_mask=mask),
                     f"{name}.norm")
      else:
        kpm = pad_now.reshape(lb * nw, w).repeat_interleave(qf, 1)
        xw = self.ln(xw + self.mha(f"{name}.self_attn", xw, xw, xw, key_padding_mask=kpm),
                     f"{name}.norm")
      xw = self.ffn(xw, f"enc_ffn.{i}")
      x = xw.reshape(w, qf, lb, nw, c).permute(3, 0, 1, 2, 4).reshape(tp, qf, lb, c)
      if shifted:
        x = torch.roll(x, -h, 0)
    mem = x[:t].reshape(t * qf, lb, c)
    out = {"pred_fq_embed": self.lin(mem, "sim_embed_frame").transpose(0, 1).reshape(
        n_l, b, t, qf, c)}
    pos = self.p["fq_pos.weight"][None].repeat(t, 1, 1).reshape(t * qf, 1, c)
    qpos = self.p["query_embed.weight"][:, None]
    tgt = self.p["query_feat.weight"][:, None].repeat(1, lb, 1)
    mf = F.conv2d(torch.from_numpy(np.array(pixel)).flatten(0, 1).permute(0, 3, 1, 2),
                  self.p["vita_mask_features.weight"], self.p["vita_mask_features.bias"])
    mf = mf.reshape(b, t, *mf.shape[1:])
    layers = []
    for i in range(cfg.dec_layers):
      cross = f"transformer_cross_attention_layers.{i}"
      tgt = self.ln(tgt + self.mha(f"{cross}.multihead_attn", tgt + qpos, mem + pos, mem),
                    f"{cross}.norm")
      selfa = f"transformer_self_attention_layers.{i}"
      tgt = self.ln(tgt + self.mha(f"{selfa}.self_attn", tgt + qpos, tgt + qpos, tgt),
                    f"{selfa}.norm")
      tgt = self.ffn(tgt, f"transformer_ffn_layers.{i}")
      if train or i == cfg.dec_layers - 1:
        normed = self.ln(tgt, "decoder_norm").transpose(0, 1).reshape(n_l, b, -1, c)
        emb = normed
        for j in range(3):
          emb = self.lin(emb, f"mask_embed.layers.{j}")
          emb = F.relu(emb) if j < 2 else emb
        layers.append({"pred_logits": self.lin(normed, "class_embed"), "pred_mask_embed": emb,
                       "pred_cq_embed": self.lin(normed, "sim_embed_clip"),
                       "pred_masks": torch.einsum("lbqc,btchw->lbqthw", emb, mf)})
    out.update(layers[-1])
    out["aux_outputs"] = layers[:-1]
    return jax.tree.map(lambda a: a.numpy(), out)


# ---- attention kernels and windows -----------------------------------------------------------


# One compilation per (window, shift) case instead of op-by-op dispatch.
windowed_attention = jax.jit(vita.windowed_attention, static_argnums=(3, 4))


def _qkv(seed, n, t, scale=1.0):
  rng = np.random.default_rng(seed)
  return [(scale * rng.normal(size=(n, t, QF, HEADS, 8))).astype(np.float32) for _ in range(3)]


@pytest.mark.parametrize("t,w,shifted,n_valid", [
    (7, 3, False, None),   # end padding 2
    (7, 3, True, None),
    (8, 3, True, None),    # a real frame wraps to window 0, one padded frame
    (6, 5, True, None),    # pad 4 > ceil(W/2) = 3: padding stays at the end too
    (5, 6, True, None),    # official training shape: one window, halves split
    (12, 4, True, None),   # no padding, 3 windows
    (12, 3, True, 7),      # bucketed: 5 extra (non-zero) frames behave as padding
    (12, 3, False, 7),
    (15, 5, True, 6),      # bucketed, the clip's last shifted window holds a padded frame
])
def test_windowed_attention_equals_block_mask(t, w, shifted, n_valid):
  q, k, v = _qkv(0, 2, t)
  n_arr = None if n_valid is None else jnp.array([n_valid, t])
  got = np.asarray(windowed_attention(q, k, v, w, shifted, n_arr))
  tp = -(-t // w) * w
  pad = lambda a: np.pad(np.asarray(a), ((0, 0), (0, tp - t), (0, 0), (0, 0), (0, 0)))
  for i, n in enumerate([n_valid or t, t]):
    ref = dense_reference(*(pad(a)[i:i + 1] for a in (q, k, v)),
                          window_bias_reference(t, w, shifted, n))[0, :t]
    rows = min(t, -(-n // w) * w)  # frames beyond the clip's own padding do not exist officially
    np.testing.assert_allclose(got[i, :rows], ref[:rows], atol=2e-5, rtol=1e-5)


def test_shifted_mask_is_additive_minus_1000():
  # One window of 4 frames (T = 3, W = 4, shift 2): frame 3 is padding, wrapped with frame 2
  # into the first half; frames 0, 1 form the other half. A key of frame 0 that is blocked for
  # frame-2 queries (other half) gets a logit of +1500: with −1000 added it still dominates,
  # with −inf it would vanish.
  t, w = 3, 4
  q, k, v = _qkv(1, 1, t, 0.1)
  q[0, 2, :, :, :] = 10.0
  k[0, 0, 0, :, :] = 1500.0 / (10.0 * 8) * math.sqrt(8)
  got = np.asarray(windowed_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), w, True))
  pad = lambda a: np.pad(a, ((0, 0), (0, 1), (0, 0), (0, 0), (0, 0)))
  ref = dense_reference(pad(q), pad(k), pad(v), window_bias_reference(t, w, True))[:, :t]
  np.testing.assert_allclose(got, ref, atol=1e-4)
  minus_inf = window_bias_reference(t, w, True)
  minus_inf[minus_inf == -1000.0] = -np.inf
  hard = dense_reference(pad(q), pad(k), pad(v), minus_inf)[:, :t]
  assert np.abs(got[0, 2] - hard[0, 2]).max() > 0.1  # the −1000 leak is real and reproduced
  np.testing.assert_allclose(got[0, 2], np.broadcast_to(v[0, 0, 0], got[0, 2].shape), atol=1e-4)


def test_large_window_and_zero_window_are_global():
  q, k, v = _qkv(2, 2, 5)
  glob = dense_reference(q, k, v, np.zeros((5, 5)))
  for w in (0, 5, 8):
    got = windowed_attention(q, k, v, w, False)
    np.testing.assert_allclose(np.asarray(got), glob, atol=2e-5, rtol=1e-5)


def test_chunked_attention_equals_dense():
  rng = np.random.default_rng(3)
  q = rng.normal(size=(2, 6, HEADS, 8)).astype(np.float32)
  k = 2.0 * rng.normal(size=(2, 37, HEADS, 8)).astype(np.float32)
  v = rng.normal(size=(2, 37, HEADS, 8)).astype(np.float32)
  valid = rng.random((2, 37)) > 0.3
  chunked = jax.jit(vita.chunked_attention, static_argnums=(4,))
  for kv, chunk in ((None, 5), (valid, 5), (valid, 64)):  # 37 keys: ragged and single chunk
    ref = vita.dense_attention(q, k, v, key_valid=kv)
    got = chunked(q, k, v, kv, chunk)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=1e-5)


def test_shift_schedule_matches_official_condition():
  for train in (False, True):
    for extra in (False, True):
      got = vita.encoder_shift_schedule(6, train, extra)
      # official: `if self.training or layer_idx % 2 == 0: window else shifted window`
      want = tuple(not ((train and not extra) or i % 2 == 0) for i in range(6))
      assert got == want
  assert vita.encoder_shift_schedule(6, False) == (False, True) * 3


# ---- module vs PyTorch re-implementation, converter ------------------------------------------


@pytest.fixture(scope="module")
def model():
  cfg = small_cfg()
  module = vita.VITAModule(cfg, num_classes=K, num_frame_queries=QF)
  fq = jax.random.normal(jax.random.key(4), (3, 2, 5, QF, C))
  pix = jax.random.normal(jax.random.key(5), (2, 5, 6, 7, CONV))
  template = jax.jit(lambda r: module.init(r, fq, pix, train=True))(jax.random.key(6))
  sd = official_state_dict(cfg)
  sd["vita_criterion.empty_weight"] = np.ones(K + 1, np.float32)
  sd["sem_seg_head.predictor.query_feat.weight"] = np.zeros((QF, C), np.float32)
  params, report = vita_params_from_torch(sd, cfg, template=template)
  return dict(cfg=cfg, module=module, template=template, sd=sd, params={"params": params},
              report=report, torch=TorchVITA(sd, cfg))


def _compare(ours, ref, atol=2e-4):
  layer_keys = ("pred_logits", "pred_mask_embed", "pred_cq_embed", "pred_masks")
  pairs = [(ours, ref)] + list(zip(ours["aux_outputs"], ref["aux_outputs"], strict=True))
  for o, r in pairs:
    for key in layer_keys:
      np.testing.assert_allclose(np.asarray(o[key]), r[key], atol=atol, rtol=1e-3, err_msg=key)
  if "pred_fq_embed" in ours:  # training only
    np.testing.assert_allclose(np.asarray(ours["pred_fq_embed"]), ref["pred_fq_embed"],
                               atol=atol, rtol=1e-3)


def test_converter_maps_every_official_key(model):
  report = model["report"]
  assert report == {"missing": [], "unexpected": [], "shape_mismatch": [],
                    "template_missing": []}
  flat = lambda tree: {jax.tree_util.keystr(p): np.shape(x)
                       for p, x in jax.tree_util.tree_leaves_with_path(tree)}
  assert flat(model["params"]) == flat(model["template"])
  sd = dict(model["sd"])
  del sd["vita_module.fq_pos.weight"]
  sd["vita_module.enc_self_attn.9.norm.weight"] = np.ones(C, np.float32)
  _, bad = vita_params_from_torch(sd, model["cfg"], template=model["template"])
  assert bad["missing"] == ["vita_module.fq_pos.weight"]
  assert bad["unexpected"] == ["vita_module.enc_self_attn.9.norm.weight"]
  assert bad["template_missing"] == ["fq_pos_embed/embedding"]


def test_no_decay_regex_matches_the_embeddings(model):
  import re
  pattern = re.compile(r"(^|/)[^/]*(embed|Embed)[^/]*/embedding$")
  paths = ["/".join(str(getattr(k, "key", k)) for k in p)
           for p, _ in jax.tree_util.tree_leaves_with_path(model["template"]["params"])]
  assert sorted(p for p in paths if pattern.search(p)) == [
      "fq_pos_embed/embedding", "query_embed/embedding", "query_feat_embed/embedding"]


def test_train_forward_matches_torch_reference(model):
  fq = np.asarray(jax.random.normal(jax.random.key(7), (3, 2, 5, QF, C)))
  pix = np.asarray(jax.random.normal(jax.random.key(8), (2, 5, 6, 7, CONV)))
  out = jax.jit(lambda p, a, b: model["module"].apply(p, a, b, train=True))(
      model["params"], fq, pix)
  # L = 3 frame layers stacked as independent samples, D = 2 decoder layers supervised.
  assert out["pred_logits"].shape == (3, 2, NV, K + 1)
  assert out["pred_masks"].shape == (3, 2, NV, 5, 6, 7)
  assert out["pred_fq_embed"].shape == (3, 2, 5, QF, C)
  assert out["pred_cq_embed"].shape == (3, 2, NV, C)
  assert len(out["aux_outputs"]) == DEC - 1
  _compare(out, model["torch"](fq, pix, train=True))


@pytest.fixture(scope="module")
def inference(model):
  fq = np.asarray(jax.random.normal(jax.random.key(9), (3, 1, 8, QF, C)))
  pix = np.asarray(jax.random.normal(jax.random.key(10), (1, 8, 6, 7, CONV)))
  out = jax.jit(lambda p, a, b: model["module"].apply(p, a, b, train=False))(
      model["params"], fq, pix)
  return fq, pix, out, model["torch"](fq, pix, train=False)


def test_inference_forward_matches_torch_reference(inference):
  _, _, out, ref = inference
  assert out["pred_logits"].shape == (1, 1, NV, K + 1)  # only the last frame layer is used
  assert out["pred_masks"].shape == (1, 1, NV, 8, 6, 7)
  assert out["aux_outputs"] == [] and "pred_fq_embed" not in out
  _compare(out, ref)


def test_chunked_and_bucketed_inference_is_unchanged(model, inference):
  fq, pix, _, ref = inference
  # Padded to a 10-frame bucket with garbage; windows must still use ceil(8/3)·3 = 9 frames.
  fq_b = np.concatenate([fq, 5.0 + np.zeros((3, 1, 2, QF, C), np.float32)], axis=2)
  pix_b = np.concatenate([pix, np.ones((1, 2, 6, 7, CONV), np.float32)], axis=1)
  valid = np.arange(10)[None] < 8
  chunked = vita.VITAModule(small_cfg(kv_chunk=7, enc_window_chunk=2), num_classes=K,
                            num_frame_queries=QF)
  out = jax.jit(lambda p, a, b, v: chunked.apply(p, a, b, train=False, frame_valid=v))(
      model["params"], fq_b, pix_b, valid)
  out = dict(out, pred_masks=out["pred_masks"][:, :, :, :8])
  _compare(out, ref)


def test_mask_pooling_matches_numpy(model, inference):
  """``mask_pooling``: the embedding gains W · (features pooled under its first-pass masks over
  the real frames); padded frames (garbage here) are not pooled."""
  fq, pix, plain, _ = inference
  fq_b = np.concatenate([fq, 5.0 + np.zeros((3, 1, 2, QF, C), np.float32)], axis=2)
  pix_b = np.concatenate([pix, 3.0 + np.ones((1, 2, 6, 7, CONV), np.float32)], axis=1)
  valid = np.arange(10)[None] < 8
  kernel = np.asarray(jax.random.normal(jax.random.key(11), (MASK_DIM, MASK_DIM))) * 0.2
  params = {"params": dict(model["params"]["params"], mask_pool_proj={"kernel": kernel})}
  pooled = vita.VITAModule(small_cfg(mask_pooling=True), num_classes=K, num_frame_queries=QF)
  out = jax.jit(lambda p, a, b, v: pooled.apply(p, a, b, train=False, frame_valid=v))(
      params, fq_b, pix_b, valid)
  feats = np.asarray(model["module"].apply(model["params"], jnp.asarray(pix),
                                           method=vita.VITAModule.project_mask_features),
                     np.float64)[0]                                       # [T, h, w, D]
  first = np.asarray(plain["pred_mask_embed"], np.float64)[0, 0]          # [Nv, D]
  weights = 1 / (1 + np.exp(-np.einsum("qd,thwd->qthw", first, feats)))
  mean = np.einsum("qthw,thwd->qd", weights, feats) / (weights.sum((1, 2, 3))[:, None] + 1)
  embed = first + mean @ kernel
  np.testing.assert_allclose(np.asarray(out["pred_mask_embed"])[0, 0], embed, rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(np.asarray(out["pred_masks"])[0, 0, :, :8],
                             np.einsum("qd,thwd->qthw", embed, feats), rtol=1e-4, atol=2e-4)
  assert np.abs(embed - first).max() > 1e-2


def _plain_masks(model, pix):
  """layer outputs → ``mask_embed · F`` ``[L, Nv, T, h, w]`` (float64) on the projected
  ``[1, T, h, w, C_conv]`` pixel features ``pix``, without any prior."""
  feats = np.asarray(model["module"].apply(model["params"], jnp.asarray(pix),
                                           method=vita.VITAModule.project_mask_features),
                     np.float64)[0]                                       # [T, h, w, D]
  return lambda layer: np.einsum(
      "lqd,thwd->lqthw", np.asarray(layer["pred_mask_embed"], np.float64)[:, 0], feats)


def test_peak_prior_matches_numpy(model, inference):
  """``peak_prior``: in training every decoder layer's masks after the first add the prior
  centred per frame on the previous layer's arg-max cells; at inference only the last layer is
  predicted, with the previous layer's embedding returned for the streaming path. A
  non-default length scale (``peak_prior_scale``) and a shape template (``peak_prior_template``)
  reach the prior."""
  fq, pix, _, _ = inference
  scale, side = 0.15, 3
  module = vita.VITAModule(small_cfg(peak_prior=True, peak_prior_scale=scale,
                                     peak_prior_template=side),
                           num_classes=K, num_frame_queries=QF)
  template = module.init(jax.random.key(0), fq, pix, train=True)["params"]
  assert not np.any(np.asarray(template["peak_prior_head"]["kernel"]))
  kernel = np.asarray(jax.random.normal(jax.random.key(12), (C, 3 + side ** 2)))
  params = {"params": dict(model["params"]["params"], peak_prior_head={
      "kernel": kernel, "bias": template["peak_prior_head"]["bias"]})}
  plain = _plain_masks(model, pix)

  def check(previous_masks, current):   # [L, Nv, T, h, w], one layer's outputs
    coefficients = np.asarray(current["pred_peak_coefficients"], np.float64)[:, 0]
    prior = np.stack([numpy_peak_prior(c[None], m[None], scale)[0]
                      for c, m in zip(coefficients, previous_masks, strict=True)])
    assert np.abs(prior).max() > 1.0
    np.testing.assert_allclose(np.asarray(current["pred_masks"])[:, 0], plain(current) + prior,
                               rtol=1e-4, atol=1e-3)

  out = module.apply(params, fq, pix, train=True)
  layers = [*out["aux_outputs"], out]
  assert len(layers) == DEC
  np.testing.assert_allclose(np.asarray(layers[0]["pred_masks"])[:, 0], plain(layers[0]),
                             rtol=1e-4, atol=1e-4)
  for previous, current in zip(layers[:-1], layers[1:], strict=True):
    check(np.asarray(previous["pred_masks"], np.float64)[:, 0], current)
  test = module.apply(params, fq, pix, train=False)
  assert test["aux_outputs"] == []
  check(plain({"pred_mask_embed": test["pred_prev_mask_embed"]}), test)


def test_vote_prior_matches_numpy(model, inference):
  """``peak_prior_votes``: every decoder layer's masks after the first add, besides the peak
  prior, the vote prior on the frame detector's ``centre_offsets`` — the previous layer's peak
  cell's vote against every cell's, per frame — in training and at inference; without the
  offsets the module refuses."""
  fq, pix, _, _ = inference
  scale = 0.15
  module = vita.VITAModule(small_cfg(peak_prior=True, peak_prior_scale=scale,
                                     peak_prior_votes=True),
                           num_classes=K, num_frame_queries=QF)
  offsets = np.asarray(jax.random.normal(jax.random.key(13), (1, 8, 6, 7, 2))) * 0.1
  with pytest.raises(ValueError, match="centre_offsets"):
    module.init(jax.random.key(0), fq, pix, train=True)
  template = module.init(jax.random.key(0), fq, pix, train=True, centre_offsets=offsets)
  template = template["params"]
  assert not np.any(np.asarray(template["vote_prior_head"]["kernel"]))
  np.testing.assert_array_equal(np.asarray(template["vote_prior_head"]["bias"]), [-2.0])
  peak_kernel = np.asarray(jax.random.normal(jax.random.key(14), (C, 3)))
  vote_kernel = np.asarray(jax.random.normal(jax.random.key(15), (C, 1)))
  params = {"params": dict(
      model["params"]["params"],
      peak_prior_head={"kernel": peak_kernel, "bias": template["peak_prior_head"]["bias"]},
      vote_prior_head={"kernel": vote_kernel, "bias": np.array([2.0], np.float32)})}
  plain = _plain_masks(model, pix)

  def check(previous_masks, current):   # [L, Nv, T, h, w], one layer's outputs
    peak = np.asarray(current["pred_peak_coefficients"], np.float64)[:, 0]
    vote = np.asarray(current["pred_vote_coefficients"], np.float64)[:, 0, :, 0]
    prior = np.stack([numpy_peak_prior(c[None], m[None], scale)[0]
                      + numpy_vote_prior(v[None], offsets, m[None], scale)[0]
                      for c, v, m in zip(peak, vote, previous_masks, strict=True)])
    np.testing.assert_allclose(np.asarray(current["pred_masks"])[:, 0], plain(current) + prior,
                               rtol=1e-4, atol=1e-3)

  out = module.apply(params, fq, pix, train=True, centre_offsets=offsets)
  layers = [*out["aux_outputs"], out]
  for previous, current in zip(layers[:-1], layers[1:], strict=True):
    check(np.asarray(previous["pred_masks"], np.float64)[:, 0], current)
  test = module.apply(params, fq, pix, train=False, centre_offsets=offsets)
  check(plain({"pred_mask_embed": test["pred_prev_mask_embed"]}), test)
  # The vote term is not vacuous here.
  votes = numpy_vote_prior(np.asarray(test["pred_vote_coefficients"], np.float64)[0, :, :, 0],
                           offsets, plain({"pred_mask_embed": test["pred_prev_mask_embed"]}),
                           scale)
  assert np.abs(votes).max() > 1.0


def test_shift_in_training_uses_the_inference_schedule(model, inference):
  fq = jnp.asarray(inference[0][-1])  # [B=1, T=8, Qf, C] as [N, T, Qf, C]
  encode = lambda m, train: m.apply(model["params"], fq, None, train, method=m.encode)
  shifting = vita.VITAModule(small_cfg(shift_in_training=True), num_classes=K,
                             num_frame_queries=QF)
  plain_train = encode(model["module"], True)
  np.testing.assert_allclose(encode(shifting, True), encode(model["module"], False), atol=1e-6)
  assert np.abs(np.asarray(plain_train) - np.asarray(encode(shifting, True))).max() > 1e-3


def test_permuted_tokens_with_their_slots_equal_the_reference(model, inference):
  """Token pruning plumbing: tokens reordered per frame, with ``query_slots`` naming each
  token's detector slot, give the PyTorch reference's outputs for the original order (the
  encoder has no positions and the decoder's key position follows the slot)."""
  fq, pix, _, ref = inference
  perm = np.stack([np.random.default_rng(t).permutation(QF) for t in range(8)])  # [T, Qf]
  fq_perm = np.take_along_axis(fq, perm[None, None, :, :, None], axis=3)
  out = jax.jit(lambda p, a, b, s: model["module"].apply(p, a, b, train=False, query_slots=s))(
      model["params"], fq_perm, pix, perm[None].astype(np.int32))
  _compare(out, ref)
  # Half the tokens, slots given: runs, and differs from the full set.
  half = jax.jit(lambda p, a, b, s: model["module"].apply(p, a, b, train=False, query_slots=s))(
      model["params"], fq_perm[:, :, :, :QF // 2], pix, perm[None, :, :QF // 2].astype(np.int32))
  assert half["pred_logits"].shape == out["pred_logits"].shape
  assert np.abs(np.asarray(half["pred_logits"]) - ref["pred_logits"]).max() > 1e-3
  with pytest.raises(ValueError, match="query_slots"):
    model["module"].apply(model["params"], fq, pix, train=False,
                          query_slots=np.zeros((1, 8, QF - 1), np.int32))


def test_prune_frame_queries_keeps_lowest_no_object():
  from vis_jax.models.vita_model import prune_frame_queries
  queries = np.arange(2 * 4 * 1, dtype=np.float32).reshape(2, 4, 1)
  no_object = np.array([[0.9, 0.1, 0.5, 0.1],     # ties keep the lower slot first
                        [0.2, 0.8, 0.05, 0.6]])
  kept, slots = prune_frame_queries(queries, no_object, 0.5)
  np.testing.assert_array_equal(slots, [[1, 3], [2, 0]])
  np.testing.assert_array_equal(kept[..., 0], [[1, 3], [6, 4]])
  _, slots = prune_frame_queries(queries, no_object, 0.1)   # at least one query per frame
  np.testing.assert_array_equal(slots, [[1], [2]])
  with pytest.raises(ValueError, match="token_keep_ratio"):
    prune_frame_queries(queries, no_object, 0.0)


# ---- losses ----------------------------------------------------------------------------------


def _to_matches(pairs, q):
  """[(pred, target)] → ``[2, q]`` in the ``matching`` conventions."""
  pairs = sorted(pairs)
  preds = [p for p, _ in pairs] + [i for i in range(q) if i not in {p for p, _ in pairs}]
  tgts = [t for _, t in pairs] + [-1] * (q - len(pairs))
  return np.array([preds, tgts], np.int32)


def _bce(x, y):
  return np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))


@pytest.fixture(scope="module")
def loss_case():
  rng = np.random.default_rng(0)
  n_l, b, t, g, d, hw, big = 2, 2, 3, 3, 2, 6, 12
  present = np.array([[[1, 1, 0], [0, 1, 1], [0, 0, 0]],
                      [[1, 1, 1], [1, 0, 0], [0, 0, 0]]], bool)
  labels = np.array([[2, 0, -1], [1, 1, 2]], np.int32)
  instance_valid = labels >= 0   # clip 1 slot 2: valid label, never present → not an instance
  track_ids = np.array([[1003, 17, -1], [5, 6, 7]], np.int32)
  masks = (rng.random((b, g, t, big, big)) > 0.5) & present[..., None, None]
  # Frame-level matches: every present slot of every (layer, clip, frame) gets a query.
  frame_pairs = {}
  for li in range(n_l):
    for bi in range(b):
      for ti in range(t):
        slots = [gi for gi in range(g) if present[bi, gi, ti] and instance_valid[bi, gi]]
        queries = rng.permutation(QF)[:len(slots)].tolist()
        frame_pairs[li, bi, ti] = list(zip(queries, slots, strict=True))
  frame_matches = np.stack([np.stack([np.stack([_to_matches(frame_pairs[li, bi, ti], QF)
                                                for ti in range(t)]) for bi in range(b)])
                            for li in range(n_l)])
  clip_valid = instance_valid & present.any(-1)
  video_pairs = {}
  for di in range(d):
    for lb in range(n_l * b):
      slots = [gi for gi in range(g) if clip_valid[lb % b, gi]]
      queries = rng.permutation(NV)[:len(slots)].tolist()
      video_pairs[di, lb] = list(zip(queries, slots, strict=True))
  video_matches = np.stack([np.stack([_to_matches(video_pairs[di, lb], NV)
                                      for lb in range(n_l * b)]) for di in range(d)])
  f32 = lambda *s: rng.normal(size=s).astype(np.float32)
  layers = [{"pred_logits": f32(n_l, b, NV, K + 1), "pred_masks": f32(n_l, b, NV, t, hw, hw)}
            for _ in range(d)]
  outputs = dict(layers[-1], aux_outputs=layers[:-1], pred_fq_embed=0.5 * f32(n_l, b, t, QF, 5),
                 pred_cq_embed=0.5 * f32(n_l, b, NV, 5))
  targets = dict(masks=masks, labels=labels, instance_valid=instance_valid, present=present,
                 track_ids=track_ids)
  cfg = ml_collections.ConfigDict(dict(
      num_classes=K, eos_coef=0.1, class_weight=2.0, mask_weight=5.0, dice_weight=5.0,
      num_points=16, oversample_ratio=3.0, importance_sample_ratio=0.75, matcher="scipy",
      deep_supervision=True, mask_loss_per_frame=True, sim_weight=0.5))
  rng_key = jax.random.key(11)
  total, metrics = jax.jit(lambda o, tg, fm, vm: vita_losses.vita_criterion(
      o, tg, rng_key, cfg, frame_matches=fm, video_matches=vm))(
          outputs, targets, frame_matches, video_matches)
  return dict(outputs=outputs, targets=targets, frame_pairs=frame_pairs,
              video_pairs=video_pairs, video_matches=video_matches, cfg=cfg, rng=rng_key,
              total=total, metrics=metrics, clip_valid=clip_valid, dims=(n_l, b, t, g, d))


def _official_sim_loss(case):
  """numpy version of the official ``loss_fg_sim`` (re-based ids, 1000·batch offsets)."""
  n_l, b, t, g, _ = case["dims"]
  tg, out = case["targets"], case["outputs"]
  rebased = np.full((b, g, t), -1)
  for bi in range(b):
    ids = np.where(tg["present"][bi] & tg["instance_valid"][bi][:, None],
                   tg["track_ids"][bi][:, None], -1)
    keep = ids != -1
    rebased[bi] = np.where(keep, ids - max(ids[keep].min(), 0), -1)
  items, ids, batch = [], [], []
  for li in range(n_l):
    for bi in range(b):
      for ti in range(t):
        for q, gi in case["frame_pairs"][li, bi, ti]:
          items.append(out["pred_fq_embed"][li, bi, ti, q])
          ids.append(rebased[bi, gi, ti] + (li * b + bi) * 1000)
          batch.append(li * b + bi)
  for lb in range(n_l * b):
    for v, gi in case["video_pairs"][1, lb]:   # last VITA layer
      items.append(out["pred_cq_embed"][lb // b, lb % b, v])
      ids.append(rebased[lb % b, gi].max() + lb * 1000)
      batch.append(lb)
  x, ids, batch = np.array(items, np.float64), np.array(ids), np.array(batch)
  logits = x @ x.T
  same = (batch[:, None] == batch[None]).astype(np.float64)
  loss = _bce(logits, (ids[:, None] == ids[None]).astype(np.float64)) * same
  return loss.sum() / (same.sum() + 1e-6)


def test_similarity_loss_matches_official_formula(loss_case):
  np.testing.assert_allclose(float(loss_case["metrics"]["loss_vita_sim"]),
                             _official_sim_loss(loss_case), rtol=1e-5)


def _point(maps, coords):
  """torch ``point_sample``: grid_sample of ``[H, W]`` maps at (x, y) in [0, 1]."""
  grid = torch.from_numpy(2.0 * np.asarray(coords, np.float32) - 1.0)[None, None]
  maps = torch.from_numpy(np.asarray(maps, np.float32))[None, None]
  return F.grid_sample(maps, grid, mode="bilinear", align_corners=False).flatten()


def test_clip_level_losses_match_torch_rederivation(loss_case):
  case = loss_case
  n_l, b, t, g, d = case["dims"]
  tg, cfg = case["targets"], case["cfg"]
  layers = case["outputs"]["aux_outputs"] + [case["outputs"]]
  clip_valid = case["clip_valid"]
  num_masks = n_l * clip_valid.sum()
  valid_rep = jnp.asarray(np.tile(clip_valid, (n_l, 1)))
  _, loss_key = jax.random.split(case["rng"])
  layer_keys = jax.random.split(loss_key, d)
  weight = torch.ones(K + 1)
  weight[-1] = 0.1
  want = {}
  for di, layer in enumerate(layers):
    masks = layer["pred_masks"].reshape(n_l * b, NV, t, 6, 6)
    # The loss points are inputs (criterion.py's documented key use); the losses are not.
    coords = np.asarray(criterion.loss_point_coords(
        jnp.asarray(masks), jnp.asarray(case["video_matches"][di]), valid_rep,
        layer_keys[di], cfg))
    bce = dice = 0.0
    classes = torch.full((n_l * b, NV), K, dtype=torch.long)
    for lb in range(n_l * b):
      for q, gi in case["video_pairs"][di, lb]:
        classes[lb, q] = int(tg["labels"][lb % b, gi])
        logit = torch.cat([_point(masks[lb, q, ti], coords[lb, gi, ti]) for ti in range(t)])
        label = torch.cat([_point(tg["masks"][lb % b, gi, ti], coords[lb, gi, ti])
                           for ti in range(t)])
        bce += F.binary_cross_entropy_with_logits(logit, label).item()
        p = logit.sigmoid()
        dice += (1 - (2 * (p * label).sum() + 1) / (p.sum() + label.sum() + 1)).item()
    logits = torch.from_numpy(layer["pred_logits"].reshape(n_l * b, NV, K + 1))
    suffix = "" if di == d - 1 else f"_{di}"
    want["loss_vita_ce" + suffix] = F.cross_entropy(logits.transpose(1, 2), classes,
                                                    weight).item()
    want["loss_vita_mask" + suffix] = bce / num_masks
    want["loss_vita_dice" + suffix] = dice / num_masks
  for key, value in want.items():
    np.testing.assert_allclose(float(case["metrics"][key]), value, rtol=2e-5, err_msg=key)
  assert float(case["metrics"]["num_masks_vita"]) == num_masks
  weights = {"ce": 2.0, "mask": 5.0, "dice": 5.0}
  expected = sum(weights[k.split("_")[2]] * v for k, v in want.items())
  expected += 0.5 * _official_sim_loss(case)
  np.testing.assert_allclose(float(case["total"]), expected, rtol=1e-5)


def test_total_loss_end_to_end(loss_case):
  case = loss_case
  n_l, b, t, g, _ = case["dims"]
  rng = np.random.default_rng(1)
  frame_layers = [{"pred_logits": rng.normal(size=(b * t, QF, K + 1)).astype(np.float32),
                   "pred_masks": rng.normal(size=(b * t, QF, 6, 6)).astype(np.float32)}
                  for _ in range(3)]
  frame_outputs = dict(frame_layers[-1], aux_outputs=frame_layers[:-1])
  video = {k: v for k, v in case["outputs"].items()}
  cfg = case["cfg"]

  def run(fo, vo, tg):
    total, metrics = vita_losses.vita_total_loss(fo, vo, tg, jax.random.key(12), cfg)
    _, _, fm = vita_losses.frame_criterion(fo, tg, jax.random.key(13), cfg, num_frames=t,
                                           last_layer_num=n_l)
    return total, metrics, fm

  total, metrics, fm = jax.jit(run)(frame_outputs, video, case["targets"])
  assert np.isfinite(float(total))
  np.testing.assert_allclose(float(total), float(metrics["loss_frame_total"])
                             + float(metrics["loss_vita_total"]), rtol=1e-6)
  for key in ("loss_ce", "loss_ce_1", "loss_vita_ce", "loss_vita_ce_0", "loss_vita_sim"):
    assert key in metrics
  # Frame matches cover exactly the slots present in each frame (frame-level targets).
  fm = np.asarray(fm)
  assert fm.shape == (n_l, b, t, 2, QF)
  for li in range(n_l):
    for bi in range(b):
      for ti in range(t):
        matched = sorted(fm[li, bi, ti, 1][fm[li, bi, ti, 1] >= 0].tolist())
        want = [gi for gi in range(g) if case["targets"]["present"][bi, gi, ti]
                and case["targets"]["instance_valid"][bi, gi]]
        assert matched == want
