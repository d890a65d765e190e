"""Mask2Former's masked-attention transformer decoder (spec §1.3), batch-first, channels-last.

``MultiScaleMaskedTransformerDecoder`` predicts from the learnable queries, then runs
``dec_layers`` layers (official ``DEC_LAYERS - 1`` = 9) cycling over the three pixel-decoder
levels (coarsest first): masked cross-attention → self-attention → FFN (post-norm by default),
predicting after every layer. Each layer's cross-attention is restricted to the foreground
(sigmoid ≥ 0.5) of the previous prediction resized to that level (``attention_mask_from_logits``);
a query whose mask is empty attends everywhere (the official fallback).

The image decoder is written so that the Mask2Former-VIS 3-D variant reuses it: memory tokens
are handled flattened (``decode``), mask features may carry extra spatial axes
(``[B, T, H, W, D]`` → masks ``[B, Q, T, H, W]``), and the attention mask resizes only the last two
axes and flattens the rest in (t, h, w) order, which is how the video decoder orders its memory.
``VideoMultiScaleMaskedTransformerDecoder`` (spec §2.1, paper §3) only overrides ``__call__``: the
memory of a level is all ``T`` frames' tokens (time-major), keyed by the 3-D sine encoding
``e_t ⊕ e_xy`` (``sine_position_3d``: the 2-D code plus a temporal code, added); the parameters
are the image decoder's, so COCO image checkpoints load unchanged. Padded frames
(``frame_valid``) are excluded from the positional normalisation and from attention, so a video
padded to a length bucket gives the same predictions as the unpadded one.

Outputs (see ``MultiScaleMaskedTransformerDecoder.__call__``): ``aux_outputs`` is a **list** of
dicts (initial-query prediction, then layers 1..L-1), the official structure, which is what
``vis_jax/losses/criterion.py::stack_layers`` consumes; under ``jit`` a list is an ordinary pytree
and the criterion stacks it once. ``query_features`` is stacked ``[L, B, Q, C]``.

Hugging Face's ``Mask2FormerForUniversalSegmentation`` computes the same function in eval mode;
its naming and packing differences are listed in ``vis_jax/convert_mask2former_heads.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vis_jax.models.layers.attention import MultiHeadAttention
from vis_jax.models.layers.mask_pooling import mask_pool_sums, pooled_mean
from vis_jax.models.layers.mlp import MLP, torch_linear, torch_linear_bias_init
from vis_jax.models.layers.peak_prior import (
    PRIOR_SCALE,
    CentreOffsetTower,
    centre_offset_head,
    centre_votes,
    peak_coordinates,
    peak_index,
    peak_log_prior,
    peak_prior_head,
    vote_log_prior,
    vote_prior_head,
)
from vis_jax.models.layers.position import sine_position_2d, sine_position_3d
from vis_jax.models.pixel_decoder import c2_xavier_init, layer_norm, resize_bilinear

# Official masked attention blocks positions where sigmoid(mask logit) < 0.5.
MASK_THRESHOLD = 0.5


def unblock_empty_rows(allowed: jax.Array, key_valid: jax.Array | None = None) -> jax.Array:
  """Lets a query whose mask allows nothing attend everywhere (official fallback).

  Args:
    allowed: ``[..., N]`` bool, True = may attend.
    key_valid: optional bool broadcastable to ``allowed``: keys that exist (False = padding,
      e.g. the padded frames of a video); an empty row is then unblocked on the valid keys only.

  Returns:
    ``allowed`` with every all-False row along the last axis set to all-True (all valid).
  """
  empty = ~jnp.any(allowed, axis=-1, keepdims=True)
  return allowed | (empty if key_valid is None else empty & key_valid)


def attention_mask_from_logits(mask_logits: jax.Array, size: Sequence[int],
                               threshold: float = MASK_THRESHOLD,
                               frame_valid: jax.Array | None = None) -> jax.Array:
  """Masked-attention mask from predicted mask logits.

  The logits are resized bilinearly (``align_corners=False``) to the level's ``(h, w)``; a
  position may be attended where ``sigmoid(logit) >= threshold`` (the official code blocks
  ``sigmoid < 0.5``; the comparison is done on the sigmoid, like the official one, so values
  that round to exactly 0.5 behave identically); fully blocked rows are unblocked. No gradient
  flows (the official mask is detached).

  Args:
    mask_logits: ``[B, Q, *extra, H, W]``, e.g. ``[B, Q, H, W]`` (image) or ``[B, Q, T, H, W]``
      (video).
    size: target ``(h, w)``.
    threshold: sigmoid threshold.
    frame_valid: optional ``[B, *extra]`` bool (video: ``[B, T]``); positions of invalid
      (padded) frames are never attended, not even by an unblocked row.

  Returns:
    ``[B, Q, prod(extra)·h·w]`` bool, True = may attend, flattened in (*extra, h, w) order.
  """
  logits = jax.lax.stop_gradient(mask_logits).astype(jnp.float32)
  logits = resize_bilinear(logits, size, axes=(-2, -1))
  allowed = jax.nn.sigmoid(logits) >= threshold
  b, q = allowed.shape[:2]
  if frame_valid is None:
    return unblock_empty_rows(allowed.reshape(b, q, -1))
  key_valid = jnp.broadcast_to(frame_valid.astype(bool)[:, None, ..., None, None],
                               allowed.shape).reshape(b, q, -1)
  return unblock_empty_rows(allowed.reshape(b, q, -1) & key_valid, key_valid)


def _ffn_dense(features: int, fan_in: int, dtype: Any, param_dtype: Any, name: str) -> nn.Dense:
  # The official layers xavier-fill every matrix; biases keep nn.Linear's default.
  return nn.Dense(features, dtype=dtype, param_dtype=param_dtype, name=name,
                  kernel_init=nn.initializers.xavier_uniform(),
                  bias_init=torch_linear_bias_init(fan_in))


class CrossAttentionLayer(nn.Module):
  """Official ``CrossAttentionLayer``: submodules ``multihead_attn`` and ``norm``.

  Attributes:
    num_heads: attention heads.
    pre_norm: normalise before attention (official ``PRE_NORM``; False in every config).
    dtype, param_dtype: compute / parameter dtypes.
  """
  num_heads: int
  pre_norm: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tgt: jax.Array, memory: jax.Array, mask: jax.Array | None,
               pos: jax.Array, query_pos: jax.Array) -> jax.Array:
    """``tgt [B, Q, C]`` attends ``memory [B, S, C]`` (key pos ``pos``); ``mask [B, Q, S]``."""
    attn = MultiHeadAttention(self.num_heads, self.dtype, self.param_dtype,
                              name="multihead_attn")
    norm = layer_norm("norm", self.dtype, self.param_dtype)
    mask = None if mask is None else mask[:, None]
    if self.pre_norm:
      return tgt + attn(norm(tgt) + query_pos, memory + pos, memory, mask)
    return norm(tgt + attn(tgt + query_pos, memory + pos, memory, mask))


class SelfAttentionLayer(nn.Module):
  """Official ``SelfAttentionLayer``: submodules ``self_attn`` and ``norm``.

  Attributes:
    num_heads: attention heads.
    pre_norm: normalise before attention.
    dtype, param_dtype: compute / parameter dtypes.
  """
  num_heads: int
  pre_norm: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tgt: jax.Array, query_pos: jax.Array,
               mask: jax.Array | None = None) -> jax.Array:
    """``[B, Q, C] -> [B, Q, C]``; queries and keys carry ``query_pos``, values do not;
    optional ``mask [B, Q, Q]`` (True = may attend)."""
    attn = MultiHeadAttention(self.num_heads, self.dtype, self.param_dtype, name="self_attn")
    norm = layer_norm("norm", self.dtype, self.param_dtype)
    mask = None if mask is None else mask[:, None]
    if self.pre_norm:
      tgt2 = norm(tgt)
      return tgt + attn(tgt2 + query_pos, tgt2 + query_pos, tgt2, mask)
    return norm(tgt + attn(tgt + query_pos, tgt + query_pos, tgt, mask))


class FFNLayer(nn.Module):
  """Official ``FFNLayer`` (ReLU): submodules ``linear1``, ``linear2``, ``norm``.

  Attributes:
    dim_feedforward: hidden width.
    pre_norm: normalise before the FFN.
    dtype, param_dtype: compute / parameter dtypes.
  """
  dim_feedforward: int = 2048
  pre_norm: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tgt: jax.Array) -> jax.Array:
    """``[B, Q, C] -> [B, Q, C]``."""
    c = tgt.shape[-1]
    norm = layer_norm("norm", self.dtype, self.param_dtype)

    def ffn(x):
      hidden = _ffn_dense(self.dim_feedforward, c, self.dtype, self.param_dtype, "linear1")(x)
      return _ffn_dense(c, self.dim_feedforward, self.dtype, self.param_dtype,
                        "linear2")(nn.relu(hidden))

    if self.pre_norm:
      return tgt + ffn(norm(tgt))
    return norm(tgt + ffn(tgt))


class MultiScaleMaskedTransformerDecoder(nn.Module):
  """Mask2Former's ``MultiScaleMaskedTransformerDecoder`` (image variant).

  Parameters: ``query_feat_embed`` / ``query_embed`` (content / positional queries, official
  ``query_feat`` / ``query_embed``; both ``nn.Embed`` so the optimizer's no-decay embedding rule
  matches, as ``WEIGHT_DECAY_EMBED = 0`` does officially), ``level_embed``, ``input_proj_{l}``
  (only if ``in_channels != hidden_dim`` or ``enforce_input_proj``),
  ``transformer_{cross_attention,self_attention,ffn}_layers_{i}``, ``decoder_norm``,
  ``class_embed``, ``mask_embed/layers_{0,1,2}``.

  Attributes:
    num_classes: ``K`` (the class head has ``K + 1`` outputs, no-object last).
    hidden_dim: width ``C`` (``HIDDEN_DIM``).
    num_queries: ``Q`` (``NUM_OBJECT_QUERIES``).
    num_heads: attention heads (``NHEADS``).
    dim_feedforward: FFN width (``DIM_FEEDFORWARD``).
    dec_layers: decoder layers ``L`` = official ``DEC_LAYERS - 1`` (9).
    pre_norm: pre-norm layers (``PRE_NORM``; False in every official config).
    mask_dim: mask embedding width, must equal the mask features' width (``MASK_DIM``).
    in_channels: width of the incoming multi-scale features (None = ``hidden_dim``).
    enforce_input_proj: add the 1x1 input projections even when widths agree.
    num_feature_levels: levels cycled through (always 3 officially).
    remat_layers: ``nn.remat`` every attention / FFN block (recomputed in the backward pass:
      same parameters and outputs, less activation memory).
    mask_pooling: after the first prediction, add ``mask_pool_proj`` (zero-initialised
      linear) of the query's mask-pooled mask features — the features averaged with the
      weights ``sigmoid`` of its previous mask logits, as K-Net's kernel update — to its mask
      embedding, so the embedding is read from the 1/4-resolution features it is multiplied
      with (the memory levels are 1/8–1/32). Not in the official model.
    query_anchors: the prediction from the learnable queries (before the first layer) gets a
      Gaussian log-prior ``-|p - a_q|² / (2 σ_q²)`` around a learned anchor ``a_q``
      (``anchor_centers``, (x, y) uniform in the padded frame) of width ``σ_q``
      (``anchor_log_sigma``, init 0.1), so each query's first attention mask covers the objects
      near its anchor only: same-class neighbours are no longer alike to every query. Not in
      the official model.
    mask_piloting: training only (MP-Former, Zhang et al. 2023): ``decode(pilot=...)`` adds
      one query per ground-truth instance (content ``pilot_label_embed`` of its class, position
      ``pilot_pos_embed``) whose cross-attention sees only that instance's ground truth, at
      every layer; their predictions are supervised against their own instance (no matching).
      It teaches the layers to turn an instance's region into the embedding that segments it
      and nothing else. Inference and the matching queries are unchanged. Not official.
    pilot_label_noise / pilot_point_noise: MP-Former's noised piloting (training only, drawn
      from the ``dropout`` rng stream): a piloted query's content is a uniformly random class
      with this probability (it is still supervised with its true class), and each cell of
      its attention mask at each level is flipped with this probability, so the layers learn
      to correct a wrong class and a rough region rather than copy them. 0 = exact ground
      truth.
    fine_memory: the decoder's memory levels are the 1/16 and 1/8 maps and the 1/4 mask
      features (official: 1/32, 1/16, 1/8), same parameters: on small inputs with small
      objects the 1/32 map holds an object in less than one token, and a query cannot tell
      same-class neighbours apart in it. Not official.
    peak_prior: every prediction after the first adds a log-prior centred on the arg-max cell
      of the query's previous mask (per frame), with coefficients from ``peak_prior_head``
      (zero kernel, so it starts as a weak radial prior): a query can keep the object under
      its peak and drop a same-class neighbour (``layers/peak_prior.py``). Not official.
    peak_prior_scale: the prior's length scale σ₀ (fraction of the padded frame's side).
    peak_prior_template: side ``n`` of the prior's peak-relative shape template (``n × n``
      Gaussian bumps weighted per query; 0 = none; ``layers/peak_prior.py``). Not official.
    peak_prior_votes: with ``peak_prior``, a dense head on the mask features
      (``centre_offset_head``) predicts each cell's offset to its instance's centre
      (``centre_offsets [B, *S, 2]`` in the output, trained by ``loss.centre_offset_weight``) and
      the prior also pushes down cells voting for another centre than the peak's
      (``layers/peak_prior.py``). Not official.
    centre_offset_width: with ``peak_prior_votes``, the channels of a ``CentreOffsetTower``
      (two ``3 × 3`` convolutions) before the offset head; 0 = the linear head alone.
    dtype, param_dtype: compute / parameter dtypes.
  """
  num_classes: int
  hidden_dim: int = 256
  num_queries: int = 100
  num_heads: int = 8
  dim_feedforward: int = 2048
  dec_layers: int = 9
  pre_norm: bool = False
  mask_dim: int = 256
  in_channels: int | None = None
  enforce_input_proj: bool = False
  num_feature_levels: int = 3
  remat_layers: bool = False
  mask_pooling: bool = False
  query_anchors: bool = False
  mask_piloting: bool = False
  pilot_label_noise: float = 0.0
  pilot_point_noise: float = 0.0
  fine_memory: bool = False
  peak_prior: bool = False
  peak_prior_scale: float = PRIOR_SCALE
  peak_prior_template: int = 0
  peak_prior_votes: bool = False
  centre_offset_width: int = 0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    c = self.hidden_dim
    dt = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    # nn.Embedding's N(0, 1) init.
    embed = lambda n: nn.Embed(n, c, embedding_init=nn.initializers.normal(1.0), **dt)
    self.query_feat_embed = embed(self.num_queries)
    self.query_embed = embed(self.num_queries)
    self.level_embed = embed(self.num_feature_levels)
    in_channels = c if self.in_channels is None else self.in_channels
    if in_channels != c or self.enforce_input_proj:
      self.input_proj = [nn.Conv(c, (1, 1), kernel_init=c2_xavier_init,
                                 bias_init=nn.initializers.zeros, **dt)
                         for _ in range(self.num_feature_levels)]
    else:
      self.input_proj = None
    wrap = nn.remat if self.remat_layers else (lambda cls: cls)
    cross, self_attn, ffn = wrap(CrossAttentionLayer), wrap(SelfAttentionLayer), wrap(FFNLayer)
    self.transformer_cross_attention_layers = [
        cross(self.num_heads, self.pre_norm, **dt) for _ in range(self.dec_layers)]
    self.transformer_self_attention_layers = [
        self_attn(self.num_heads, self.pre_norm, **dt) for _ in range(self.dec_layers)]
    self.transformer_ffn_layers = [
        ffn(self.dim_feedforward, self.pre_norm, **dt) for _ in range(self.dec_layers)]
    self.decoder_norm = layer_norm(None, **dt)
    self.class_embed = torch_linear(self.num_classes + 1, c, **dt)
    self.mask_embed = MLP(c, self.mask_dim, 3, **dt)
    if self.query_anchors:
      self.anchor_centers = self.param(
          "anchor_centers",
          lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, 0.05, 0.95),
          (self.num_queries, 2), self.param_dtype)
      self.anchor_log_sigma = self.param(
          "anchor_log_sigma", nn.initializers.constant(jnp.log(0.1)), (self.num_queries,),
          self.param_dtype)
    if self.mask_piloting:
      self.pilot_label_embed = nn.Embed(self.num_classes, c,
                                        embedding_init=nn.initializers.normal(1.0), **dt)
      self.pilot_pos_embed = embed(1)
    if self.peak_prior:
      self.peak_prior_head = peak_prior_head(self.peak_prior_template, **dt)
    if self.peak_prior_votes:
      if not self.peak_prior:
        raise ValueError("peak_prior_votes needs peak_prior")
      self.centre_offset_head = centre_offset_head(**dt)
      self.centre_offset_tower = (CentreOffsetTower(self.centre_offset_width, **dt)
                                  if self.centre_offset_width else None)
      self.vote_prior_head = vote_prior_head(**dt)
    if self.mask_pooling:
      self.mask_pool_proj = nn.Dense(self.mask_dim, use_bias=False,
                                     kernel_init=nn.initializers.zeros, **dt)

  def project_level(self, x: jax.Array, level: int) -> jax.Array:
    """Memory content of one level: optional 1x1 projection + level embedding.

    Args:
      x: ``[..., h, w, C_in]`` (any leading axes, e.g. ``[B, h, w, C_in]`` or
        ``[B, T, h, w, C_in]``).
      level: level index.

    Returns:
      ``[..., h, w, C]``.
    """
    x = x.astype(self.dtype)
    if self.input_proj is not None:
      x = self.input_proj[level](x)
    elif x.shape[-1] != self.hidden_dim:
      raise ValueError(f"level {level} has {x.shape[-1]} channels but hidden_dim is "
                       f"{self.hidden_dim}; set in_channels to add input projections")
    return x + self.level_embed.embedding[level].astype(self.dtype)

  def memory_levels(self, multi_scale_features: Sequence[jax.Array],
                    mask_features: jax.Array) -> list[jax.Array]:
    """The maps the decoder attends, coarsest first (``fine_memory``: the 1/4 mask features
    replace the coarsest map)."""
    levels = list(multi_scale_features)
    if self.fine_memory:
      levels = levels[1:] + [mask_features]
    return levels

  def centre_offsets(self, mask_features: jax.Array) -> jax.Array:
    """``peak_prior_votes``: ``[..., H, W, D]`` mask features → float32 offsets
    ``[..., H, W, 2]`` of the cells to their instances' centres."""
    if self.centre_offset_tower is not None:
      mask_features = self.centre_offset_tower(mask_features)
    return self.centre_offset_head(mask_features).astype(jnp.float32)

  def anchor_prior(self, mask_features: jax.Array) -> jax.Array:
    """``query_anchors`` log-prior ``[1, Q, *S]`` (1 for each axis of ``S`` before ``H, W``) on
    the ``[B, *S, D]`` mask-feature grid, coordinates in [0, 1] of the padded frame."""
    h, w = mask_features.shape[-3:-1]
    ys = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
    xs = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
    centers = self.anchor_centers.astype(jnp.float32)                    # [Q, 2] (x, y)
    d2 = ((xs[None, None, :] - centers[:, 0, None, None]) ** 2
          + (ys[None, :, None] - centers[:, 1, None, None]) ** 2)       # [Q, H, W]
    sigma = jnp.exp(self.anchor_log_sigma.astype(jnp.float32))[:, None, None]
    prior = -d2 / (2 * sigma ** 2)
    extra = mask_features.ndim - 4                                       # T of [B, T, H, W, D]
    return prior.reshape(1, self.num_queries, *([1] * extra), h, w)

  def prediction_heads(self, output: jax.Array, mask_features: jax.Array,
                       target_size: Sequence[int], frame_valid: jax.Array | None = None,
                       previous_masks: jax.Array | None = None,
                       mask_prior: jax.Array | None = None,
                       votes: jax.Array | None = None
                       ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Shared heads on ``decoder_norm(output)`` (official ``forward_prediction_heads``).

    Args:
      output: ``[B, Q, C]`` decoder state.
      mask_features: ``[B, *S, D]`` (``S = (H, W)`` or ``(T, H, W)``).
      target_size: ``(h, w)`` of the level the next layer attends.
      frame_valid: optional ``[B, T]`` validity of the frames (video with padded frames).
      previous_masks: ``[B, Q, *S]`` the previous prediction's mask logits (``mask_pooling``,
        ``peak_prior``; None for the first prediction).
      mask_prior: optional additive mask logits broadcastable to ``[B, Q, *S]``.
      votes: ``peak_prior_votes``: ``[B, *S, 2]`` ``centre_votes`` of the cells.

    Returns:
      ``(class logits [B, Q, K+1], mask logits [B, Q, *S], attention mask [B, Q, N_next]
      (True = may attend), normed queries [B, Q, C])``.
    """
    normed = self.decoder_norm(output)
    logits = self.class_embed(normed)
    mask_embed = self.mask_embed(normed)
    if self.mask_pooling and previous_masks is not None:
      sums = mask_pool_sums(previous_masks, mask_features, frame_valid)
      mask_embed = mask_embed + self.mask_pool_proj(pooled_mean(*sums).astype(self.dtype))
    masks = jnp.einsum("bqc,b...c->bq...", mask_embed, mask_features.astype(self.dtype))
    if mask_prior is not None:
      masks = masks + mask_prior.astype(masks.dtype)
    if self.peak_prior:
      coefficients = self.peak_prior_head(normed)
      if previous_masks is not None:
        prior = peak_log_prior(coefficients, peak_coordinates(previous_masks), masks.shape[-2:],
                               self.peak_prior_scale)
        if votes is not None:
          prior = prior + vote_log_prior(self.vote_prior_head(normed), votes,
                                         peak_index(previous_masks), self.peak_prior_scale)
        masks = masks + prior.astype(masks.dtype)
    allowed = attention_mask_from_logits(masks, target_size, frame_valid=frame_valid)
    return logits, masks, allowed, normed

  def pilot_attention(self, pilot_masks: jax.Array, pilot_valid: jax.Array,
                      size: Sequence[int], frame_valid: jax.Array | None = None,
                      flip_key: jax.Array | None = None) -> jax.Array:
    """Mask-piloted queries' cross-attention mask at a level: the ground truth's area fraction
    ≥ 0.5 there (``pilot_masks [B, G, *extra, H, W]`` at any resolution, ``extra = (T,)`` for
    clips), each cell flipped with probability ``pilot_point_noise`` when ``flip_key`` is
    given, empty rows and padding slots unblocked (on the valid frames of ``frame_valid
    [B, T]`` only). Returns ``[B, G, prod(extra)·h·w]``."""
    b, g = pilot_masks.shape[:2]
    area = jax.image.resize(pilot_masks.astype(jnp.float32),
                            (*pilot_masks.shape[:-2], *size), "linear", antialias=True)
    extra = area.ndim - 4
    allowed = area >= MASK_THRESHOLD
    if flip_key is not None and self.pilot_point_noise > 0:
      allowed = allowed ^ jax.random.bernoulli(flip_key, self.pilot_point_noise, allowed.shape)
    allowed = allowed & pilot_valid.reshape(b, g, *([1] * (extra + 2)))
    if frame_valid is None:
      return unblock_empty_rows(allowed.reshape(b, g, -1))
    key_valid = jnp.broadcast_to(frame_valid.astype(bool)[:, None, ..., None, None],
                                 allowed.shape).reshape(b, g, -1)
    return unblock_empty_rows(allowed.reshape(b, g, -1) & key_valid, key_valid)

  def decode(self, memories: Sequence[jax.Array], positions: Sequence[jax.Array],
             level_sizes: Sequence[Sequence[int]], mask_features: jax.Array,
             frame_valid: jax.Array | None = None,
             pilot: dict[str, jax.Array] | None = None) -> dict[str, Any]:
    """The decoder proper, on flattened memory (shared by image and video variants).

    Args:
      memories: per level ``[B, N_l, C]`` content (level embedding included).
      positions: per level ``[B, N_l, C]`` key positional encodings.
      level_sizes: per level ``(h_l, w_l)``; ``N_l = prod(extra)·h_l·w_l``.
      mask_features: ``[B, *S, D]``.
      frame_valid: optional ``[B, T]`` (video): keys of invalid frames are never attended.
      pilot: training with ``mask_piloting``: ``masks [B, G, *S]`` bool ground truth (the
        shape of the predicted masks: ``[B, G, T, H, W]`` for clips, any resolution),
        ``labels [B, G]``, ``valid [B, G]``; adds ``G`` mask-piloted queries (below).

    Returns:
      The output dict of ``__call__``; with ``pilot`` also ``pilot_outputs``: the piloted
      queries' ``{"pred_logits" [B, G, K+1], "pred_masks" [B, G, *S]}`` of every prediction
      (initial, then each layer), query ``g`` answering for ground-truth slot ``g``.
    """
    n_levels = self.num_feature_levels
    if not len(memories) == len(positions) == len(level_sizes) == n_levels:
      raise ValueError(f"expected {n_levels} levels, got {len(memories)}")
    b, q, c = mask_features.shape[0], self.num_queries, self.hidden_dim
    query_pos = jnp.broadcast_to(self.query_embed.embedding[None], (b, q, c)).astype(self.dtype)
    output = jnp.broadcast_to(self.query_feat_embed.embedding[None], (b, q, c)).astype(self.dtype)
    positions = [p.astype(self.dtype) for p in positions]
    prior = self.anchor_prior(mask_features) if self.query_anchors else None
    offsets = votes = None
    if self.peak_prior_votes:
      offsets = self.centre_offsets(mask_features)                          # [B, *S, 2]
      votes = centre_votes(offsets)
    self_mask = None
    if self.mask_piloting and pilot is None and self.is_initializing():
      # Training calls pass ``pilot``; init (without one) must still create its parameters.
      self.pilot_label_embed(jnp.zeros((1,), jnp.int32))
      self.pilot_pos_embed(jnp.zeros((1,), jnp.int32))
    if pilot is not None:
      # MP-Former: one query per ground-truth instance, content = its class embedding, whose
      # cross-attention is restricted to that instance's ground truth at every layer. The two
      # groups do not see each other in self-attention: the matching queries are unchanged.
      g = pilot["labels"].shape[1]
      labels, flip_keys = pilot["labels"], [None] * len(level_sizes)
      if self.pilot_label_noise > 0 or self.pilot_point_noise > 0:
        label_key, *flip_keys = jax.random.split(self.make_rng("dropout"), 1 + len(level_sizes))
        relabel = jax.random.bernoulli(label_key, self.pilot_label_noise, labels.shape)
        random_labels = jax.random.randint(jax.random.fold_in(label_key, 1), labels.shape, 0,
                                           self.num_classes)
        labels = jnp.where(relabel, random_labels, labels)
      output = jnp.concatenate(
          [output, self.pilot_label_embed(labels).astype(self.dtype)], 1)
      query_pos = jnp.concatenate([query_pos, jnp.broadcast_to(
          self.pilot_pos_embed.embedding[None], (b, g, c)).astype(self.dtype)], 1)
      is_pilot = jnp.arange(q + g) >= q
      valid_keys = jnp.concatenate([jnp.ones((b, q), bool), pilot["valid"].astype(bool)], 1)
      # Two groups: matching queries see only each other, piloted ones only each other.
      self_mask = (is_pilot[None, :, None] == is_pilot[None, None, :]) & valid_keys[:, None, :]
      self_mask = unblock_empty_rows(self_mask)
      pilot_allowed = [self.pilot_attention(pilot["masks"], pilot["valid"], size, frame_valid,
                                            key)
                       for size, key in zip(level_sizes, flip_keys, strict=True)]
      if prior is not None:
        prior = jnp.concatenate(
            [prior, jnp.zeros((1, g, *prior.shape[2:]), prior.dtype)], 1)

    def heads(output, level, previous=None, mask_prior=None):
      logits, masks, allowed, normed = self.prediction_heads(
          output, mask_features, level_sizes[level], frame_valid, previous, mask_prior, votes)
      if pilot is not None:
        allowed = jnp.concatenate([allowed[:, :q], pilot_allowed[level]], 1)
      return logits, masks, allowed, normed

    logits, masks, allowed, _ = heads(output, 0, mask_prior=prior)
    all_logits, all_masks, query_features = [logits], [masks], []
    for i in range(self.dec_layers):
      level = i % n_levels
      output = self.transformer_cross_attention_layers[i](
          output, memories[level], allowed, positions[level], query_pos)
      output = self.transformer_self_attention_layers[i](output, query_pos, self_mask)
      output = self.transformer_ffn_layers[i](output)
      logits, masks, allowed, normed = heads(output, (i + 1) % n_levels, masks)
      all_logits.append(logits)
      all_masks.append(masks)
      query_features.append(normed[:, :q])

    result = {
        "pred_logits": all_logits[-1][:, :q],
        "pred_masks": all_masks[-1][:, :q],
        "aux_outputs": [{"pred_logits": lg[:, :q], "pred_masks": mk[:, :q]}
                        for lg, mk in zip(all_logits[:-1], all_masks[:-1], strict=True)],
        "query_features": jnp.stack(query_features) if query_features else
                          jnp.zeros((0, b, q, c), self.dtype),
    }
    if offsets is not None:
      result["centre_offsets"] = offsets
    if pilot is not None:
      result["pilot_outputs"] = [{"pred_logits": lg[:, q:], "pred_masks": mk[:, q:]}
                                 for lg, mk in zip(all_logits, all_masks, strict=True)]
    return result

  def __call__(self, multi_scale_features: Sequence[jax.Array],
               mask_features: jax.Array, pilot: dict[str, jax.Array] | None = None
               ) -> dict[str, Any]:
    """Runs the decoder on one batch of images.

    Args:
      multi_scale_features: ``num_feature_levels`` maps ``[B, h_l, w_l, C_in]``, coarsest first
        (the pixel decoder's ``multi_scale_features``).
      mask_features: ``[B, H, W, mask_dim]`` (1/4 resolution).
      pilot: ``mask_piloting`` training inputs (``decode``), or None.

    Returns:
      ``pred_logits``: ``[B, Q, K+1]`` class logits of the last layer;
      ``pred_masks``: ``[B, Q, H, W]`` mask logits of the last layer;
      ``aux_outputs``: list of ``L`` dicts with the same two keys — the prediction from the
        learnable queries, then layers ``1 .. L-1`` (official order);
      ``query_features``: ``[L, B, Q, C]``, ``decoder_norm`` of the output of every layer
        (not the initial queries) — what the heads see, and what VITA consumes (spec §3.2);
      ``centre_offsets``: ``[B, H, W, 2]`` with ``peak_prior_votes``.
    """
    memories, positions, sizes = [], [], []
    for level, x in enumerate(self.memory_levels(multi_scale_features, mask_features)):
      b, h, w, _ = x.shape
      sizes.append((h, w))
      positions.append(sine_position_2d((b, h, w), self.hidden_dim // 2)
                       .reshape(b, h * w, self.hidden_dim))
      memories.append(self.project_level(x, level).reshape(b, h * w, self.hidden_dim))
    return self.decode(memories, positions, sizes, mask_features, pilot=pilot)


class VideoMultiScaleMaskedTransformerDecoder(MultiScaleMaskedTransformerDecoder):
  """Mask2Former-VIS's ``VideoMultiScaleMaskedTransformerDecoder``: the image decoder on the
  spatio-temporal volume (3-D masked attention, temporal sine encoding, ``[Q, T, H, W]`` masks).

  Same attributes and parameters as ``MultiScaleMaskedTransformerDecoder``.
  """

  def __call__(self, multi_scale_features: Sequence[jax.Array], mask_features: jax.Array,
               frame_valid: jax.Array | None = None, pilot: dict[str, jax.Array] | None = None
               ) -> dict[str, Any]:
    """Runs the decoder on a batch of clips.

    Args:
      multi_scale_features: ``num_feature_levels`` maps ``[B, T, h_l, w_l, C_in]``, coarsest
        first.
      mask_features: ``[B, T, H, W, mask_dim]`` (1/4 resolution).
      frame_valid: optional ``[B, T]`` bool, False for padded frames (never attended, not
        counted by the temporal encoding); None = every frame is real.
      pilot: ``mask_piloting`` training inputs (``decode``; ground-truth tracks
        ``masks [B, G, T, H, W]``): one piloted query per track, its attention restricted to
        the track's masks in every frame.

    Returns:
      As the image decoder, with ``pred_masks`` ``[B, Q, T, H, W]`` (likewise in
      ``aux_outputs``); the memory of level ``l`` is ``[B, T·h_l·w_l, C]`` in (t, h, w) order.
    """
    memories, positions, sizes = [], [], []
    for level, x in enumerate(self.memory_levels(multi_scale_features, mask_features)):
      b, t, h, w, _ = x.shape
      sizes.append((h, w))
      if frame_valid is None:
        padding = (b, t, h, w)
      else:
        padding = jnp.broadcast_to(~frame_valid.astype(bool)[:, :, None, None], (b, t, h, w))
      positions.append(sine_position_3d(padding, self.hidden_dim // 2)
                       .reshape(b, t * h * w, self.hidden_dim))
      memories.append(self.project_level(x, level).reshape(b, t * h * w, self.hidden_dim))
    return self.decode(memories, positions, sizes, mask_features, frame_valid, pilot)
