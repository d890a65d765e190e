"""Mask2Former's ``MSDeformAttnPixelDecoder`` (spec §1.2), channels-last.

Backbone maps ``res2..res5`` → input projections (1x1 conv + GroupNorm) of the transformer levels
(coarsest first) → ``num_encoder_layers`` post-norm deformable self-attention layers over the
flattened levels (2-D sine position + level embedding on the queries) → split back into maps →
extra FPN levels down to ``common_stride`` (lateral 1x1 conv + GN, **bilinear** upsample + add,
3x3 conv + GN + ReLU) → ``mask_features`` 1x1 conv.

Parameter names follow the official module (``input_proj_{i}``, ``level_embed``,
``encoder_layers_{i}/{self_attn,norm1,linear1,linear2,norm2}``, ``adapter_{k}``, ``layer_{k}``,
``mask_features``); ``vis_jax/convert_mask2former_heads.py`` maps official and Hugging Face
checkpoints onto them. Initialisers reproduce the official ones.

Differences from the official module, all deliberate: no padding mask (the official one is
all-valid too), no dropout (every official config sets 0.0), and ``dtype`` may be lowered
(the official forward is fp32; the deformable sampling here always is, see ``MSDeformAttn``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vis_jax.models.layers.deformable import MSDeformAttn
from vis_jax.models.layers.mlp import torch_linear_bias_init
from vis_jax.models.layers.position import sine_position_2d

# The Mask2Former transformer decoder always consumes three scales.
MASKFORMER_NUM_FEATURE_LEVELS = 3
# PyTorch's LayerNorm / GroupNorm epsilon (Flax defaults to 1e-6).
NORM_EPS = 1e-5
# fvcore's c2_xavier_fill: kaiming_uniform_(a=1) = U(±sqrt(3 / fan_in)), bias 0.
c2_xavier_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def resize_bilinear(x: jax.Array, size: Sequence[int], axes: Sequence[int] = (1, 2)) -> jax.Array:
  """``F.interpolate(mode="bilinear", align_corners=False)`` along ``axes`` (no antialiasing).

  ``jax.image.resize`` uses the same half-pixel centres; antialiasing is off so that
  downsampling samples the two nearest pixels like PyTorch (spec §8.1). Axes whose size does not
  change are left untouched.

  Args:
    x: any array.
    size: target sizes of ``axes``.
    axes: the two (or more) axes to resize, e.g. ``(1, 2)`` for ``[B, H, W, C]`` or
      ``(-2, -1)`` for ``[B, Q, H, W]``.

  Returns:
    ``x`` resized, same dtype.
  """
  shape = list(x.shape)
  for axis, n in zip(axes, size, strict=True):
    shape[axis] = int(n)
  if tuple(shape) == x.shape:
    return x
  return jax.image.resize(x, tuple(shape), method="linear", antialias=False)


def layer_norm(name: str, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32
               ) -> nn.LayerNorm:
  """``nn.LayerNorm`` with PyTorch's epsilon and two-pass variance."""
  return nn.LayerNorm(epsilon=NORM_EPS, dtype=dtype, param_dtype=param_dtype,
                      use_fast_variance=False, name=name)


class ConvNorm(nn.Module):
  """Conv → GroupNorm (→ ReLU): detectron2 ``Conv2d(norm="GN")`` / ``Sequential(conv, GN)``.

  Submodules ``conv`` and ``norm``.

  Attributes:
    features: output channels.
    kernel_size: square kernel size (padding keeps the spatial size).
    use_bias: conv bias (the official code drops it when a norm follows, except in
      ``input_proj``).
    relu: apply ReLU after the norm.
    num_groups: GroupNorm groups.
    kernel_init: conv kernel initialiser.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  features: int
  kernel_size: int = 1
  use_bias: bool = False
  relu: bool = False
  num_groups: int = 32
  kernel_init: nn.initializers.Initializer = c2_xavier_init
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``[B, H, W, C_in] -> [B, H, W, features]``."""
    pad = self.kernel_size // 2
    x = nn.Conv(self.features, (self.kernel_size, self.kernel_size),
                padding=((pad, pad), (pad, pad)), use_bias=self.use_bias, dtype=self.dtype,
                param_dtype=self.param_dtype, kernel_init=self.kernel_init,
                bias_init=nn.initializers.zeros, name="conv")(x)
    x = nn.GroupNorm(num_groups=self.num_groups, epsilon=NORM_EPS, dtype=self.dtype,
                     param_dtype=self.param_dtype, use_fast_variance=False, name="norm")(x)
    return nn.relu(x) if self.relu else x


class MSDeformAttnEncoderLayer(nn.Module):
  """Post-norm encoder layer: deformable self-attention → add & norm → FFN → add & norm.

  Attributes:
    d_model: width ``C``.
    dim_feedforward: FFN hidden width (official: 1024).
    n_levels, n_heads, n_points: ``MSDeformAttn`` geometry.
    dtype, param_dtype: compute / parameter dtypes.
    batch_mode, map_batch_size, query_chunk, remat: ``MSDeformAttn`` memory knobs.
  """
  d_model: int = 256
  dim_feedforward: int = 1024
  n_levels: int = 3
  n_heads: int = 8
  n_points: int = 4
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  batch_mode: str = "vmap"
  map_batch_size: int | None = None
  query_chunk: int | None = None
  remat: bool = False

  @nn.compact
  def __call__(self, src: jax.Array, pos: jax.Array, reference_points: jax.Array,
               spatial_shapes: Sequence[tuple[int, int]]) -> jax.Array:
    """One encoder layer.

    Args:
      src: ``[B, S, C]`` flattened tokens of all levels.
      pos: ``[B, S, C]`` positional + level embedding (added to the queries only).
      reference_points: ``[B, S, L, 2]`` (x, y) in [0, 1].
      spatial_shapes: static ``((H_l, W_l), ...)``.

    Returns:
      ``[B, S, C]``.
    """
    c = self.d_model
    src2 = MSDeformAttn(d_model=c, n_levels=self.n_levels, n_heads=self.n_heads,
                        n_points=self.n_points, dtype=self.dtype, param_dtype=self.param_dtype,
                        batch_mode=self.batch_mode, map_batch_size=self.map_batch_size,
                        query_chunk=self.query_chunk, remat=self.remat,
                        name="self_attn")(src + pos, reference_points, src, spatial_shapes)
    src = layer_norm("norm1", self.dtype, self.param_dtype)(src + src2)

    def linear(features, fan_in, name):
      # The official encoder xavier-fills every matrix; biases keep nn.Linear's default.
      return nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                      kernel_init=nn.initializers.xavier_uniform(),
                      bias_init=torch_linear_bias_init(fan_in))

    src2 = linear(c, self.dim_feedforward, "linear2")(
        nn.relu(linear(self.dim_feedforward, c, "linear1")(src)))
    return layer_norm("norm2", self.dtype, self.param_dtype)(src + src2)


def encoder_reference_points(spatial_shapes: Sequence[tuple[int, int]]) -> np.ndarray:
  """Pixel centres of every level, normalised to [0, 1]: ``[S, 2]`` (x, y), levels concatenated.

  With all-valid maps (valid ratio 1) the official per-level reference points are this same
  array for every level.
  """
  refs = []
  for h, w in spatial_shapes:
    y, x = np.meshgrid((np.arange(h, dtype=np.float32) + 0.5) / h,
                       (np.arange(w, dtype=np.float32) + 0.5) / w, indexing="ij")
    refs.append(np.stack([x.reshape(-1), y.reshape(-1)], -1))
  return np.concatenate(refs, 0)


class MSDeformAttnPixelDecoder(nn.Module):
  """Mask2Former pixel decoder.

  Attributes:
    in_features: backbone feature names, finest first (official ``IN_FEATURES``).
    feature_strides: stride of each ``in_features`` entry.
    transformer_in_features: the subset fed to the deformable encoder
      (``DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES``).
    conv_dim: width of every map (``CONVS_DIM``).
    mask_dim: ``mask_features`` width (``MASK_DIM``).
    num_encoder_layers: deformable encoder layers (``TRANSFORMER_ENC_LAYERS``).
    num_heads: deformable attention heads (``MASK_FORMER.NHEADS``).
    num_points: sampling points per head and level.
    dim_feedforward: encoder FFN width (hard-coded 1024 officially).
    common_stride: stride of ``mask_features``; FPN levels are added down to it.
    mask_position: add a learned linear map (zero at initialisation) of the 2-D sine position
      encoding to the finest FPN map (``pre_mask_features``, hence ``mask_features``). Not in
      the official module: without it a mask feature says nothing about where its pixel is, so
      a query cannot tell two identical-looking objects apart (the CoordConv argument of SOLO);
      small detectors trained from scratch merge same-class neighbours.
    memory_position: add a learned linear map (zero at initialisation, one per level) of the
      2-D sine position encoding to each ``multi_scale_features`` map, the memory the
      transformer decoder's cross-attention reads. Not in the official module: there the
      position encoding enters only the attention keys, so the values a query gathers, hence
      its mask embedding, say nothing about where they came from, and a position-aware mask
      feature (``mask_position``) has nothing to match.
    num_groups: GroupNorm groups.
    dtype: compute dtype (the official decoder runs in fp32).
    param_dtype: parameter dtype.
    batch_mode, map_batch_size, query_chunk, remat: ``MSDeformAttn`` memory knobs.
  """
  in_features: Sequence[str] = ("res2", "res3", "res4", "res5")
  feature_strides: Sequence[int] = (4, 8, 16, 32)
  transformer_in_features: Sequence[str] = ("res3", "res4", "res5")
  conv_dim: int = 256
  mask_dim: int = 256
  num_encoder_layers: int = 6
  num_heads: int = 8
  num_points: int = 4
  dim_feedforward: int = 1024
  common_stride: int = 4
  mask_position: bool = False
  memory_position: bool = False
  num_groups: int = 32
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  batch_mode: str = "vmap"
  map_batch_size: int | None = None
  query_chunk: int | None = None
  remat: bool = False

  def _levels(self) -> tuple[list[str], list[str]]:
    """(transformer features coarsest first, FPN features finest first)."""
    if len(self.in_features) != len(self.feature_strides):
      raise ValueError(f"in_features {self.in_features} and feature_strides "
                       f"{self.feature_strides} differ in length")
    stride = dict(zip(self.in_features, self.feature_strides, strict=True))
    unknown = [f for f in self.transformer_in_features if f not in stride]
    if unknown:
      raise ValueError(f"transformer_in_features {unknown} are not in in_features")
    transformer = sorted(self.transformer_in_features, key=stride.__getitem__)[::-1]
    finest = min(stride[f] for f in transformer)
    num_fpn = int(round(math.log2(finest) - math.log2(self.common_stride)))
    fpn = sorted(self.in_features, key=stride.__getitem__)[:max(num_fpn, 0)]
    return transformer, fpn

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array]) -> dict[str, Any]:
    """Runs the pixel decoder.

    Args:
      features: ``{name: [B, H/s, W/s, C_name]}`` for every name of ``in_features``.

    Returns:
      ``mask_features``: ``[B, H/4, W/4, mask_dim]`` (at ``common_stride``);
      ``multi_scale_features``: tuple of 3 ``[B, h_l, w_l, conv_dim]`` maps, coarsest first
        (1/32, 1/16, 1/8 by default), what the transformer decoder consumes;
      ``pre_mask_features``: ``[B, H/4, W/4, conv_dim]``, the finest FPN map before the
        ``mask_features`` projection (VITA's ``vita_mask_features`` input, spec §3.2).
    """
    missing = [f for f in self.in_features if f not in features]
    if missing:
      raise ValueError(f"features lack {missing}; got {sorted(features)}")
    transformer_names, fpn_names = self._levels()
    c = self.conv_dim
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, num_groups=self.num_groups)

    srcs = [ConvNorm(c, 1, use_bias=True, kernel_init=nn.initializers.xavier_uniform(),
                     name=f"input_proj_{i}", **kw)(features[name].astype(self.dtype))
            for i, name in enumerate(transformer_names)]
    batch = srcs[0].shape[0]
    shapes = tuple((int(s.shape[1]), int(s.shape[2])) for s in srcs)
    n_levels = len(srcs)

    level_embed = self.param("level_embed", nn.initializers.normal(1.0), (n_levels, c),
                             self.param_dtype)
    pos = jnp.concatenate(
        [(sine_position_2d((batch, h, w), c // 2) + level_embed[i]).reshape(batch, h * w, c)
         for i, (h, w) in enumerate(shapes)], axis=1).astype(self.dtype)
    tokens = jnp.concatenate([s.reshape(batch, -1, c) for s in srcs], axis=1)
    ref = jnp.asarray(encoder_reference_points(shapes))
    ref = jnp.broadcast_to(ref[None, :, None, :], (batch, ref.shape[0], n_levels, 2))

    for i in range(self.num_encoder_layers):
      tokens = MSDeformAttnEncoderLayer(
          d_model=c, dim_feedforward=self.dim_feedforward, n_levels=n_levels,
          n_heads=self.num_heads, n_points=self.num_points, dtype=self.dtype,
          param_dtype=self.param_dtype, batch_mode=self.batch_mode,
          map_batch_size=self.map_batch_size, query_chunk=self.query_chunk, remat=self.remat,
          name=f"encoder_layers_{i}")(tokens, pos, ref, shapes)

    outs, start = [], 0
    for h, w in shapes:
      outs.append(tokens[:, start:start + h * w].reshape(batch, h, w, c))
      start += h * w

    # Coarse-to-fine; adapter_k / layer_k belong to the k-th finest backbone feature.
    for k in range(len(fpn_names), 0, -1):
      lateral = ConvNorm(c, 1, name=f"adapter_{k}", **kw)(features[fpn_names[k - 1]]
                                                           .astype(self.dtype))
      y = lateral + resize_bilinear(outs[-1], lateral.shape[1:3])
      outs.append(ConvNorm(c, 3, relu=True, name=f"layer_{k}", **kw)(y))
    def learned_position(x: jax.Array, name: str) -> jax.Array:
      h, w = x.shape[1:3]
      return x + nn.Dense(c, use_bias=False, kernel_init=nn.initializers.zeros,
                          dtype=self.dtype, param_dtype=self.param_dtype, name=name)(
                              sine_position_2d((batch, h, w), c // 2).astype(self.dtype))

    if self.memory_position:
      # After the FPN, so the finer maps and mask features are not shifted by it.
      for i in range(min(MASKFORMER_NUM_FEATURE_LEVELS, n_levels)):
        outs[i] = learned_position(outs[i], f"memory_position_{i}")
    if self.mask_position:
      outs[-1] = learned_position(outs[-1], "mask_position")

    mask_features = nn.Conv(self.mask_dim, (1, 1), dtype=self.dtype,
                            param_dtype=self.param_dtype, kernel_init=c2_xavier_init,
                            bias_init=nn.initializers.zeros, name="mask_features")(outs[-1])
    return {
        "mask_features": mask_features,
        "multi_scale_features": tuple(outs[:MASKFORMER_NUM_FEATURE_LEVELS]),
        "pre_mask_features": outs[-1],
    }
