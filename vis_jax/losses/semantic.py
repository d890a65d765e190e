"""Dense per-pixel class loss on the mask features: an auxiliary signal beyond the official
criterion (``config.loss.semantic_weight``, 0 = off as in the official recipes).

The set criterion supervises a mask only through its matched query, at a few hundred sampled
points; from random initialisation that is a sparse signal for the backbone and pixel decoder
(issue #5 notes: a CPU-sized detector's masks follow an object's bright colour and lose its dark
parts). This loss asks a linear head on the ``[B, h, w, mask_dim]`` mask features to predict, at
every grid cell, the class of what covers it (``K`` = background, the no-object index), so every
pixel of every image trains the features the masks are read from.

Targets are exact area fractions: ground-truth masks average-pooled to the grid, background the
rest; cells of the padding carry no weight and cells cut by the image border count by the
fraction inside. The loss is the soft cross-entropy ``−Σ_c p_c log softmax(z)_c`` averaged over
the in-image area.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def area_pool(x: jax.Array, h: int, w: int) -> jax.Array:
  """``[..., H, W]`` → ``[..., h, w]`` mean over ``(H/h) x (W/w)`` blocks."""
  big_h, big_w = x.shape[-2:]
  if big_h % h or big_w % w:
    raise ValueError(f"semantic loss: ground truth {big_h}x{big_w} is not a multiple of the "
                     f"mask feature grid {h}x{w}")
  sy, sx = big_h // h, big_w // w
  blocks = x.reshape(*x.shape[:-2], h, sy, w, sx)
  return blocks.mean(axis=(-3, -1))


def semantic_targets(masks: jax.Array, labels: jax.Array, instance_valid: jax.Array,
                     image_valid: jax.Array, grid: tuple[int, int], num_classes: int
                     ) -> tuple[jax.Array, jax.Array]:
  """Soft per-cell class targets.

  Args:
    masks: bool ``[B, G, H, W]`` visible instance masks of one frame (disjoint).
    labels: int ``[B, G]`` in ``[0, K)``.
    instance_valid: bool ``[B, G]``; invalid slots are ignored.
    image_valid: bool ``[B, H, W]``, False on the padding.
    grid: ``(h, w)`` of the mask features; ``H, W`` must be multiples of it.
    num_classes: ``K``.

  Returns:
    ``(probs [B, h, w, K+1], weight [B, h, w])``: class fractions of each cell's in-image area
    (they sum to 1 where ``weight > 0``) and the in-image fraction of the cell.
  """
  h, w = grid
  inside = area_pool(image_valid.astype(jnp.float32), h, w)
  covered = masks & instance_valid[:, :, None, None] & image_valid[:, None]
  cover = area_pool(covered.astype(jnp.float32), h, w)                    # [B, G, h, w]
  one_hot = jax.nn.one_hot(labels, num_classes + 1, dtype=jnp.float32)      # [B, G, K+1]
  fg = jnp.einsum("bghw,bgk->bhwk", cover, one_hot)
  background = jnp.clip(inside - fg.sum(-1), 0.0, None)
  fg = fg.at[..., num_classes].add(background)
  probs = fg / jnp.maximum(inside, 1e-6)[..., None]
  return probs, inside


def semantic_loss(logits: jax.Array, probs: jax.Array, weight: jax.Array) -> jax.Array:
  """Soft cross-entropy ``[B, h, w, K+1]`` logits vs ``semantic_targets``, weighted mean."""
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  per_cell = -(probs * log_p).sum(-1)
  return (per_cell * weight).sum() / jnp.maximum(weight.sum(), 1.0)
