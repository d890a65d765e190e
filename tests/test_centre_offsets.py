"""``losses/centre_offsets.py`` against a loop-by-loop numpy re-derivation and a hand case."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from vis_jax.losses.centre_offsets import centre_offset_loss, clip_centre_offset_loss


def numpy_centre_offset_loss(offsets, masks, instance_valid, image_valid):
  """Per instance: centre of mass of its in-image pixels; per cell: the fraction of the cell's
  pixels it covers; loss = Σ fraction·L1 / Σ fraction."""
  b, g, big_h, big_w = masks.shape
  h, w = offsets.shape[1:3]
  sy, sx = big_h // h, big_w // w
  num = den = 0.0
  for i in range(b):
    for k in range(g):
      if not instance_valid[i, k]:
        continue
      pixels = [(y, x) for y in range(big_h) for x in range(big_w)
                if masks[i, k, y, x] and image_valid[i, y, x]]
      if not pixels:
        continue
      cy = np.mean([(y + 0.5) / big_h for y, _ in pixels])
      cx = np.mean([(x + 0.5) / big_w for _, x in pixels])
      for y in range(h):
        for x in range(w):
          block = [(yy, xx) for yy in range(y * sy, (y + 1) * sy)
                   for xx in range(x * sx, (x + 1) * sx)]
          frac = sum(masks[i, k, yy, xx] and image_valid[i, yy, xx] for yy, xx in block)
          frac /= len(block)
          target = (cx - (x + 0.5) / w, cy - (y + 0.5) / h)
          num += frac * (abs(offsets[i, y, x, 0] - target[0])
                         + abs(offsets[i, y, x, 1] - target[1]))
          den += frac
  return num / max(den, 1e-6)


@pytest.fixture(scope="module")
def case():
  rng = np.random.default_rng(0)
  b, g, big_h, big_w, h, w = 2, 3, 16, 12, 4, 3
  masks = np.zeros((b, g, big_h, big_w), bool)
  for i in range(b):
    for k in range(g):
      y0, x0 = rng.integers(0, big_h - 5), rng.integers(0, big_w - 5)
      masks[i, k, y0:y0 + rng.integers(2, 6), x0:x0 + rng.integers(2, 6)] = True
  instance_valid = np.array([[True, True, False], [True, False, True]])
  image_valid = np.ones((b, big_h, big_w), bool)
  image_valid[1, 13:] = False
  offsets = rng.normal(size=(b, h, w, 2)).astype(np.float32) * 0.2
  return offsets, masks, instance_valid, image_valid


def test_matches_numpy(case):
  got = float(centre_offset_loss(*map(jnp.asarray, case)))
  np.testing.assert_allclose(got, numpy_centre_offset_loss(*case), rtol=1e-5)


def test_hand_case():
  """One 4×4 square in the top-left of an 8×8 frame, a 2×2 grid: only cell (0, 0) is covered
  (fully); the square's centre (0.25, 0.25) is that cell's centre, so the target offset is 0
  and the loss is the L1 norm of the predicted offset there."""
  masks = np.zeros((1, 1, 8, 8), bool)
  masks[0, 0, :4, :4] = True
  offsets = np.zeros((1, 2, 2, 2), np.float32)
  offsets[0, 0, 0] = (0.1, -0.05)
  offsets[0, 1, 1] = (5.0, 5.0)   # background: no weight
  loss = centre_offset_loss(jnp.asarray(offsets), jnp.asarray(masks), jnp.ones((1, 1), bool),
                            jnp.ones((1, 8, 8), bool))
  np.testing.assert_allclose(float(loss), 0.15, rtol=1e-6)


def test_clip_loss_is_one_mean_over_all_frames(case):
  offsets, masks, instance_valid, image_valid = case
  # Two frames: the case's masks and their vertical flip; instance 0 of clip 0 absent in frame 1.
  clip_masks = np.stack([masks, masks[..., ::-1, :]], 2)                  # [B, G, T, H, W]
  present = np.ones(clip_masks.shape[:3], bool)
  present[0, 0, 1] = False
  clip_offsets = np.stack([offsets, -offsets], 1)                          # [B, T, h, w, 2]
  got = float(clip_centre_offset_loss(*map(jnp.asarray, (clip_offsets, clip_masks, present,
                                                         instance_valid, image_valid))))
  frames_offsets = clip_offsets.reshape(-1, *offsets.shape[1:])
  frames_masks = np.moveaxis(clip_masks, 2, 1).reshape(-1, *masks.shape[1:])
  frames_valid = np.moveaxis(present & instance_valid[:, :, None], 2, 1).reshape(
      -1, masks.shape[1])
  expected = numpy_centre_offset_loss(frames_offsets, frames_masks, frames_valid,
                                      np.repeat(image_valid, 2, axis=0))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
