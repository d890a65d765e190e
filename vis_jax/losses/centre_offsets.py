"""Centre-offset regression on the mask features (Panoptic-DeepLab, Cheng et al. 2020): the
training signal of the peak prior's centre votes (``models/layers/peak_prior.py``,
``model.decoder.peak_prior_votes``; ``config.loss.centre_offset_weight``, 0 = off). Not in the
official criterion.

Every grid cell covered by an instance should predict the offset from its own centre to that
instance's centre of mass, so that the cells of one instance vote for one point and the cells of
a touching neighbour for another. Targets are exact: the centre of mass is taken over the
instance's full-resolution visible mask (in-image pixels only), coordinates are normalised to
the padded frame as the mask grid's cell centres are, and a cell counts for an instance by the
fraction of it that instance covers (ground truth average-pooled to the grid, as
``losses/semantic.py``), so a cell shared by two instances is pulled towards both in proportion.
The loss is that cover-weighted L1 error ``|o_x − t_x| + |o_y − t_y|`` averaged over the covered
area; background cells carry no weight.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vis_jax.losses.semantic import area_pool
from vis_jax.models.layers.peak_prior import cell_centres


def centre_offset_loss(offsets: jax.Array, masks: jax.Array, instance_valid: jax.Array,
                       image_valid: jax.Array) -> jax.Array:
  """Cover-weighted L1 error of predicted centre offsets.

  Args:
    offsets: ``[B, h, w, 2]`` predicted (x, y) offsets, normalised frame units.
    masks: bool ``[B, G, H, W]`` visible instance masks of one frame, ``H, W`` multiples of
      ``h, w`` (the padded frame).
    instance_valid: bool ``[B, G]``; invalid slots (and instances absent from the frame) are
      ignored.
    image_valid: bool ``[B, H, W]``, False on the padding.

  Returns:
    Scalar float32: the mean over covered area (0 when nothing is covered).
  """
  h, w = offsets.shape[1:3]
  big_h, big_w = masks.shape[-2:]
  covered = (masks & instance_valid[:, :, None, None] & image_valid[:, None]).astype(jnp.float32)
  area = covered.sum((-2, -1))                                              # [B, G]
  full_xs, full_ys = cell_centres((big_h, big_w))
  centre_x = jnp.einsum("bghw,w->bg", covered, full_xs) / jnp.maximum(area, 1.0)
  centre_y = jnp.einsum("bghw,h->bg", covered, full_ys) / jnp.maximum(area, 1.0)
  cover = area_pool(covered, h, w)                                          # [B, G, h, w]
  xs, ys = cell_centres((h, w))
  offsets = offsets.astype(jnp.float32)
  error = (jnp.abs(offsets[:, None, :, :, 0] - (centre_x[..., None, None] - xs))
           + jnp.abs(offsets[:, None, :, :, 1] - (centre_y[..., None, None] - ys[:, None])))
  return jnp.sum(cover * error) / jnp.maximum(jnp.sum(cover), 1e-6)


def clip_centre_offset_loss(offsets: jax.Array, masks: jax.Array, present: jax.Array,
                            instance_valid: jax.Array, image_valid: jax.Array) -> jax.Array:
  """``centre_offset_loss`` over every frame of clips: ``offsets [B, T, h, w, 2]``, ``masks
  [B, G, T, H, W]``, ``present [B, G, T]``, ``instance_valid [B, G]``, ``image_valid
  [B, H, W]`` (shared by a clip's frames); one mean over the covered area of all frames."""
  b, t = offsets.shape[:2]
  frames = lambda x: jnp.moveaxis(x, 2, 1).reshape(b * t, *x.shape[1:2], *x.shape[3:])  # noqa: E731
  return centre_offset_loss(offsets.reshape(b * t, *offsets.shape[2:]), frames(masks),
                            frames(present & instance_valid[:, :, None]),
                            jnp.repeat(image_valid, t, axis=0))
