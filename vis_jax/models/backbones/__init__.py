"""Backbones (detectron2 ResNet with frozen BN, Mask2Former's Swin) and input normalisation.

``build_backbone(cfg)`` takes a config such as::

  ConfigDict(dict(name="resnet50", freeze_at=0, dtype="bfloat16"))
  ConfigDict(dict(name="swin_large", drop_path_rate=0.3))

``name`` picks a preset (``BACKBONE_PRESETS``); every other key overrides the module attribute of
the same name (unknown keys raise, naming the key). Both backbones map ``[B, H, W, 3]``
normalised images (``preprocess``) to ``{"res2", "res3", "res4", "res5"}`` at strides 4/8/16/32.

Variables: ResNet has ``{"params", "frozen_bn"}`` (the frozen BN statistics are model state, not
parameters); Swin has ``{"params"}`` and takes ``train=`` (stochastic depth, ``"dropout"`` rng).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vis_jax.models.backbones import resnet, swin
from vis_jax.models.backbones.resnet import FROZEN_BN, ResNet
from vis_jax.models.backbones.swin import SwinTransformer

# ImageNet RGB statistics in 0–255 (Mask2Former / VITA configs, R50 and Swin alike; INPUT.FORMAT
# "RGB").
PIXEL_MEAN = (123.675, 116.280, 103.530)
PIXEL_STD = (58.395, 57.120, 57.375)
SIZE_DIVISIBILITY = 32
FEATURE_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
# ResNet's optional stride-2 stem activation (``ResNet.stem_feature``), for a pixel decoder whose
# ``common_stride`` is 2.
STEM_STRIDE = 2

BACKBONE_PRESETS: dict[str, dict[str, Any]] = {
    "resnet18": dict(family="resnet", depth=18, res2_out_channels=64),
    "resnet34": dict(family="resnet", depth=34, res2_out_channels=64),
    "resnet50": dict(family="resnet", depth=50),
    "resnet101": dict(family="resnet", depth=101),
    "resnet152": dict(family="resnet", depth=152),
    "swin_tiny": dict(family="swin", embed_dim=96, depths=(2, 2, 6, 2),
                      num_heads=(3, 6, 12, 24), window_size=7),
    "swin_small": dict(family="swin", embed_dim=96, depths=(2, 2, 18, 2),
                       num_heads=(3, 6, 12, 24), window_size=7),
    # B and L as shipped for Mask2Former(-VIS): ImageNet-22k, 384 pretraining, window 12.
    "swin_base": dict(family="swin", embed_dim=128, depths=(2, 2, 18, 2),
                      num_heads=(4, 8, 16, 32), window_size=12),
    "swin_large": dict(family="swin", embed_dim=192, depths=(2, 2, 18, 2),
                       num_heads=(6, 12, 24, 48), window_size=12),
}


def _preset_channels(preset: Mapping[str, Any]) -> tuple[int, int, int, int]:
  base = preset.get("res2_out_channels", 256) if preset["family"] == "resnet" else (
      preset["embed_dim"])
  return tuple(base * 2**i for i in range(4))


# Channels of (res2, res3, res4, res5) per preset name.
BACKBONE_CHANNELS: dict[str, tuple[int, int, int, int]] = {
    name: _preset_channels(preset) for name, preset in BACKBONE_PRESETS.items()}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _fields(cls: type[nn.Module]) -> set[str]:
  return {f for f in cls.__dataclass_fields__ if f not in ("parent", "name")}


def _as_dict(cfg: Any) -> dict[str, Any]:
  if hasattr(cfg, "to_dict"):
    return dict(cfg.to_dict())
  return dict(cfg)


def build_backbone(cfg: Any) -> ResNet | SwinTransformer:
  """The backbone module described by ``cfg`` (a ConfigDict or mapping with ``name``).

  Raises:
    ValueError: unknown ``name`` or a key that is not an attribute of the chosen backbone.
  """
  fields = _as_dict(cfg)
  name = fields.pop("name", None)
  if name not in BACKBONE_PRESETS:
    raise ValueError(f"backbone name {name!r} is not one of {sorted(BACKBONE_PRESETS)}")
  kwargs = dict(BACKBONE_PRESETS[name])
  family = kwargs.pop("family")
  cls = ResNet if family == "resnet" else SwinTransformer
  allowed = _fields(cls)
  for key, value in fields.items():
    if key not in allowed:
      raise ValueError(f"backbone key {key!r} is not an attribute of {cls.__name__} "
                       f"({name}); allowed: {sorted(allowed)}")
    if isinstance(value, list):
      value = tuple(value)
    kwargs[key] = value
  if isinstance(kwargs.get("dtype"), str):
    kwargs["dtype"] = _DTYPES[kwargs["dtype"]]
  return cls(**kwargs)


def frozen_patterns(module: ResNet | SwinTransformer, scope: str = "backbone"
                    ) -> tuple[str, ...]:
  """``config.optim.frozen_patterns`` entries for the frozen part of ``module`` under ``scope``."""
  if isinstance(module, ResNet):
    return resnet.frozen_patterns(module.freeze_at, scope)
  return swin.frozen_patterns(module.frozen_stages, scope)


def preprocess(images: jax.Array, pixel_mean: Sequence[float] = PIXEL_MEAN,
               pixel_std: Sequence[float] = PIXEL_STD,
               size_divisibility: int = SIZE_DIVISIBILITY,
               dtype: Any = jnp.float32, valid: jax.Array | None = None) -> jax.Array:
  """Normalises and pads images like detectron2 ``(x − mean)/std`` + ``ImageList.from_tensors``.

  Padding (bottom/right, zeros) comes *after* normalisation, so padded pixels are 0 in the
  normalised space, as in the official code. Batches that arrive already padded in uint8 (the
  input pipeline's ``images`` + ``image_valid``) must pass ``valid``: normalising a uint8 0 would
  give ``−mean/std`` there instead of the official 0.

  Args:
    images: ``[..., H, W, 3]`` RGB, uint8 or float in 0–255.
    pixel_mean: per-channel mean (RGB, 0–255).
    pixel_std: per-channel std.
    size_divisibility: pad H and W up to a multiple of this (≤ 1: no padding).
    dtype: output dtype.
    valid: optional bool mask broadcastable to ``[..., H, W]`` (e.g. ``image_valid[:, None]``
      for ``[B, T, H, W, 3]`` clips); pixels outside it become 0 after normalisation.

  Returns:
    ``[..., Hp, Wp, 3]`` with ``Hp = ⌈H / size_divisibility⌉·size_divisibility``.
  """
  mean = jnp.asarray(pixel_mean, jnp.float32)
  std = jnp.asarray(pixel_std, jnp.float32)
  x = (images.astype(jnp.float32) - mean) / std
  if valid is not None:
    x = jnp.where(jnp.asarray(valid)[..., None], x, 0.0)
  h, w = images.shape[-3], images.shape[-2]
  if size_divisibility > 1:
    pad_h, pad_w = (-h) % size_divisibility, (-w) % size_divisibility
    pad = [(0, 0)] * (x.ndim - 3) + [(0, pad_h), (0, pad_w), (0, 0)]
    x = jnp.pad(x, pad)
  return x.astype(dtype)


__all__ = [
    "BACKBONE_CHANNELS",
    "BACKBONE_PRESETS",
    "FEATURE_STRIDES",
    "FROZEN_BN",
    "STEM_STRIDE",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "ResNet",
    "SwinTransformer",
    "build_backbone",
    "frozen_patterns",
    "preprocess",
]
