"""Optimizer groups, frozen parts, clipping and schedules against a numpy AdamW re-derivation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from vis_jax import optim


def _cfg(**overrides):
  cfg = common.base_config().optim
  cfg.update(overrides)
  return cfg


def _params(rng):
  shapes = {
      "backbone": {"conv1": {"kernel": (3, 4)}, "norm1": {"scale": (4,), "bias": (4,)}},
      "head": {"dense": {"kernel": (4, 2), "bias": (2,)},
               "query_embed": {"embedding": (5, 4)}},
      "frozen_part": {"kernel": (2, 2)},
  }
  return jax.tree_util.tree_map(lambda s: rng.normal(size=s).astype(np.float32), shapes,
                                is_leaf=lambda x: isinstance(x, tuple))


def test_labels_follow_official_groups():
  cfg = _cfg(frozen_patterns=(r"^frozen_part/",))
  label = lambda p: optim.param_label(p, cfg)  # noqa: E731
  assert label("backbone/conv1/kernel") == "backbone_decay"
  assert label("backbone/norm1/scale") == "backbone_no_decay"
  assert label("backbone/conv1/bias") == "backbone_decay"  # official code decays biases
  assert label("pixel_decoder/layers_0/LayerNorm_0/bias") == "head_no_decay"
  assert label("decoder/query_embed/embedding") == "head_no_decay"
  assert label("backbone/layers_0/attn/relative_position_bias_table") == "backbone_no_decay"
  assert label("frozen_part/kernel") == "frozen"
  assert optim.param_label("head/dense/bias", _cfg(no_decay_bias=True)) == "head_no_decay"


def _numpy_adamw(params, grads_seq, cfg, lr_fn, labels):
  """Independent AdamW with detectron2 groups and full-model clipping."""
  flat_p = {k: v.copy().astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in flat_p.items()}
  v = {k: np.zeros_like(val) for k, val in flat_p.items()}
  for t, grads in enumerate(grads_seq, start=1):
    g = {k: (0 * val if labels[k] == "frozen" else val.astype(np.float64))
         for k, val in grads.items()}
    norm = np.sqrt(sum((x ** 2).sum() for x in g.values()))
    if cfg.clip_grad_norm > 0 and norm > cfg.clip_grad_norm:
      g = {k: x * cfg.clip_grad_norm / norm for k, x in g.items()}
    lr = lr_fn(t - 1)
    for k in flat_p:
      if labels[k] == "frozen":
        continue
      mult = cfg.backbone_multiplier if labels[k].startswith("backbone") else 1.0
      wd = 0.0 if labels[k].endswith("no_decay") else cfg.weight_decay
      m[k] = cfg.b1 * m[k] + (1 - cfg.b1) * g[k]
      v[k] = cfg.b2 * v[k] + (1 - cfg.b2) * g[k] ** 2
      mhat, vhat = m[k] / (1 - cfg.b1 ** t), v[k] / (1 - cfg.b2 ** t)
      flat_p[k] = flat_p[k] - lr * mult * (mhat / (np.sqrt(vhat) + cfg.eps) + wd * flat_p[k])
  return flat_p


@pytest.mark.parametrize("clip", [0.0, 0.01])
def test_adamw_groups_match_numpy(clip):
  rng = np.random.default_rng(0)
  cfg = _cfg(frozen_patterns=(r"^frozen_part/",), clip_grad_norm=clip, learning_rate=1e-2,
             warmup_steps=2, warmup_factor=0.5, decay_steps=(2,), decay_factor=0.1)
  params = _params(rng)
  tx, schedule = optim.make_optimizer(cfg, params, num_train_steps=10)
  state = tx.init(params)
  grads_seq = [_params(rng) for _ in range(3)]
  p = params
  update = jax.jit(tx.update)
  for grads in grads_seq:
    updates, state = update(grads, state, p)
    p = jax.tree_util.tree_map(lambda a, b: a + b, p, updates)

  flat = lambda tree: {optim.param_path(k): np.asarray(v)  # noqa: E731
                       for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  labels = {k: optim.param_label(k, cfg) for k in flat(params)}
  # Hand-computed schedule: warmup factor 0.5 -> 1 over 2 steps, x0.1 from step 2.
  lr_fn = lambda s: 1e-2 * (0.5 * (1 - min(s / 2, 1)) + min(s / 2, 1)) * (0.1 if s >= 2 else 1)  # noqa: E731
  for s in range(4):
    np.testing.assert_allclose(float(schedule(s)), lr_fn(s), rtol=1e-6)
  expected = _numpy_adamw(flat(params), [flat(g) for g in grads_seq], cfg, lr_fn, labels)
  got = flat(p)
  for k in expected:
    np.testing.assert_allclose(got[k], expected[k], rtol=2e-5, atol=1e-7, err_msg=k)
  # Frozen parameters do not move and own no optimizer state.
  np.testing.assert_array_equal(got["frozen_part/kernel"], flat(params)["frozen_part/kernel"])
  trainable = sum(v.size for k, v in flat(params).items() if labels[k] != "frozen")
  state_floats = sum(x.size for x in jax.tree_util.tree_leaves(state)
                     if jnp.issubdtype(x.dtype, jnp.floating) and x.ndim > 0)
  assert state_floats == 2 * trainable  # Adam mu and nu for trainable parameters only


def test_backbone_multiplier_scales_first_update():
  # First Adam step moves each weight by ~lr (sign of grad): the ratio is the multiplier.
  cfg = _cfg(learning_rate=1e-3, weight_decay=0.0, clip_grad_norm=0.0, warmup_steps=0,
             backbone_multiplier=0.1)
  params = {"backbone": {"w": jnp.ones((3,))}, "head": {"w": jnp.ones((3,))}}
  tx, _ = optim.make_optimizer(cfg, params, 10)
  grads = {"backbone": {"w": jnp.full((3,), 0.3)}, "head": {"w": jnp.full((3,), 0.3)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["head"]["w"], -1e-3, rtol=1e-4)
  np.testing.assert_allclose(updates["backbone"]["w"], -1e-4, rtol=1e-4)


def test_cosine_schedule_and_unknown_schedule():
  cfg = _cfg(schedule="cosine", warmup_steps=0, learning_rate=1.0)
  sched = optim.learning_rate_schedule(cfg, 100)
  np.testing.assert_allclose([float(sched(s)) for s in (0, 50, 100)],
                             [1.0, 0.5, 0.0], atol=1e-6)
  with pytest.raises(ValueError, match="optim.schedule"):
    optim.learning_rate_schedule(_cfg(schedule="poly"), 10)
