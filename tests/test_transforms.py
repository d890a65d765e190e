"""Clip augmentation: detectron2 sizes, the moving crop, flip and rotation vs hand references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from configs import common
from input_pipeline import transforms as tr


@pytest.mark.parametrize("hw,short,max_size,want", [
    ((480, 640), 360, 1333, (360, 480)),      # 640 * 0.75
    ((720, 1280), 360, 1333, (360, 640)),
    ((640, 480), 360, 1333, (480, 360)),      # portrait
    ((500, 500), 288, 768, (288, 288)),       # square takes the `else` branch
    ((1000, 3000), 800, 1333, (444, 1333)),   # long side capped: 800 * 1333 / 2400 = 444.3
    ((333, 500), 288, 768, (288, 432)),       # 500 * 288 / 333 = 432.43
    ((4, 6), 3, 100, (3, 5)),                 # 4.5 rounds half *up* (int(x + .5)), not to even
    ((100, 1000), 512, 768, (77, 768)),       # 512 * 10 = 5120 > 768 -> 76.8 -> 77
])
def test_resize_shortest_edge_matches_detectron2_rule(hw, short, max_size, want):
  assert tr.resize_shortest_edge_size(*hw, short, max_size) == want


def test_fit_within():
  assert tr.fit_within((300, 500), (512, 768)) == (300, 500)
  assert tr.fit_within((512, 900), (512, 768)) == (437, 768)   # 512 * 768 / 900 = 436.9
  assert tr.fit_within((800, 400), (768, 512)) == (768, 384)


def test_moving_crop_interpolates_between_two_corners():
  height, width, num_frames = 1000, 900, 8
  for seed in range(50):
    boxes = tr.draw_moving_crop(np.random.default_rng(seed), height, width, num_frames, 100, 300)
    top, left, ch, cw = boxes.T
    assert np.all(ch == ch[0]) and np.all(cw == cw[0])
    assert 100 <= ch[0] <= 300 and 100 <= cw[0] <= 300
    assert np.all(top >= 0) and np.all(left >= 0)
    assert np.all(top + ch <= height) and np.all(left + cw <= width)
    # One direction for the whole clip: both coordinates move monotonically and the same way
    # (the second corner is below-right of the first).
    dy, dx = np.diff(top), np.diff(left)
    assert np.all(dy >= 0) or np.all(dy <= 0)
    assert np.all(dx >= 0) or np.all(dx <= 0)
    assert np.all(dy * dx >= 0)
    # Collinear: both coordinates use the same interpolation weight per frame (up to rounding).
    span_y, span_x = top[-1] - top[0], left[-1] - left[0]
    if abs(span_y) > 50 and abs(span_x) > 50:
      frac_y = (top - top[0]) / span_y
      frac_x = (left - left[0]) / span_x
      np.testing.assert_allclose(frac_y, frac_x, atol=1.0 / abs(span_y) + 1.0 / abs(span_x))


def test_moving_crop_matches_hand_derivation():
  height, width, num_frames, lo, hi = 500, 700, 5, 384, 600
  directions = set()
  for seed in range(30):
    boxes = tr.draw_moving_crop(np.random.default_rng(seed), height, width, num_frames, lo, hi)
    r = np.random.default_rng(seed)
    ch = r.integers(384, 500 + 1)            # height 500 < 600: upper bound clipped to the image
    cw = r.integers(384, 600 + 1)
    y0, x0 = r.integers(height - ch + 1), r.integers(width - cw + 1)
    y1, x1 = r.integers(y0, height - ch + 1), r.integers(x0, width - cw + 1)
    x = np.sort(r.random(num_frames))
    tops, lefts = np.round(y0 * x + y1 * (1 - x)), np.round(x0 * x + x1 * (1 - x))
    if r.random() < 0.5:
      tops, lefts = tops[::-1], lefts[::-1]
    np.testing.assert_array_equal(boxes, np.stack(
        [tops, lefts, np.full(num_frames, ch), np.full(num_frames, cw)], axis=1))
    if tops[0] != tops[-1]:
      directions.add(bool(tops[-1] > tops[0]))
  assert directions == {True, False}


def test_static_crop_and_small_image():
  boxes = tr.draw_moving_crop(np.random.default_rng(0), 50, 80, 4, 384, 600, moving=False)
  # The image is smaller than the minimum crop: the crop is the whole image.
  np.testing.assert_array_equal(boxes, [[0, 0, 50, 80]] * 4)
  boxes = tr.draw_moving_crop(np.random.default_rng(1), 900, 900, 4, 100, 200, moving=False)
  assert len({tuple(b) for b in boxes.tolist()}) == 1


def _coordinate_frame(height: int, width: int) -> np.ndarray:
  """uint8 image whose R, G channels are the row and column index (mod 256)."""
  ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  return np.stack([ys % 256, xs % 256, np.full_like(ys, 7)], -1).astype(np.uint8)


def test_crop_without_resize_is_an_exact_slice():
  frame = _coordinate_frame(120, 160)
  masks = np.zeros((2, 120, 160), bool)
  masks[0, 10:50, 20:90] = True
  masks[1, 70:110, 100:150] = True
  boxes = np.array([[5, 7, 60, 80], [20, 40, 60, 80], [35, 73, 60, 80]], np.int32)
  aug = tr.ClipAugmentation((120, 160), None, boxes, (60, 80), flip=False)
  images, out_masks = tr.augment_clip(aug, [frame] * 3, [masks] * 3)
  assert images.shape == (3, 60, 80, 3) and out_masks.shape == (2, 3, 60, 80)
  for t, (top, left, ch, cw) in enumerate(boxes):
    np.testing.assert_array_equal(images[t], frame[top:top + ch, left:left + cw])
    np.testing.assert_array_equal(out_masks[:, t], masks[:, top:top + ch, left:left + cw])


def test_crop_with_pre_resize_maps_back_to_the_original():
  # Pre-resize 2x down then crop: the crop box is the original region scaled by 2.
  frame = _coordinate_frame(200, 240)
  masks = np.zeros((1, 200, 240), bool)
  masks[0, 40:120, 60:200] = True
  boxes = np.array([[10, 20, 50, 60]], np.int32)
  aug = tr.ClipAugmentation((200, 240), (100, 120), boxes, (100, 120), flip=False)
  assert aug.source_box(0) == (40.0, 20.0, 160.0, 120.0)
  images, out_masks = tr.augment_clip(aug, [frame], [masks])
  # Output is the original region [20, 120) x [40, 160) at scale 1: an exact copy.
  np.testing.assert_array_equal(images[0], frame[20:120, 40:160])
  np.testing.assert_array_equal(out_masks[:, 0], masks[:, 20:120, 40:160])


def test_flip_mirrors_images_and_masks():
  frame = _coordinate_frame(30, 40)
  masks = np.zeros((1, 30, 40), bool)
  masks[0, 5:15, 2:9] = True
  aug = tr.ClipAugmentation((30, 40), None, None, (30, 40), flip=True)
  images, out_masks = tr.augment_clip(aug, [frame, frame], [masks, masks])
  np.testing.assert_array_equal(images[1], frame[:, ::-1])
  np.testing.assert_array_equal(out_masks[0, 1], masks[0, :, ::-1])
  assert out_masks[0, 0, 5:15, 31:38].all() and out_masks[0, 0].sum() == masks.sum()


def _encode(mask: np.ndarray) -> np.ndarray:
  """An image whose pixels are white inside the mask and dark grey outside."""
  return np.repeat(np.where(mask, 255, 60).astype(np.uint8)[..., None], 3, -1)


def _agreement_away_from_edges(image: np.ndarray, mask: np.ndarray) -> None:
  """Pixels clearly inside (outside) the mask are white (grey) in the image."""
  inner = ndimage.binary_erosion(mask, iterations=2)
  outer = ~ndimage.binary_dilation(mask, iterations=2)
  lum = image[..., 0]
  assert inner.sum() > 50 and outer.sum() > 50
  assert np.all(lum[inner] > 200)
  assert np.all(lum[outer] < 200)


def test_resize_keeps_masks_aligned_with_pixels():
  yy, xx = np.mgrid[:90, :130]
  mask = ((yy - 40) ** 2 / 30**2 + (xx - 60) ** 2 / 45**2 < 1) & ~((yy > 35) & (xx > 75))
  aug = tr.ClipAugmentation((90, 130), (120, 173),
                            np.array([[11, 17, 90, 110]], np.int32), (150, 183), flip=True)
  images, masks = tr.augment_clip(aug, [_encode(mask)], [mask[None]])
  _agreement_away_from_edges(images[0], masks[0, 0])


def test_rotation_by_90_degrees_is_rot90():
  rng = np.random.default_rng(1)
  masks = rng.random((3, 16, 16)) < 0.5
  out = tr.rotate_masks(masks, 90.0, (8.0, 8.0))
  # Counter-clockwise on screen == np.rot90 (k=1) on [row, col] arrays.
  np.testing.assert_array_equal(out, np.rot90(masks, 1, axes=(1, 2)))
  image = _encode(masks[0])
  np.testing.assert_array_equal(tr.rotate_image(image, 90.0, (8.0, 8.0)),
                                np.rot90(image, 1, axes=(0, 1)))


def test_rotation_keeps_masks_aligned_with_pixels():
  mask = np.zeros((80, 100), bool)
  mask[20:50, 30:85] = True
  mask[55:70, 10:40] = True
  aug = tr.ClipAugmentation((80, 100), None, None, (80, 100), flip=False,
                            rotation_angles=np.array([-14.0, 3.0, 12.5]),
                            rotation_center=(0.43, 0.58))
  images, masks = tr.augment_clip(aug, [_encode(mask)] * 3, [mask[None]] * 3)
  for t in range(3):
    _agreement_away_from_edges(images[t], masks[0, t])
    # The rotated region keeps (about) its area: no expand, the object stays inside the frame.
    assert abs(int(masks[0, t].sum()) - int(mask.sum())) < 0.05 * mask.sum()
  # Frames differ from each other and from the unrotated mask.
  assert not np.array_equal(masks[0, 0], masks[0, 2])


def test_draw_rotation_semantics():
  directions = set()
  for seed in range(40):
    angles, center = tr.draw_rotation(np.random.default_rng(seed), 5, 15.0, (0.4, 0.6))
    assert np.all(np.abs(angles) <= 15.0)
    assert 0.4 <= center[0] <= 0.6 and 0.4 <= center[1] <= 0.6
    steps = np.diff(angles)
    assert np.all(steps >= 0) or np.all(steps <= 0)
    directions.add(bool(steps[0] > 0))
  assert directions == {True, False}


def _input_config(prob: float) -> common.ConfigDict:
  c = common.base_config().input
  c.crop.prob = prob
  return c


def test_draw_clip_augmentation_uses_the_config():
  cfg = _input_config(prob=0.0)
  for seed in range(20):
    aug = tr.draw_clip_augmentation(np.random.default_rng(seed), 720, 1280, 5, cfg)
    assert aug.crop_boxes is None and aug.rotation_angles is None
    assert aug.output_size in {tr.resize_shortest_edge_size(720, 1280, s, cfg.max_size_train)
                               for s in cfg.min_size_train}
  cfg = _input_config(prob=1.0)
  flips = set()
  for seed in range(20):
    aug = tr.draw_clip_augmentation(np.random.default_rng(seed), 720, 1280, 5, cfg)
    assert aug.crop_resize is not None and min(aug.crop_resize) in (400, 500, 600)
    ch, cw = aug.crop_boxes[0, 2:]
    assert 384 <= ch <= min(600, aug.crop_resize[0]) and 384 <= cw <= 600
    assert aug.output_size in {tr.resize_shortest_edge_size(int(ch), int(cw), s,
                                                            cfg.max_size_train)
                               for s in cfg.min_size_train}
    flips.add(aug.flip)
  assert flips == {True, False}
  cfg.pseudo.min_size_train = (100,)
  aug = tr.draw_clip_augmentation(np.random.default_rng(0), 300, 400, 4, cfg, pseudo=True)
  assert min(aug.output_size) == 100 and aug.rotation_angles.shape == (4,)
