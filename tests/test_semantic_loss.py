"""The dense per-pixel class loss (``losses/semantic.py``) against a per-cell Python loop and a
hand-computed case, and its wiring into the Mask2Former image bundle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from vis_jax.losses import semantic

K = 3


def loop_targets(masks, labels, valid, image_valid, grid):
  """Cell by cell: fraction of each class (background = K) in the cell's in-image pixels."""
  b_, g_, big_h, big_w = masks.shape
  h, w = grid
  sy, sx = big_h // h, big_w // w
  probs = np.zeros((b_, h, w, K + 1))
  weight = np.zeros((b_, h, w))
  for b in range(b_):
    for y in range(h):
      for x in range(w):
        cell = (slice(y * sy, (y + 1) * sy), slice(x * sx, (x + 1) * sx))
        inside = image_valid[b][cell]
        weight[b, y, x] = inside.mean()
        if not inside.any():
          continue
        counts = np.zeros(K + 1)
        for g in range(g_):
          if valid[b, g]:
            counts[labels[b, g]] += (masks[b, g][cell] & inside).sum()
        counts[K] = inside.sum() - counts[:K].sum()
        probs[b, y, x] = counts / inside.sum()
  return probs, weight


def test_targets_match_a_per_cell_loop():
  rng = np.random.default_rng(0)
  b_, g_, big_h, big_w, grid = 2, 4, 16, 24, (4, 6)
  owner = rng.integers(-1, g_, (b_, big_h, big_w))  # disjoint masks, -1 = background
  masks = np.stack([owner == g for g in range(g_)], axis=1)
  labels = rng.integers(0, K, (b_, g_))
  labels[0, 1] = labels[0, 2]  # two instances of one class share its probability mass
  valid = np.array([[True, True, True, False], [True, False, True, True]])
  image_valid = np.zeros((b_, big_h, big_w), bool)
  image_valid[0, :13, :24] = True   # bottom padding cuts a cell row
  image_valid[1, :16, :10] = True   # right padding: whole cells and a cut cell
  probs, weight = semantic.semantic_targets(jnp.asarray(masks), jnp.asarray(labels),
                                            jnp.asarray(valid), jnp.asarray(image_valid), grid, K)
  ref_probs, ref_weight = loop_targets(masks, labels, valid, image_valid, grid)
  np.testing.assert_allclose(np.asarray(weight), ref_weight, atol=1e-6)
  np.testing.assert_allclose(np.asarray(probs), ref_probs, atol=1e-6)
  inside = ref_weight > 0
  np.testing.assert_allclose(np.asarray(probs).sum(-1)[inside], 1.0, atol=1e-6)


def test_loss_hand_computed():
  # One image, a 2x4 frame → 1x2 grid: cell 0 half class 1 / half background, cell 1 padding.
  masks = np.zeros((1, 1, 2, 4), bool)
  masks[0, 0, :, :1] = True
  image_valid = np.zeros((1, 2, 4), bool)
  image_valid[0, :, :2] = True
  probs, weight = semantic.semantic_targets(jnp.asarray(masks), jnp.asarray([[1]]),
                                            jnp.asarray([[True]]), jnp.asarray(image_valid),
                                            (1, 2), K)
  np.testing.assert_allclose(np.asarray(weight), [[[1.0, 0.0]]])
  np.testing.assert_allclose(np.asarray(probs)[0, 0, 0], [0, 0.5, 0, 0.5])
  logits = np.zeros((1, 1, 2, K + 1), np.float32)
  logits[0, 0, 0] = [0.0, 2.0, 0.0, 1.0]
  logits[0, 0, 1] = [50.0, -50.0, 0.0, 0.0]  # padding: must not count
  log_z = np.log(np.exp([0.0, 2.0, 0.0, 1.0]).sum())
  expected = -(0.5 * (2.0 - log_z) + 0.5 * (1.0 - log_z))
  got = semantic.semantic_loss(jnp.asarray(logits), probs, weight)
  np.testing.assert_allclose(float(got), expected, rtol=1e-6)


def test_grid_must_divide_the_masks():
  with pytest.raises(ValueError, match="not a multiple"):
    semantic.semantic_targets(jnp.zeros((1, 1, 10, 8), bool), jnp.zeros((1, 1), int),
                              jnp.ones((1, 1), bool), jnp.ones((1, 10, 8), bool), (4, 4), K)


def test_config_requires_the_head():
  from configs import synthetic_detector
  config = synthetic_detector.get_config("smoke")
  config.model.semantic_head = False
  config.loss.semantic_weight = 1.0
  with pytest.raises(common.ConfigError, match="loss.semantic_weight"):
    common.validate(config)
  config.model.semantic_head = True
  common.validate(config)


def test_image_bundle_adds_the_weighted_auxiliary_losses():
  """Same params and rng: the total grows by the weighted semantic and embedding losses
  recomputed from the model's outputs."""
  from configs import synthetic_detector
  from vis_jax.losses import discriminative
  from vis_jax.models import registry

  config = synthetic_detector.get_config("smoke")
  config.model.semantic_head = True
  config.model.embedding_dim = 4
  rng = np.random.default_rng(1)
  b_, g_, size = 1, 2, 64
  masks = np.zeros((b_, g_, 1, size, size), bool)
  masks[0, 0, 0, 8:30, 10:40] = True
  masks[0, 1, 0, 40:60, 20:50] = True
  batch = dict(images=jnp.asarray(rng.integers(0, 255, (b_, 1, size, size, 3)), jnp.uint8),
               image_valid=jnp.ones((b_, size, size), bool), masks=jnp.asarray(masks),
               labels=jnp.asarray([[0, 2]]), present=jnp.ones((b_, g_, 1), bool),
               instance_valid=jnp.ones((b_, g_), bool))
  key = jax.random.key(0)
  losses = {}
  for weights in ((0.0, 0.0), (2.0, 3.0)):
    config.loss.semantic_weight, config.loss.embedding_weight = weights
    bundle = registry.get_bundle(config)
    params, state = bundle.init(key, batch)
    losses[weights] = bundle.loss(params, state, batch, key)
  outputs = bundle.module.apply({"params": params, **state}, batch["images"][:, 0],
                                batch["image_valid"])
  logits = outputs["semantic_logits"]
  assert logits.shape == (b_, size // 4, size // 4, config.data.num_classes + 1)
  assert outputs["pixel_embedding"].shape == (b_, size // 4, size // 4, 4)
  probs, weight = semantic.semantic_targets(batch["masks"][:, :, 0], batch["labels"],
                                            batch["instance_valid"], batch["image_valid"],
                                            logits.shape[1:3], config.data.num_classes)
  sem = float(semantic.semantic_loss(logits, probs, weight))
  emb = float(discriminative.discriminative_loss(outputs["pixel_embedding"],
                                                 batch["masks"][:, :, 0],
                                                 batch["instance_valid"])[0])
  on, off = losses[(2.0, 3.0)], losses[(0.0, 0.0)]
  np.testing.assert_allclose(float(on[1]["loss_semantic"]), sem, rtol=1e-5)
  np.testing.assert_allclose(float(on[1]["loss_embedding"]), emb, rtol=1e-5)
  assert "loss_semantic" not in off[1] and "loss_embedding" not in off[1]
  np.testing.assert_allclose(float(on[0]), float(off[0]) + 2.0 * sem + 3.0 * emb, rtol=1e-5)
