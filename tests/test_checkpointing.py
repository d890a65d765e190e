"""Checkpoint round trip: state pytree, grain iterator state and metadata; keep-N; latest."""

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vis_jax import checkpointing


def _dataset():
  return (grain.MapDataset.range(100).seed(3).shuffle().map(lambda x: x * 10)
          .batch(4, drop_remainder=True).to_iter_dataset())


def _state(v):
  return {"params": {"w": jnp.full((3, 2), v, jnp.float32)}, "step": jnp.asarray(int(v)),
          "rng": jax.random.key_data(jax.random.key(int(v)))}


def test_round_trip_restores_state_iterator_and_meta(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path / "ckpt"), interval=2, keep=2)
  it = iter(_dataset())
  for step in range(1, 7):
    next(it)
    ckpt.save(step, _state(step), it, meta={"step": step})
  ckpt.wait()
  assert ckpt.all_steps() == [4, 6]  # interval 2, keep 2
  expected_next = [next(it) for _ in range(3)]

  fresh = iter(_dataset())
  abstract = jax.eval_shape(lambda: _state(0))
  shardings = jax.tree_util.tree_map(lambda _: jax.sharding.SingleDeviceSharding(
      jax.devices()[0]), abstract)
  state, meta = checkpointing.Checkpointer(str(tmp_path / "ckpt"), 2, 2).restore(
      checkpointing.abstract_with_shardings(abstract, shardings), fresh)
  np.testing.assert_array_equal(state["params"]["w"], np.full((3, 2), 6.0))
  assert int(state["step"]) == 6 and meta == {"step": 6}
  for want in expected_next:
    np.testing.assert_array_equal(next(fresh), want)
  ckpt.close()


def test_restore_without_checkpoint_is_a_clear_error(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path / "empty"), interval=1, keep=1)
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    ckpt.restore(jax.eval_shape(lambda: _state(0)))
