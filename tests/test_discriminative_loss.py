"""The pixel embedding loss (``losses/discriminative.py``) against a loop over instances and
pairs written from the paper's formulas, a hand-computed case, and its bundle wiring."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from vis_jax.losses import discriminative


def loop_loss(emb, masks, valid, dv=0.5, dd=1.5, reg_w=0.001):
  b_, g_, big_h, big_w = masks.shape
  h, w = emb.shape[1:3]
  sy, sx = big_h // h, big_w // w
  pull_num = pull_den = 0.0
  push, reg = [], []
  for b in range(b_):
    means = {}
    for g in range(g_):
      member = masks[b, g].reshape(h, sy, w, sx).mean((1, 3))
      if not valid[b, g] or member.sum() < 1.0:
        continue
      mu = (member[..., None] * emb[b]).sum((0, 1)) / member.sum()
      means[g] = mu
      reg.append(np.linalg.norm(mu))
      for y in range(h):
        for x in range(w):
          d = np.linalg.norm(emb[b, y, x] - mu)
          pull_num += member[y, x] * max(0.0, d - dv) ** 2
          pull_den += member[y, x]
    for g, mu in means.items():
      for g2, mu2 in means.items():
        if g != g2:
          push.append(max(0.0, 2 * dd - np.linalg.norm(mu - mu2)) ** 2)
  pull = pull_num / max(pull_den, 1.0)
  push = float(np.mean(push)) if push else 0.0
  reg = float(np.mean(reg)) if reg else 0.0
  return pull + push + reg_w * reg, pull, push, reg


def test_matches_a_loop_over_instances_and_pairs():
  rng = np.random.default_rng(0)
  b_, g_, big_h, big_w, d = 2, 4, 16, 24, 3
  owner = rng.integers(-1, g_, (b_, big_h, big_w))
  owner[1, :, :] = np.where(owner[1] == 3, 0, owner[1])   # instance 3 of image 1 is empty
  masks = np.stack([owner == g for g in range(g_)], axis=1)
  valid = np.array([[True, True, False, True], [True, True, True, True]])
  emb = rng.normal(size=(b_, 4, 6, d)).astype(np.float32)
  total, parts = discriminative.discriminative_loss(jnp.asarray(emb), jnp.asarray(masks),
                                                    jnp.asarray(valid))
  ref_total, ref_pull, ref_push, ref_reg = loop_loss(emb, masks, valid)
  np.testing.assert_allclose(float(parts["pull"]), ref_pull, rtol=1e-5)
  np.testing.assert_allclose(float(parts["push"]), ref_push, rtol=1e-5)
  np.testing.assert_allclose(float(parts["reg"]), ref_reg, rtol=1e-5)
  np.testing.assert_allclose(float(total), ref_total, rtol=1e-5)
  grads = jax.grad(lambda e: discriminative.discriminative_loss(
      e, jnp.asarray(masks), jnp.asarray(valid))[0])(jnp.zeros_like(jnp.asarray(emb)))
  assert np.isfinite(np.asarray(grads)).all()  # equal embeddings: distances are 0


def test_hand_computed_two_instances():
  # 1 x 2 grid of 1-D embeddings, one cell per instance: means 0 and 1, pull 0 (each cell is
  # its own mean), push (3 − 1)² for both ordered pairs, reg (0 + 1) / 2.
  masks = np.zeros((1, 2, 1, 2), bool)
  masks[0, 0, 0, 0] = masks[0, 1, 0, 1] = True
  emb = np.array([[[[0.0], [1.0]]]], np.float32)
  total, parts = discriminative.discriminative_loss(jnp.asarray(emb), jnp.asarray(masks),
                                                    jnp.ones((1, 2), bool))
  np.testing.assert_allclose(float(parts["pull"]), 0.0, atol=1e-6)
  np.testing.assert_allclose(float(parts["push"]), 4.0, rtol=1e-5)
  np.testing.assert_allclose(float(parts["reg"]), 0.5, rtol=1e-5)
  np.testing.assert_allclose(float(total), 4.0005, rtol=1e-5)


def test_config_requires_the_embedding_head():
  from configs import synthetic_detector
  config = synthetic_detector.get_config("smoke")
  config.model.embedding_dim = 0
  config.loss.embedding_weight = 1.0
  with pytest.raises(common.ConfigError, match="loss.embedding_weight"):
    common.validate(config)
  config.model.embedding_dim = 4
  common.validate(config)
