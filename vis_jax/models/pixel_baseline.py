"""A tiny per-pixel classifier: the stand-in model that exercises the trainer end to end.

It labels every pixel of every frame with the class of the instance covering it (or
background) with a few convolutions — no matching, no queries. It is deliberately small so
trainer tests (sharding, multi-host, resume, non-finite handling) compile in seconds; it is
not a VIS model and is not used for any reported number.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vis_jax.models.base import Batch, Metrics, ModelBundle

# ImageNet statistics (RGB, 0-255), as the official detectron2 configs.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class PixelClassifier(nn.Module):
  """``[N, H, W, 3]`` uint8 → ``[N, H, W, K+1]`` logits."""

  num_classes: int
  width: int = 16
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = (images.astype(jnp.float32) - jnp.asarray(PIXEL_MEAN)) / jnp.asarray(PIXEL_STD)
    x = x.astype(self.dtype)
    x = nn.relu(nn.Conv(self.width, (3, 3), dtype=self.dtype, name="conv1")(x))
    x = nn.relu(nn.Conv(self.width, (3, 3), dtype=self.dtype, name="conv2")(x))
    x = nn.LayerNorm(dtype=self.dtype, name="norm")(x)
    return nn.Conv(self.num_classes + 1, (1, 1), dtype=self.dtype, name="head")(x)


def semantic_targets(batch: Batch, num_classes: int) -> jax.Array:
  """Per-pixel class ``[B, T, H, W]``; ``num_classes`` = background (masks are disjoint)."""
  masks = batch["masks"] & batch["instance_valid"][:, :, None, None, None]
  labels = jnp.where(batch["instance_valid"], batch["labels"], 0)
  covered = masks.any(axis=1)
  label_map = jnp.einsum("bgthw,bg->bthw", masks.astype(jnp.int32), labels)
  return jnp.where(covered, label_map, num_classes)


class PixelBaseline(ModelBundle):
  """Bundle for ``config.model_name = "pixel_baseline"`` (``config.model.width``)."""

  batch_keys = ("images", "image_valid", "masks", "labels", "instance_valid")

  def __init__(self, config):
    super().__init__(config)
    self.num_classes = config.data.num_classes
    self.module = PixelClassifier(num_classes=self.num_classes, width=config.model.width,
                                  dtype=jnp.dtype(config.dtype))

  def init(self, rng: jax.Array, batch: Batch) -> tuple[Any, Any]:
    images = batch["images"]
    variables = self.module.init(rng, images.reshape(-1, *images.shape[2:])[:1])
    return variables["params"], {}

  def loss(self, params: Any, model_state: Any, batch: Batch, rng: jax.Array
           ) -> tuple[jax.Array, Metrics]:
    del model_state, rng
    b, t, h, w, _ = batch["images"].shape
    logits = self.module.apply({"params": params}, batch["images"].reshape(b * t, h, w, 3))
    logits = logits.astype(jnp.float32).reshape(b, t, h, w, -1)
    targets = semantic_targets(batch, self.num_classes)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
    valid = jnp.broadcast_to(batch["image_valid"][:, None], ce.shape).astype(jnp.float32)
    loss = (ce * valid).sum() / jnp.maximum(valid.sum(), 1.0)
    accuracy = ((logits.argmax(-1) == targets) * valid).sum() / jnp.maximum(valid.sum(), 1.0)
    return loss, {"pixel_accuracy": accuracy}
