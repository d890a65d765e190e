"""Instance-discriminative pixel embedding loss (De Brabandere et al. 2017, "Semantic Instance
Segmentation with a Discriminative Loss Function") on the mask features: an auxiliary signal
beyond the official criterion (``config.loss.embedding_weight``, 0 = off).

Why: Mask2Former reads a query's mask as ``q · F(x)`` over the mask features ``F``. Where two
instances of one class look alike, nothing in the set criterion asks ``F`` to tell them apart,
and a CPU-sized detector trained from scratch merges them (issue #5 notes: on the synthetic
validation frames 54% of instance-frames have a same-class neighbour, their best-query IoU is
0.47 vs 0.68, and half of them are covered by a query that also covers the neighbour). This loss
asks a linear embedding ``e = W F`` to cluster each instance's grid cells around the instance's
mean and to keep the means of different instances of one image apart:

* pull (variance): ``Σ_g Σ_x m_g(x) · max(0, ‖e(x) − μ_g‖ − δ_v)² / Σ_g Σ_x m_g(x)``,
* push (distance): mean over ordered pairs ``g ≠ g'`` of one image of
  ``max(0, 2 δ_d − ‖μ_g − μ_g'‖)²``,
* regulariser: mean over instances of ``‖μ_g‖``,

with ``m_g(x)`` the fraction of grid cell ``x`` covered by instance ``g`` (ground truth average-
pooled to the grid), ``μ_g = Σ_x m_g e / Σ_x m_g``; instances covering less than one cell in
total are left out. Total: ``pull + push + 0.001 · regulariser`` (the paper's weights).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vis_jax.losses.semantic import area_pool


def _norm(x: jax.Array) -> jax.Array:
  """Euclidean norm over the last axis with a finite gradient at 0 (equal embeddings)."""
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=-1) + 1e-12)


def discriminative_loss(embedding: jax.Array, masks: jax.Array, instance_valid: jax.Array,
                        delta_var: float = 0.5, delta_dist: float = 1.5,
                        reg_weight: float = 0.001) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Pull / push / regularisation loss of a pixel embedding.

  Args:
    embedding: ``[B, h, w, D]`` per-cell embedding.
    masks: bool ``[B, G, H, W]`` instance masks of one frame (``H, W`` multiples of ``h, w``).
    instance_valid: bool ``[B, G]``.
    delta_var, delta_dist: the hinge margins ``δ_v`` and ``δ_d``.
    reg_weight: weight of the regulariser.

  Returns:
    ``(loss, {"pull", "push", "reg"})``, all scalars.
  """
  emb = embedding.astype(jnp.float32)
  h, w = emb.shape[1:3]
  member = area_pool(masks.astype(jnp.float32), h, w)                     # [B, G, h, w]
  area = member.sum((2, 3))                                               # [B, G]
  used = instance_valid & (area >= 1.0)
  member = member * used[:, :, None, None]
  mean = jnp.einsum("bghw,bhwd->bgd", member, emb) / jnp.maximum(area, 1e-6)[..., None]

  dist = _norm(emb[:, None] - mean[:, :, None, None])                     # [B, G, h, w]
  pull = (member * jnp.square(jax.nn.relu(dist - delta_var))).sum() / jnp.maximum(
      member.sum(), 1.0)

  g = mean.shape[1]
  pair = used[:, :, None] & used[:, None, :] & ~jnp.eye(g, dtype=bool)[None]
  gap = _norm(mean[:, :, None] - mean[:, None, :])                         # [B, G, G]
  push = (pair * jnp.square(jax.nn.relu(2.0 * delta_dist - gap))).sum() / jnp.maximum(
      pair.sum(), 1)

  reg = (used * _norm(mean)).sum() / jnp.maximum(used.sum(), 1)
  return pull + push + reg_weight * reg, {"pull": pull, "push": push, "reg": reg}
