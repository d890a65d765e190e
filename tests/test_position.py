"""Sine positional encodings vs hand-computed values and a per-pixel numpy re-derivation.

The official formulas (Mask2Former ``PositionEmbeddingSine`` / ``PositionEmbeddingSine3D``):
coordinate = (# valid pixels up to and including this one along the axis) /
(# valid pixels along the whole axis line + 1e-6) · 2π; channel i of an F-wide block is
sin (i even) or cos (i odd) of coordinate / temperature^(2⌊i/2⌋ / F); 2-D = [y-block, x-block];
3-D adds a 2F-wide temporal block.
"""

import math

import jax
import numpy as np
import pytest

from vis_jax.models.layers import position


def np_channel(coord: float, i: int, width: int, temperature: float) -> float:
  freq = temperature ** (2 * (i // 2) / width)
  return math.sin(coord / freq) if i % 2 == 0 else math.cos(coord / freq)


def np_coord(valid_line: np.ndarray, k: int, normalize: bool, scale: float) -> float:
  """Coordinate of element k of one line (row, column or time line) of validity flags."""
  count = float(valid_line[:k + 1].sum())
  return count / (valid_line.sum() + 1e-6) * scale if normalize else count


def np_sine_2d(mask, f, temperature=10000.0, normalize=True, scale=2 * math.pi):
  valid = ~np.asarray(mask, bool)
  b_, h_, w_ = valid.shape
  out = np.zeros((b_, h_, w_, 2 * f))
  for b, y, x in np.ndindex(b_, h_, w_):
    cy = np_coord(valid[b, :, x], y, normalize, scale)
    cx = np_coord(valid[b, y, :], x, normalize, scale)
    for i in range(f):
      out[b, y, x, i] = np_channel(cy, i, f, temperature)
      out[b, y, x, f + i] = np_channel(cx, i, f, temperature)
  return out


def np_sine_3d(mask, f, temperature=10000.0, scale=2 * math.pi):
  valid = ~np.asarray(mask, bool)
  b_, t_, h_, w_ = valid.shape
  out = np.zeros((b_, t_, h_, w_, 2 * f))
  for b, t in np.ndindex(b_, t_):
    out[b, t] = np_sine_2d(mask[b, t][None], f, temperature, True, scale)[0]
  for b, t, y, x in np.ndindex(b_, t_, h_, w_):
    cz = np_coord(valid[b, :, y, x], t, True, scale)
    for i in range(2 * f):
      out[b, t, y, x, i] += np_channel(cz, i, 2 * f, temperature)
  return out


def test_2d_hand_checked_case():
  # H=2, W=1, F=4, temperature 100 → frequencies (1, 1, 10, 10); y = π, 2π; x = 2π.
  got = np.asarray(position.sine_position_2d((1, 2, 1), num_pos_feats=4, temperature=100.0))
  s, c = math.sin, math.cos
  x_block = [0.0, 1.0, s(0.2 * math.pi), c(0.2 * math.pi)]
  want = np.array([
      [0.0, -1.0, s(0.1 * math.pi), c(0.1 * math.pi), *x_block],
      [0.0, 1.0, s(0.2 * math.pi), c(0.2 * math.pi), *x_block],
  ])
  assert got.shape == (1, 2, 1, 8)
  np.testing.assert_allclose(got[0, :, 0], want, atol=1e-5)


def test_3d_hand_checked_case():
  # T=2, H=W=1, F=2, temperature 100: spatial code (0, 1, 0, 1); temporal z = π, 2π with
  # 4 channels at frequencies (1, 1, 10, 10), added on top.
  got = np.asarray(position.sine_position_3d((1, 2, 1, 1), num_pos_feats=2, temperature=100.0))
  s, c = math.sin, math.cos
  want = np.array([
      [0.0 + 0.0, 1.0 - 1.0, s(0.1 * math.pi), 1.0 + c(0.1 * math.pi)],
      [0.0 + 0.0, 1.0 + 1.0, s(0.2 * math.pi), 1.0 + c(0.2 * math.pi)],
  ])
  assert got.shape == (1, 2, 1, 1, 4)
  np.testing.assert_allclose(got[0, :, 0, 0], want, atol=1e-5)


def _padding_mask_2d():
  mask = np.zeros((2, 4, 5), bool)
  mask[0, :, 3:] = True  # right padding
  mask[1, 3:, :] = True  # bottom padding
  mask[1, :, 4:] = True
  return mask


@pytest.mark.parametrize("normalize", [True, False])
def test_2d_matches_numpy_with_padding_mask(normalize):
  mask = _padding_mask_2d()
  got = jax.jit(lambda m: position.sine_position_2d(m, num_pos_feats=6, normalize=normalize))(mask)
  want = np_sine_2d(mask, 6, normalize=normalize)
  assert got.shape == (2, 4, 5, 12)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)


def test_2d_shape_equals_all_valid_mask():
  by_shape = position.sine_position_2d((2, 3, 4), num_pos_feats=8)
  by_mask = position.sine_position_2d(np.zeros((2, 3, 4), bool), num_pos_feats=8)
  np.testing.assert_array_equal(np.asarray(by_shape), np.asarray(by_mask))
  np.testing.assert_allclose(np.asarray(by_shape), np_sine_2d(np.zeros((2, 3, 4), bool), 8),
                             atol=2e-5)


def test_3d_matches_numpy_with_padding_mask():
  mask = np.zeros((1, 3, 3, 4), bool)
  mask[0, :, :, 3:] = True
  mask[0, 2, 2:, :] = True  # one frame padded differently: the temporal count varies per pixel
  got = jax.jit(lambda m: position.sine_position_3d(m, num_pos_feats=4))(mask)
  assert got.shape == (1, 3, 3, 4, 8)
  np.testing.assert_allclose(np.asarray(got), np_sine_3d(mask, 4), atol=2e-5)


def test_default_width_and_argument_checks():
  shapes = jax.eval_shape(lambda: (position.sine_position_2d((1, 2, 2)),
                                   position.sine_position_3d((1, 2, 2, 2))))
  assert [s.shape for s in shapes] == [(1, 2, 2, 256), (1, 2, 2, 2, 256)]
  with pytest.raises(ValueError, match="normalize"):
    position.sine_position_2d((1, 2, 2), normalize=False, scale=1.0)
  with pytest.raises(ValueError, match="even"):
    position.sine_position_2d((1, 2, 2), num_pos_feats=3)
  with pytest.raises(ValueError, match="dims"):
    position.sine_position_3d(np.zeros((1, 2, 2), bool))
