"""The VITA module (object encoder + object decoder, spec §3.1–§3.4), batch-first, channels-last.

VITA sees two outputs of the frame-level Mask2Former: the frame queries (``decoder_norm`` of the
frame decoder's last layers) and the pixel decoder's *un-projected* 1/4 map::

  frame_queries [L, B, T, Qf, C_in] → [N = L·B, T, Qf, C_in]   (n = l·B + b: the official
  → input_proj_dec → zero end-padding of T to a multiple of W    layer-major reshape to L·B)
  → object encoder: enc_layers × (window self-attn → FFN), post-norm, no positional encoding
  → drop padded frames → memory [N, T·Qf, C] (time-major) → sim_embed_frame → pred_fq_embed
  → object decoder: dec_layers × (cross-attn to memory with key pos fq_pos[slot], the same in
    every frame → self-attn → FFN) on Nv video queries (query_feat, query_embed)
  → decoder_norm → class_embed, mask_embed (MLP-3), sim_embed_clip
  masks = einsum(mask_embed, vita_mask_features(pixel map))    [L, B, Nv, T, h, w]

Training stacks the ``L = last_layer_num`` (3) frame layers as independent samples; inference
uses the last one only (``train=False`` slices ``frame_queries[-1:]``, official
``frame_query[[-1]]``). ``vita_mask_features`` (1x1 conv = ``Dense``) is a parameter of this
module as officially (``vita_module.vita_mask_features``; the official meta-architecture calls
it) and is applied here to ``pixel_features``; the frame-level Mask2Former keeps its own
``mask_features`` conv.

**Encoder windows** (``W > 0``): time is end-padded to ``Tp = ceil(T/W)·W`` and cut into windows
of ``W`` frames whose ``W·Qf`` tokens attend to each other only. Plain layers exclude padded
frames as keys (official boolean key padding = ``-inf``; here the finite ``KEY_BLOCKED``).
Shifted layers roll time by ``+ceil(W/2)`` over ``Tp`` (the end wraps to the front of the first
window), window, and roll back; blocked entries get an *additive* ``-1000`` (official float
mask): in the first and last window if the query or key frame is padding, in middle windows if
the query frame is, and in the first window between the wrapped part and the rest. A padded
query row is thus shifted uniformly (attends its whole window). Training uses plain windows in
every layer, inference alternates plain (even) / shifted (odd) — ``encoder_shift_schedule``;
``shift_in_training`` applies the alternation in training too. ``W = 0``: global attention.

**Long videos.** ``kv_chunk > 0``: the decoder cross-attention runs an online softmax over key
chunks (``chunked_attention``), never materialising ``[Nv, T·Qf]``. ``enc_window_chunk > 0``:
each (window-local) encoder layer runs over groups of windows in an ``nn.scan``. Results are
unchanged. Without ``pixel_features`` no ``[Nv, T, h, w]`` masks are built; compute the selected
queries' masks per frame chunk with ``project_mask_features`` + ``mask_logits``.
**Bucketed lengths.** ``frame_valid [B, T]`` (a valid prefix per clip) makes a clip padded to a
longer static ``T`` behave exactly like the unpadded clip: windows, roll and −1000 rules use the
clip's own ``ceil(n/W)·W``, padded frames are not decoder keys. Padded-frame outputs are junk.

Config (``cfg``, ``default_config()``; official values in brackets):
  hidden_dim: width ``C`` [256].  num_heads: heads of every layer [8].
  dim_feedforward: FFN width [2048].
  enc_layers / dec_layers: encoder / decoder layers [6 / 3] (paper: 3 / 6).
  enc_window_size: window ``W`` in frames, 0 = global [6 video, 0 COCO].
  num_object_queries: video queries ``Nv`` [100].
  shift_in_training: alternate plain/shifted windows in training too [False].
  last_layer_num: frame-decoder layers fed to VITA in training (read by the caller) [3].
  dropout: of every layer, officially hard-coded 0 [0.0].
  kv_chunk: decoder cross-attention key chunk, 0 = dense [0].
  enc_window_chunk: encoder windows per scan step, 0 = all at once [0].
  mask_dim: mask embedding / feature width (``MASK_DIM``) [256].
  pre_norm: pre-norm layers [False].
  enforce_input_proj / in_channels: ``input_proj_dec`` exists if enforced or the frame-query
    width ``in_channels`` (None = hidden_dim) differs [True / 256].
  deep_supervision: predict after every decoder layer in training [True].
  use_sim / sim_use_clip: create ``sim_embed_frame`` / ``sim_embed_clip`` [True / True].
  freeze_detector: train VITA on a frozen frame detector (paper Table 7; read by
    ``vita_model``: no gradient into and no update of ``detector/*``) [False].
  mask_pooling: not official [False]: each video query's mask embedding gains
    ``mask_pool_proj`` (zero-initialised) of the mask features pooled under its first-pass
    masks over all frames (``layers/mask_pooling.py``), so the embedding reads the 1/4 map it
    multiplies; ``pred_mask_embed`` is then the pooled embedding when ``pixel_features`` is
    given, the first-pass one otherwise (inference pools per frame chunk: ``vita_model``).
  peak_prior: not official [False]: every decoder layer's masks after the first add the log-prior
    of ``layers/peak_prior.py`` (coefficients from ``peak_prior_head`` of the layer's query,
    centred per frame on the arg-max cell of the previous layer's mask), so a video query can
    keep the object under its peak and drop a same-class neighbour. At inference the previous
    layer's embedding is returned as ``pred_prev_mask_embed`` and the coefficients as
    ``pred_peak_coefficients``; ``vita_model`` applies the prior per frame chunk. Excludes
    ``mask_pooling``.
  peak_prior_scale: the prior's length scale σ₀ (fraction of the padded frame's side) [0.2].
  peak_prior_template: side ``n`` of the prior's peak-relative shape template (``n × n``
    Gaussian bumps weighted per query, ``layers/peak_prior.py``; 0 = none) [0].
  peak_prior_votes: not official [False]: with ``peak_prior``, the prior also pushes down the
    cells whose centre vote (the frame detector's ``centre_offsets``, its
    ``decoder.peak_prior_votes``) differs from the peak cell's (``layers/peak_prior.py``);
    coefficients ``pred_vote_coefficients`` from ``vote_prior_head``.

Official keys → parameters (``vis_jax/convert_vita.py``). ``Linear.weight [out, in]`` →
``kernel [in, out]`` (transpose); LayerNorm ``weight`` → ``scale``; MHA ``in_proj_weight [3C, C]``
/ ``in_proj_bias`` split row-wise into ``{q,k,v}_proj`` (each kernel transposed), ``out_proj``
as a Linear. Prefix ``vita_module.`` omitted on the left::

  input_proj_dec                                 input_proj_dec
  enc_self_attn.{i}.{self_attn,norm}             enc_self_attn_{i}/{self_attn,norm}
  enc_ffn.{i}.{linear1,linear2,norm}             enc_ffn_{i}/{linear1,linear2,norm}
  transformer_cross_attention_layers.{i}.{multihead_attn,norm}
                                                 transformer_cross_attention_layers_{i}/…
  transformer_self_attention_layers.{i}.{self_attn,norm}
                                                 transformer_self_attention_layers_{i}/…
  transformer_ffn_layers.{i}.{linear1,linear2,norm}  transformer_ffn_layers_{i}/…
  vita_mask_features.weight [Cm, Cc, 1, 1], bias  vita_mask_features/kernel = w[:, :, 0, 0].T
  decoder_norm                                   decoder_norm
  query_feat.weight / query_embed.weight [Nv, C]  query_feat_embed / query_embed /embedding
  fq_pos.weight [Qf, C]                          fq_pos_embed/embedding
  class_embed, sim_embed_frame, sim_embed_clip   same names
  mask_embed.layers.{j}                          mask_embed/layers_{j}

The embedding modules' names contain ``embed`` so the optimizer's no-decay rule
``(embed|Embed)[^/]*/embedding$`` matches them (official ``WEIGHT_DECAY_EMBED 0``). Initialisers
are the official ones (xavier attention/FFN matrices, N(0, 1) embeddings, PyTorch-default heads,
c2-xavier 1x1 conv).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vis_jax.models.layers.attention import packed_in_proj_init
from vis_jax.models.layers.mask_pooling import mask_pool_sums, pooled_mean
from vis_jax.models.layers.mlp import MLP, torch_linear, torch_linear_bias_init
from vis_jax.models.layers.peak_prior import (
    PRIOR_SCALE,
    centre_votes,
    peak_coordinates,
    peak_index,
    peak_log_prior,
    peak_prior_head,
    vote_log_prior,
    vote_prior_head,
)
from vis_jax.models.layers.window_attention import (  # noqa: F401  (re-exported)
    KEY_BLOCKED,
    SHIFT_MASK_VALUE,
    WindowLayout,
    chunked_attention,
    dense_attention,
    encoder_shift_schedule,
    expand_window_bias,
    from_windows,
    padded_num_frames,
    to_windows,
    window_layout,
    windowed_attention,
)

# PyTorch's LayerNorm epsilon (Flax defaults to 1e-6).
NORM_EPS = 1e-5
# fvcore's c2_xavier_fill: kaiming_uniform_(a=1) = U(±sqrt(3 / fan_in)), bias 0.
c2_xavier_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")

_DEFAULTS = dict(
    hidden_dim=256, num_heads=8, dim_feedforward=2048, enc_layers=6, dec_layers=3,
    enc_window_size=6, num_object_queries=100, shift_in_training=False, last_layer_num=3,
    dropout=0.0, kv_chunk=0, enc_window_chunk=0, mask_dim=256, pre_norm=False,
    enforce_input_proj=True, in_channels=None, deep_supervision=True, use_sim=True,
    sim_use_clip=True, freeze_detector=False, mask_pooling=False, peak_prior=False,
    peak_prior_scale=PRIOR_SCALE, peak_prior_template=0, peak_prior_votes=False)


def default_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The official VITA video-config values (module docstring), with ``overrides`` applied."""
  unknown = set(overrides) - set(_DEFAULTS)
  if unknown:
    raise ValueError(f"unknown VITA config keys {sorted(unknown)}; known: {sorted(_DEFAULTS)}")
  return ml_collections.ConfigDict({**_DEFAULTS, **overrides})


def config_value(cfg: Any, name: str) -> Any:
  """``cfg.name``, or its documented default when the key is absent."""
  return getattr(cfg, name, _DEFAULTS[name])


def _layer_norm(name: str | None, dtype: Any, param_dtype: Any) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=NORM_EPS, use_fast_variance=False, dtype=dtype,
                      param_dtype=param_dtype, name=name)


class MultiheadAttention(nn.Module):
  """``nn.MultiheadAttention(C, M)`` as ``{q,k,v,out}_proj`` Denses (the layout of
  ``layers/attention.py``) plus an additive bias (shifted windows) and chunked keys.

  Attributes:
    num_heads: heads ``M`` (contiguous ``C/M`` feature chunks, as PyTorch).
    kv_chunk: > 0: chunked online-softmax over keys when there is no bias and more keys.
    dtype, param_dtype: compute / parameter dtypes.
  """
  num_heads: int
  kv_chunk: int = 0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array,
               bias: jax.Array | None = None, key_valid: jax.Array | None = None) -> jax.Array:
    """``query [N, Lq, C]`` attends ``key``/``value`` ``[N, Lk, C]``; ``bias [N, Lq, Lk]``,
    ``key_valid [N, Lk]`` as in ``dense_attention``. Returns ``[N, Lq, C]``."""
    c, m = query.shape[-1], self.num_heads
    if c % m:
      raise ValueError(f"width {c} must be divisible by num_heads {m}")

    def proj(name, init):
      return nn.Dense(c, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                      kernel_init=init, bias_init=nn.initializers.zeros)

    heads = lambda x: x.reshape(*x.shape[:-1], m, c // m)
    q = heads(proj("q_proj", packed_in_proj_init)(query))
    k = heads(proj("k_proj", packed_in_proj_init)(key))
    v = heads(proj("v_proj", packed_in_proj_init)(value))
    if self.kv_chunk > 0 and bias is None and k.shape[1] > self.kv_chunk:
      out = chunked_attention(q, k, v, key_valid, self.kv_chunk, self.dtype)
    else:
      out = dense_attention(q, k, v, bias, key_valid, self.dtype)
    return proj("out_proj", nn.initializers.xavier_uniform())(out.reshape(*out.shape[:-2], c))


class AttentionLayer(nn.Module):
  """Official ``SelfAttentionLayer`` / ``CrossAttentionLayer``: attention + residual + ``norm``.

  Attributes:
    num_heads: attention heads.
    attn_name: ``"self_attn"`` (self-attention layers) or ``"multihead_attn"`` (cross).
    kv_chunk: chunked keys (``MultiheadAttention``).
    dropout: on the attention output.
    pre_norm: normalise before attention instead of after the residual.
    dtype, param_dtype: compute / parameter dtypes.
  """
  num_heads: int
  attn_name: str = "self_attn"
  kv_chunk: int = 0
  dropout: float = 0.0
  pre_norm: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tgt: jax.Array, memory: jax.Array | None = None,
               pos: jax.Array | None = None, query_pos: jax.Array | None = None,
               bias: jax.Array | None = None, key_valid: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    """``tgt [N, Q, C] -> [N, Q, C]``.

    Self-attention (``memory`` None): queries and keys ``tgt + query_pos``, values ``tgt``.
    Cross-attention: queries ``tgt + query_pos``, keys ``memory + pos``, values ``memory``.
    """
    attn = MultiheadAttention(self.num_heads, self.kv_chunk, self.dtype, self.param_dtype,
                              name=self.attn_name)
    norm = _layer_norm("norm", self.dtype, self.param_dtype)
    add = lambda x, p: x if p is None else x + p

    def branch(x):
      q = add(x, query_pos)
      k, v = (q, x) if memory is None else (add(memory, pos), memory)
      return nn.Dropout(self.dropout)(attn(q, k, v, bias, key_valid), deterministic)

    if self.pre_norm:
      return tgt + branch(norm(tgt))
    return norm(tgt + branch(tgt))


class FFNLayer(nn.Module):
  """Official ``FFNLayer`` (ReLU): ``linear1``, ``linear2``, ``norm``."""
  dim_feedforward: int = 2048
  dropout: float = 0.0
  pre_norm: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tgt: jax.Array, deterministic: bool = True) -> jax.Array:
    """``[..., C] -> [..., C]``."""
    c = tgt.shape[-1]
    norm = _layer_norm("norm", self.dtype, self.param_dtype)

    def dense(features, fan_in, name):
      # The official layers xavier-fill every matrix; biases keep nn.Linear's default.
      return nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                      kernel_init=nn.initializers.xavier_uniform(),
                      bias_init=torch_linear_bias_init(fan_in))

    def branch(x):
      hidden = nn.relu(dense(self.dim_feedforward, c, "linear1")(x))
      hidden = nn.Dropout(self.dropout)(hidden, deterministic)
      return nn.Dropout(self.dropout)(dense(c, self.dim_feedforward, "linear2")(hidden),
                                      deterministic)

    if self.pre_norm:
      return tgt + branch(norm(tgt))
    return norm(tgt + branch(tgt))


# ---- the module ------------------------------------------------------------------------------


class VITAModule(nn.Module):
  """VITA's object encoder, object decoder and heads (see the module docstring).

  Attributes:
    cfg: VITA config (module docstring; ``default_config()``).
    num_classes: ``K`` foreground classes (class head has ``K + 1`` outputs, no-object last).
    num_frame_queries: ``Qf`` of the frame detector (size of ``fq_pos``).
    dtype, param_dtype: compute / parameter dtypes (softmaxes are always float32).
  """
  cfg: Any
  num_classes: int
  num_frame_queries: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    cfg = self.cfg
    c = int(cfg.hidden_dim)
    heads = int(cfg.num_heads)
    drop = float(config_value(cfg, "dropout"))
    pre = bool(config_value(cfg, "pre_norm"))
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    in_channels = config_value(cfg, "in_channels") or c
    if in_channels != c or config_value(cfg, "enforce_input_proj"):
      self.input_proj_dec = torch_linear(c, in_channels, **dt)
    else:
      self.input_proj_dec = None
    self.enc_self_attn = [AttentionLayer(heads, "self_attn", 0, drop, pre, **dt)
                          for _ in range(int(cfg.enc_layers))]
    self.enc_ffn = [FFNLayer(int(cfg.dim_feedforward), drop, pre, **dt)
                    for _ in range(int(cfg.enc_layers))]
    self.transformer_cross_attention_layers = [
        AttentionLayer(heads, "multihead_attn", int(config_value(cfg, "kv_chunk")), drop, pre,
                       **dt) for _ in range(int(cfg.dec_layers))]
    self.transformer_self_attention_layers = [
        AttentionLayer(heads, "self_attn", 0, drop, pre, **dt)
        for _ in range(int(cfg.dec_layers))]
    self.transformer_ffn_layers = [FFNLayer(int(cfg.dim_feedforward), drop, pre, **dt)
                                   for _ in range(int(cfg.dec_layers))]
    mask_dim = int(config_value(cfg, "mask_dim"))
    self.vita_mask_features = nn.Dense(mask_dim, kernel_init=c2_xavier_init,
                                       bias_init=nn.initializers.zeros, **dt)
    self.decoder_norm = _layer_norm(None, **dt)
    # nn.Embedding's N(0, 1) init.
    embed = lambda n: nn.Embed(n, c, embedding_init=nn.initializers.normal(1.0), **dt)
    self.query_feat_embed = embed(int(cfg.num_object_queries))
    self.query_embed = embed(int(cfg.num_object_queries))
    self.fq_pos_embed = embed(self.num_frame_queries)
    self.class_embed = torch_linear(self.num_classes + 1, c, **dt)
    self.mask_embed = MLP(c, mask_dim, 3, **dt)
    self.mask_pool_proj = (nn.Dense(mask_dim, use_bias=False, kernel_init=nn.initializers.zeros,
                                    **dt)
                           if config_value(cfg, "mask_pooling") else None)
    self.peak_prior_head = (
        peak_prior_head(int(config_value(cfg, "peak_prior_template")), **dt)
        if config_value(cfg, "peak_prior") else None)
    self.vote_prior_head = (vote_prior_head(**dt) if config_value(cfg, "peak_prior_votes")
                            else None)
    if self.vote_prior_head is not None and self.peak_prior_head is None:
      raise ValueError("vita.peak_prior_votes needs vita.peak_prior")
    if self.peak_prior_head is not None and self.mask_pool_proj is not None:
      raise ValueError("vita.peak_prior and vita.mask_pooling cannot be combined")
    if self.peak_prior_head is not None and int(cfg.dec_layers) < 2:
      raise ValueError("vita.peak_prior needs dec_layers >= 2 (it centres on the previous "
                       "layer's masks)")
    use_sim = bool(config_value(self.cfg, "use_sim"))
    self.sim_embed_frame = torch_linear(c, c, **dt) if use_sim else None
    self.sim_embed_clip = (torch_linear(c, c, **dt)
                           if use_sim and config_value(self.cfg, "sim_use_clip") else None)

  # -- encoder ---------------------------------------------------------------------------------

  def _window_layer(self, i: int, xw: jax.Array, frame_bias: jax.Array,
                    train: bool) -> jax.Array:
    bias = expand_window_bias(frame_bias, xw.shape[1] // frame_bias.shape[-1])
    xw = self.enc_self_attn[i](xw, bias=bias, deterministic=not train)
    return self.enc_ffn[i](xw, not train)

  def _run_windows(self, i: int, xw: jax.Array, frame_bias: jax.Array, train: bool) -> jax.Array:
    """Encoder layer ``i`` on ``[N·Nw, W·Qf, C]`` windows, in scan groups if configured."""
    chunk = int(config_value(self.cfg, "enc_window_chunk"))
    total = xw.shape[0]
    if chunk <= 0 or total <= chunk:
      return self._window_layer(i, xw, frame_bias, train)
    groups = -(-total // chunk)
    pad = groups * chunk - total
    # Dummy windows (zeros, zero bias) fill the last group; their outputs are dropped.
    xw_p = jnp.pad(xw, ((0, pad), (0, 0), (0, 0))).reshape(groups, chunk, *xw.shape[1:])
    fb_p = jnp.pad(frame_bias, ((0, pad), (0, 0), (0, 0))).reshape(
        groups, chunk, *frame_bias.shape[1:])

    def body(mdl, carry, xs):
      return carry, mdl._window_layer(i, xs[0], xs[1], train)

    scan = nn.scan(body, variable_broadcast="params",
                   split_rngs={"params": False, "dropout": True})
    _, out = scan(self, None, (xw_p, fb_p))
    return out.reshape(groups * chunk, *xw.shape[1:])[:total]

  def encode(self, frame_queries: jax.Array, n_valid: jax.Array | None = None,
             train: bool = False) -> jax.Array:
    """Input projection + object encoder.

    Args:
      frame_queries: ``[N, T, Qf, C_in]``.
      n_valid: int ``[N]`` real frames per sample (a prefix), None = all ``T``.
      train: training schedule (plain windows unless ``shift_in_training``), dropout on.

    Returns:
      ``[N, T, Qf, C]`` encoded object tokens (padded frames: meaningless values).
    """
    cfg = self.cfg
    x = frame_queries.astype(self.dtype)
    if self.input_proj_dec is not None:
      x = self.input_proj_dec(x)
    elif x.shape[-1] != int(cfg.hidden_dim):
      raise ValueError(f"frame queries have {x.shape[-1]} channels, hidden_dim is "
                       f"{cfg.hidden_dim}; set enforce_input_proj or in_channels")
    n, t, qf, c = x.shape
    if n_valid is not None:
      # The official code pads with zeros after the projection.
      x = jnp.where((jnp.arange(t)[None, :] < n_valid[:, None])[:, :, None, None], x, 0)
    # W = 0 (global attention) is one plain window over the whole clip.
    w = int(cfg.enc_window_size) or t
    tp = padded_num_frames(t, w)
    x = jnp.pad(x, ((0, 0), (0, tp - t), (0, 0), (0, 0)))
    counts = jnp.full((n,), t, jnp.int32) if n_valid is None else n_valid.astype(jnp.int32)
    schedule = encoder_shift_schedule(int(cfg.enc_layers), train,
                                      bool(config_value(cfg, "shift_in_training")))
    if not cfg.enc_window_size:
      schedule = (False,) * len(schedule)
    layouts = {s: window_layout(counts, tp, w, s) for s in set(schedule)}
    for i, shifted in enumerate(schedule):
      layout = layouts[shifted]
      xw = self._run_windows(i, to_windows(x, layout), layout.bias.reshape(-1, w, w), train)
      x = from_windows(xw, layout)
    return x[:, :t]

  # -- decoder ---------------------------------------------------------------------------------

  def decode(self, memory: jax.Array, n_valid: jax.Array | None = None,
             train: bool = False, query_slots: jax.Array | None = None) -> list[jax.Array]:
    """Object decoder over the encoded tokens.

    Args:
      memory: ``[N, T, Qf, C]`` encoder output.
      n_valid: int ``[N]`` real frames (padded frames are not attended), None = all.
      train: predict after every layer if ``deep_supervision`` (else only the last), dropout.
      query_slots: int ``[N, T, Qf]`` frame-query slot of each token (pruned tokens), None =
        token ``q`` of every frame is slot ``q``.

    Returns:
      ``decoder_norm`` outputs ``[N, Nv, C]`` of the kept layers, last layer last.
    """
    cfg = self.cfg
    n, t, qf, c = memory.shape
    mem = memory.reshape(n, t * qf, c)
    # Frame-query slot positions, identical in every frame (no temporal position).
    if query_slots is None:
      pos = jnp.tile(self.fq_pos_embed.embedding, (t, 1))[None].astype(self.dtype)
    else:
      pos = self.fq_pos_embed.embedding[query_slots.reshape(n, t * qf)].astype(self.dtype)
    key_valid = None
    if n_valid is not None:
      key_valid = jnp.repeat(jnp.arange(t)[None, :] < n_valid[:, None], qf, axis=1)
    nv = int(cfg.num_object_queries)
    query_pos = jnp.broadcast_to(self.query_embed.embedding[None], (n, nv, c)).astype(self.dtype)
    out = jnp.broadcast_to(self.query_feat_embed.embedding[None], (n, nv, c)).astype(self.dtype)
    n_layers = int(cfg.dec_layers)
    keep_all = train and bool(config_value(cfg, "deep_supervision"))
    # ``peak_prior`` centres the last layer's masks on the previous layer's peaks.
    keep_from = n_layers - (2 if config_value(cfg, "peak_prior") else 1)
    kept = []
    for i in range(n_layers):
      out = self.transformer_cross_attention_layers[i](
          out, mem, pos, query_pos, key_valid=key_valid, deterministic=not train)
      out = self.transformer_self_attention_layers[i](out, query_pos=query_pos,
                                                      deterministic=not train)
      out = self.transformer_ffn_layers[i](out, not train)
      if keep_all or i >= keep_from:
        kept.append(self.decoder_norm(out))
    return kept

  # -- masks -----------------------------------------------------------------------------------

  def project_mask_features(self, pixel_features: jax.Array) -> jax.Array:
    """``vita_mask_features`` 1x1 conv: ``[..., h, w, C_conv] -> [..., h, w, mask_dim]``."""
    return self.vita_mask_features(pixel_features.astype(self.dtype))

  @staticmethod
  def mask_logits(mask_embed: jax.Array, mask_features: jax.Array) -> jax.Array:
    """``[L, B, Nv, D]`` × ``[B, T, h, w, D]`` → video mask logits ``[L, B, Nv, T, h, w]``."""
    return jnp.einsum("lbqd,bthwd->lbqthw", mask_embed,
                      mask_features.astype(mask_embed.dtype))

  @staticmethod
  def peak_prior(coefficients: jax.Array, previous_masks: jax.Array,
                 scale: float) -> jax.Array:
    """``peak_prior``: ``[L, B, Nv, 3 + n²]`` coefficients and the previous layer's
    ``[L, B, Nv, T, h, w]`` mask logits → the additive prior of the same shape (per frame peaks,
    length scale ``scale``)."""
    flat = previous_masks.reshape(-1, *previous_masks.shape[2:])
    prior = peak_log_prior(coefficients.reshape(-1, *coefficients.shape[2:]),
                           peak_coordinates(flat), previous_masks.shape[-2:], scale)
    return prior.reshape(previous_masks.shape)

  @staticmethod
  def vote_prior(coefficients: jax.Array, previous_masks: jax.Array, votes: jax.Array,
                 scale: float) -> jax.Array:
    """``peak_prior_votes``: ``[L, B, Nv, 1]`` coefficients, the previous layer's ``[L, B, Nv,
    T, h, w]`` mask logits and the frames' ``[B, T, h, w, 2]`` ``centre_votes`` → the additive
    vote prior of the masks' shape."""
    n_l = previous_masks.shape[0]
    flat = previous_masks.reshape(-1, *previous_masks.shape[2:])
    prior = vote_log_prior(coefficients.reshape(-1, *coefficients.shape[2:]),
                           jnp.tile(votes, (n_l,) + (1,) * (votes.ndim - 1)),
                           peak_index(flat), scale)
    return prior.reshape(previous_masks.shape)

  def pooled_mask_embed(self, mask_embed: jax.Array, numerator: jax.Array,
                        denominator: jax.Array) -> jax.Array:
    """``mask_pooling``: ``mask_embed [..., D]`` plus ``mask_pool_proj`` of the mask features
    pooled under its first-pass masks (``layers/mask_pooling.py`` sums over all frames)."""
    return mask_embed + self.mask_pool_proj(
        pooled_mean(numerator, denominator).astype(mask_embed.dtype))

  def __call__(self, frame_queries: jax.Array, pixel_features: jax.Array | None = None, *,
               train: bool = False, frame_valid: jax.Array | None = None,
               query_slots: jax.Array | None = None,
               centre_offsets: jax.Array | None = None) -> dict[str, Any]:
    """Video-level predictions.

    Args:
      frame_queries: ``[L, B, T, Qf, C_in]`` LayerNorm'ed frame queries of the last ``L``
        frame-decoder layers (oldest first); with ``train=False`` only ``[-1:]`` is used.
      pixel_features: ``[B, T, h, w, C_conv]`` the pixel decoder's un-projected 1/4 map, or
        None to skip ``pred_masks`` (then use ``project_mask_features`` / ``mask_logits``).
        Needed at ``init`` to create ``vita_mask_features``.
      train: training behaviour (all decoder layers predicted, plain windows, dropout).
      frame_valid: bool ``[B, T]``, True for the real frames (a prefix per clip), or None.
      query_slots: int ``[B, T, Qk]`` with ``frame_queries [.., Qk, C_in]``, ``Qk ≤ Qf``: the
        detector slot of every kept frame query (token pruning, paper Table 6; the slot
        selects the ``fq_pos`` key embedding), or None (all ``Qf`` slots in order).
      centre_offsets: ``[B, T, h, w, 2]`` the frame detector's centre offsets (needed with
        ``peak_prior_votes`` when ``pixel_features`` is given).

    Returns:
      ``pred_logits [L, B, Nv, K+1]``, ``pred_mask_embed [L, B, Nv, mask_dim]``,
      ``pred_masks [L, B, Nv, T, h, w]`` (if ``pixel_features``), ``pred_cq_embed
      [L, B, Nv, C]`` (if ``sim_use_clip``) of the last decoder layer; ``pred_fq_embed
      [L, B, T, Qf, C]`` (training with ``use_sim``: ``sim_embed_frame`` of the encoded frame
      queries; skipped at inference, where it is unused and ``T·Qf``-sized);
      ``aux_outputs``: list of per-layer dicts with the per-layer keys for decoder layers
      ``0 .. D-2`` (training with deep supervision; empty otherwise).
    """
    if not train:
      frame_queries = frame_queries[-1:]
    n_l, b, t, qf, _ = frame_queries.shape
    if query_slots is None and qf != self.num_frame_queries:
      raise ValueError(f"got {qf} frame queries, fq_pos has {self.num_frame_queries}")
    if query_slots is not None and (query_slots.shape != (b, t, qf)
                                    or qf > self.num_frame_queries):
      raise ValueError(f"query_slots {query_slots.shape} must be [B, T, Qk] = {(b, t, qf)} "
                       f"with Qk <= {self.num_frame_queries}")
    x = frame_queries.reshape(n_l * b, t, qf, frame_queries.shape[-1])
    n_valid = None
    if frame_valid is not None:
      n_valid = jnp.tile(jnp.sum(frame_valid.astype(jnp.int32), axis=1), n_l)
    slots = None if query_slots is None else jnp.tile(query_slots, (n_l, 1, 1))
    memory = self.encode(x, n_valid, train)
    kept = self.decode(memory, n_valid, train, slots)
    mask_features = (None if pixel_features is None
                     else self.project_mask_features(pixel_features))
    nv = int(self.cfg.num_object_queries)
    scale = float(config_value(self.cfg, "peak_prior_scale"))
    votes = None
    if self.vote_prior_head is not None and mask_features is not None:
      if centre_offsets is None:
        raise ValueError("vita.peak_prior_votes needs the frame detector's centre_offsets "
                         "(model.decoder.peak_prior_votes)")
      votes = centre_votes(centre_offsets)

    def heads(h, previous_masks=None):
      per = lambda a: a.reshape(n_l, b, nv, a.shape[-1])
      out = {"pred_logits": per(self.class_embed(h)), "pred_mask_embed": per(self.mask_embed(h))}
      if self.sim_embed_clip is not None:
        out["pred_cq_embed"] = per(self.sim_embed_clip(h))
      if self.peak_prior_head is not None:
        out["pred_peak_coefficients"] = per(self.peak_prior_head(h))
      if self.vote_prior_head is not None:
        out["pred_vote_coefficients"] = per(self.vote_prior_head(h))
      if mask_features is not None:
        if self.mask_pool_proj is not None:
          first = self.mask_logits(out["pred_mask_embed"], mask_features)
          sums = jax.vmap(lambda m: mask_pool_sums(m, mask_features, frame_valid))(first)
          out["pred_mask_embed"] = self.pooled_mask_embed(out["pred_mask_embed"], *sums)
        out["pred_masks"] = self.mask_logits(out["pred_mask_embed"], mask_features)
        if previous_masks is not None:
          prior = self.peak_prior(out["pred_peak_coefficients"], previous_masks, scale)
          if votes is not None:
            prior = prior + self.vote_prior(out["pred_vote_coefficients"], previous_masks,
                                            votes, scale)
          out["pred_masks"] = out["pred_masks"] + prior.astype(out["pred_masks"].dtype)
      return out

    layers, previous = [], None
    for h in kept:
      layers.append(heads(h, previous))
      previous = layers[-1].get("pred_masks") if self.peak_prior_head is not None else None
    result = layers[-1]
    if self.peak_prior_head is not None and not (
        train and bool(config_value(self.cfg, "deep_supervision"))):
      result["pred_prev_mask_embed"] = layers[-2]["pred_mask_embed"]
      layers = layers[-1:]
    result["aux_outputs"] = layers[:-1]
    if self.sim_embed_frame is not None and train:  # only the similarity loss reads it
      result["pred_fq_embed"] = self.sim_embed_frame(memory).reshape(n_l, b, t, qf, -1)
    return result
