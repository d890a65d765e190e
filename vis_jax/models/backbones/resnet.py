"""ResNet-18/34/50/101/152 in the detectron2 layout, with frozen batch norm.

Behaviour follows detectron2 ``build_resnet_backbone`` as configured by Mask2Former / VITA
(spec §1.1): basic stem (7×7/2 conv + FrozenBN + ReLU + 3×3/2 max-pool, padding 1), stages
``res2..res5`` whose first block strides by 2 (``res2``: 1), the stride of a bottleneck on the
3×3 conv (``stride_in_1x1=False``, the torchvision "v1.5" layout of the ``R-50.pkl`` weights),
and a 1×1 projection shortcut (+ FrozenBN) whenever a block changes the channel count.

Parameter layout (mirrors detectron2's state-dict names so conversion is a rename):

  params/stem/conv1/kernel                [7, 7, 3, C0]          (HWIO)
  params/res{k}/block{i}/conv{1,2,3}/kernel, params/res{k}/block{i}/shortcut/kernel
  frozen_bn/<same module path>/norm/{weight,bias,running_mean,running_var}

Frozen batch norm: the four statistics live in the non-trainable ``frozen_bn`` collection (not in
``params``), exactly as detectron2's ``FrozenBatchNorm2d`` keeps them in buffers. They therefore
never receive gradients or optimizer state; pass them as model state
(``module.apply({"params": p, "frozen_bn": s}, x)``). The normalisation is folded into a per-channel
scale/shift computed in float32 and applied in the compute dtype, so bf16 compute is safe.

``freeze_at`` (detectron2 ``MODEL.BACKBONE.FREEZE_AT``): 0 trains every conv (the Mask2Former /
VITA setting), 1 freezes the stem, k ≥ 2 freezes the stem and ``res2..res{k}``. Frozen stages get
``stop_gradient`` on their output (their kernels receive exactly zero gradient), and
``frozen_patterns(freeze_at)`` gives the regexes for ``config.optim.frozen_patterns`` so the
optimizer neither decays nor keeps state for them.

``norm`` (detectron2 ``MODEL.RESNETS.NORM``): ``"FrozenBN"`` (above; every official checkpoint)
or ``"GN"``: trainable GroupNorm (``params/.../norm/{scale,bias}``, ``gcd(norm_groups, C)``
groups so toy widths work), the detectron2 choice for training a ResNet from scratch — a
FrozenBN network initialised at random has no trainable normalisation at all.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

FROZEN_BN = "frozen_bn"
BN_EPS = 1e-5
STAGES = ("res2", "res3", "res4", "res5")
NORMS = ("FrozenBN", "GN")

# detectron2's ``num_blocks_per_stage``; 18/34 use basic blocks, the rest bottlenecks.
NUM_BLOCKS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}

# c2_msra_fill: He-normal over fan_out, as detectron2 initialises its convs.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def frozen_patterns(freeze_at: int, scope: str = "backbone") -> tuple[str, ...]:
  """Regexes (for ``config.optim.frozen_patterns``) over ``a/b/kernel`` parameter paths.

  Args:
    freeze_at: detectron2 ``FREEZE_AT`` (0 = nothing frozen, 1 = stem, k = stem + res2..resk).
    scope: the module name under which the backbone sits in the full model's params.
  """
  names = (["stem"] if freeze_at >= 1 else []) + [
      f"res{k}" for k in range(2, 6) if freeze_at >= k]
  return tuple(rf"(^|/){scope}/{name}/" for name in names)


class FrozenBatchNorm(nn.Module):
  """detectron2 ``FrozenBatchNorm2d``: ``y = x·w/√(var+ε) + (b − mean·w/√(var+ε))``.

  The statistics are variables of the ``frozen_bn`` collection, initialised to the identity
  transform (``running_var = 1 − ε`` as in detectron2).
  """

  eps: float = BN_EPS
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``x [..., C]`` → ``[..., C]`` in ``dtype``."""
    c = x.shape[-1]
    weight = self.variable(FROZEN_BN, "weight", lambda: jnp.ones((c,), jnp.float32))
    bias = self.variable(FROZEN_BN, "bias", lambda: jnp.zeros((c,), jnp.float32))
    mean = self.variable(FROZEN_BN, "running_mean", lambda: jnp.zeros((c,), jnp.float32))
    var = self.variable(FROZEN_BN, "running_var",
                        lambda: jnp.full((c,), 1.0 - self.eps, jnp.float32))
    # Folding in fp32 keeps the rsqrt of tiny variances exact; only the affine runs in dtype.
    scale = weight.value.astype(jnp.float32) * jax.lax.rsqrt(
        var.value.astype(jnp.float32) + self.eps)
    shift = bias.value.astype(jnp.float32) - mean.value.astype(jnp.float32) * scale
    return x.astype(self.dtype) * scale.astype(self.dtype) + shift.astype(self.dtype)


# Inputs this narrow (RGB) convolve as a patch matmul; see ``conv2d``.
IM2COL_MAX_CHANNELS = 4


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
  """``x [B, H, W, C_in]`` ⊛ ``kernel [k, k, C_in, C_out]`` with symmetric zero ``padding``.

  Inputs with at most ``IM2COL_MAX_CHANNELS`` channels (the RGB stem) run as one patch matrix
  ``[B, H', W', k·k·C_in]`` times the reshaped kernel: the same sum of products, but XLA's CPU
  convolution with three input channels is ~1.6x slower than that matmul (forward + kernel
  gradient, ``[8, 160, 160, 3]`` through the 7×7/2 stem), and TPUs prefer the wide contraction too.
  """
  k, c = kernel.shape[0], x.shape[-1]
  if c > IM2COL_MAX_CHANNELS or k == 1:
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=((padding, padding),) * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  out_h = (x.shape[1] + 2 * padding - k) // stride + 1
  out_w = (x.shape[2] + 2 * padding - k) // stride + 1
  # (row, column, channel)-major patch vectors, the order of an HWIO kernel's first three axes.
  patches = jnp.concatenate(
      [xp[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride]
       for i in range(k) for j in range(k)], axis=-1)
  return patches @ kernel.reshape(k * k * c, kernel.shape[-1])


class ConvNorm(nn.Module):
  """Bias-free conv + norm (detectron2 ``Conv2d(..., bias=False, norm=FrozenBN | GN)``).

  The kernel is ``[k, k, C_in, features]`` (HWIO); padding is symmetric ``padding`` pixels as in
  PyTorch (``SAME`` would pad (0, 1) for stride 2 on even sizes and shift the grid).
  """

  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  norm: str = "FrozenBN"
  norm_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``x [B, H, W, C_in]`` → ``[B, H', W', features]``, ``H' = ⌊(H + 2p − k)/s⌋ + 1``."""
    k = self.kernel_size
    kernel = self.param("kernel", conv_init, (k, k, x.shape[-1], self.features),
                        self.param_dtype)
    y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding)
    if self.norm == "GN":
      return nn.GroupNorm(num_groups=math.gcd(self.norm_groups, self.features), epsilon=BN_EPS,
                          dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(y)
    if self.norm != "FrozenBN":
      raise ValueError(f"ResNet norm {self.norm!r} not in {NORMS}")
    return FrozenBatchNorm(dtype=self.dtype, name="norm")(y)


class BasicStem(nn.Module):
  """7×7/2 conv + FrozenBN + ReLU + 3×3/2 max-pool (pad 1): ``[B,H,W,3]`` → ``[B,H/4,W/4,C]``
  (and the ``[B,H/2,W/2,C]`` activation before the pool)."""

  features: int = 64
  norm: str = "FrozenBN"
  norm_groups: int = 32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = ConvNorm(self.features, 7, 2, 3, self.norm, self.norm_groups, dtype=self.dtype,
                 name="conv1")(x)
    x = nn.relu(x)
    # flax pads max-pool windows with -inf, as F.max_pool2d does.
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))), x


class BasicBlock(nn.Module):
  """Two 3×3 convs (stride on the first) + identity/projection shortcut (ResNet-18/34)."""

  out_channels: int
  stride: int = 1
  norm: str = "FrozenBN"
  norm_groups: int = 32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``[B, H, W, C_in]`` → ``[B, H/stride, W/stride, out_channels]``."""
    conv = functools.partial(ConvNorm, norm=self.norm, norm_groups=self.norm_groups,
                             dtype=self.dtype)
    if x.shape[-1] != self.out_channels:
      shortcut = conv(self.out_channels, 1, self.stride, name="shortcut")(x)
    else:
      shortcut = x.astype(self.dtype)
    y = nn.relu(conv(self.out_channels, 3, self.stride, 1, name="conv1")(x))
    y = conv(self.out_channels, 3, 1, 1, name="conv2")(y)
    return nn.relu(y + shortcut)


class BottleneckBlock(nn.Module):
  """1×1 → 3×3 → 1×1 bottleneck + identity/projection shortcut (ResNet-50/101/152).

  ``stride_in_1x1=False`` puts the stride on the 3×3 conv (torchvision / Mask2Former weights);
  ``True`` on the first 1×1 (the original MSRA caffe2 weights).
  """

  out_channels: int
  bottleneck_channels: int
  stride: int = 1
  stride_in_1x1: bool = False
  norm: str = "FrozenBN"
  norm_groups: int = 32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``[B, H, W, C_in]`` → ``[B, H/stride, W/stride, out_channels]``."""
    conv = functools.partial(ConvNorm, norm=self.norm, norm_groups=self.norm_groups,
                             dtype=self.dtype)
    if x.shape[-1] != self.out_channels:
      shortcut = conv(self.out_channels, 1, self.stride, name="shortcut")(x)
    else:
      shortcut = x.astype(self.dtype)
    stride_1x1, stride_3x3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
    y = nn.relu(conv(self.bottleneck_channels, 1, stride_1x1, name="conv1")(x))
    y = nn.relu(conv(self.bottleneck_channels, 3, stride_3x3, 1, name="conv2")(y))
    y = conv(self.out_channels, 1, 1, name="conv3")(y)
    return nn.relu(y + shortcut)


class ResNetStage(nn.Module):
  """``num_blocks`` blocks named ``block0..``; only the first one strides."""

  num_blocks: int
  out_channels: int
  bottleneck_channels: int
  first_stride: int
  bottleneck: bool = True
  stride_in_1x1: bool = False
  norm: str = "FrozenBN"
  norm_groups: int = 32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    norm = dict(norm=self.norm, norm_groups=self.norm_groups, dtype=self.dtype)
    for i in range(self.num_blocks):
      stride = self.first_stride if i == 0 else 1
      if self.bottleneck:
        x = BottleneckBlock(self.out_channels, self.bottleneck_channels, stride,
                            self.stride_in_1x1, **norm, name=f"block{i}")(x)
      else:
        x = BasicBlock(self.out_channels, stride, **norm, name=f"block{i}")(x)
    return x


class ResNet(nn.Module):
  """detectron2 ResNet backbone returning ``res2..res5``.

  Attributes:
    depth: 18, 34, 50, 101 or 152 (block counts per stage from detectron2).
    num_blocks: overrides the per-stage block counts of ``depth`` (tests, ablations).
    freeze_at: detectron2 ``FREEZE_AT`` (see module docstring); Mask2Former/VITA use 0.
    stride_in_1x1: stride on the first 1×1 conv instead of the 3×3 (bottlenecks only).
    stem_out_channels: ``RESNETS.STEM_OUT_CHANNELS`` (64).
    res2_out_channels: ``RESNETS.RES2_OUT_CHANNELS`` (256; must be 64 for 18/34); doubles per
      stage.
    width_per_group: ``RESNETS.WIDTH_PER_GROUP`` (64) = bottleneck width of ``res2``; doubles per
      stage.
    norm: ``"FrozenBN"`` (official) or ``"GN"`` (trainable GroupNorm, for training from scratch).
    norm_groups: GroupNorm groups (``gcd`` with each layer's channels).
    stem_feature: also return ``"stem"``, the stem's stride-2 activation before its max-pool
      (a pixel decoder with ``common_stride=2`` builds its finest FPN level from it).
    dtype: compute dtype (parameters and BN statistics stay float32).
  """

  depth: int = 50
  num_blocks: Sequence[int] | None = None
  freeze_at: int = 0
  stride_in_1x1: bool = False
  stem_out_channels: int = 64
  res2_out_channels: int = 256
  width_per_group: int = 64
  norm: str = "FrozenBN"
  norm_groups: int = 32
  stem_feature: bool = False
  dtype: Dtype = jnp.float32

  @property
  def bottleneck(self) -> bool:
    return self.depth >= 50

  @property
  def feature_channels(self) -> dict[str, int]:
    """Channels of ``res2..res5``."""
    return {name: self.res2_out_channels * 2**i for i, name in enumerate(STAGES)}

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    """Backbone features.

    Args:
      images: ``[B, H, W, 3]`` normalised images (see ``preprocess``); H, W multiples of 32 give
        exact strides.

    Returns:
      ``{"res2": [B, H/4, W/4, C2], "res3": [B, H/8, W/8, 2·C2], "res4": [.., H/16, .., 4·C2],
      "res5": [B, H/32, W/32, 8·C2]}`` in ``dtype`` (C2 = 256 for R50/101, 64 for R18/34),
      with ``stem_feature`` also ``"stem": [B, H/2, W/2, stem_out_channels]``.
    """
    if self.depth not in NUM_BLOCKS:
      raise ValueError(f"ResNet depth {self.depth} not in {sorted(NUM_BLOCKS)}")
    blocks = tuple(self.num_blocks or NUM_BLOCKS[self.depth])
    if not self.bottleneck and self.res2_out_channels != self.stem_out_channels:
      raise ValueError("ResNet-18/34 need res2_out_channels == stem_out_channels "
                       f"({self.res2_out_channels} != {self.stem_out_channels})")
    if self.norm not in NORMS:
      raise ValueError(f"ResNet norm {self.norm!r} not in {NORMS}")
    norm = dict(norm=self.norm, norm_groups=self.norm_groups, dtype=self.dtype)
    x, pre_pool = BasicStem(self.stem_out_channels, **norm, name="stem")(images)
    if self.freeze_at >= 1:
      x, pre_pool = jax.lax.stop_gradient((x, pre_pool))
    features = {"stem": pre_pool} if self.stem_feature else {}
    for i, (name, n) in enumerate(zip(STAGES, blocks, strict=True)):
      x = ResNetStage(n, self.res2_out_channels * 2**i, self.width_per_group * 2**i,
                      first_stride=1 if i == 0 else 2, bottleneck=self.bottleneck,
                      stride_in_1x1=self.stride_in_1x1, **norm, name=name)(x)
      if self.freeze_at >= i + 2:
        x = jax.lax.stop_gradient(x)
      features[name] = x
    return features
