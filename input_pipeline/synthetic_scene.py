"""Scene sampling and rendering of the synthetic dataset (``input_pipeline/synthetic.py``).

A ``VideoScene`` is a pure function of (seed, split, video index) and the size arguments: every
video draws from its own numpy Generator, so a video does not depend on how many others are
generated, nor on which process renders it. The content is described in ``synthetic.py``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image

from input_pipeline.synthetic_shapes import SHAPE_EXTENT, SHAPES, shape_mask

CATEGORIES: list[dict[str, Any]] = [
    {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)]
TEXTURES = ("plain", "stripes", "dots", "checker", "gradient")
# (width, height) ratios; the shorter side is `short_side`.
ASPECTS = ((4, 3), (16, 9), (1, 1), (3, 4))
SPLITS = ("train", "valid")
# Objects' radii at frame 0, fractions of the short side (the configs set their own).
DEFAULT_OBJECT_RADIUS = (0.08, 0.2)


# ---- scene sampling -----------------------------------------------------------------------------

def _rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
  return np.random.default_rng([seed, SPLITS.index(split), index, stream])


def _hsv_colour(h: float, s: float, v: float) -> np.ndarray:
  """RGB float32 [3] in [0, 255]; hue ``h`` in [0, 6)."""
  rgb = np.clip(np.abs((h + np.array([0.0, 4.0, 2.0])) % 6 - 3) - 1, 0, 1)
  return (4 + 247 * v * (1 - s + s * rgb)).astype(np.float32)


def _random_colour(rng: np.random.Generator, sat: tuple[float, float],
                   val: tuple[float, float]) -> np.ndarray:
  """RGB float32 [3] in [0, 255] from a random hue and the given saturation/value ranges."""
  h, s, v = rng.uniform(0, 6), rng.uniform(*sat), rng.uniform(*val)
  return _hsv_colour(h, s, v)


# class_colours: class c owns the hue band centre 6c/7 ± _CLASS_HUE_JITTER (circle = 6), so
# neighbouring bands stay apart.
_CLASS_HUE_JITTER = 0.25


@dataclasses.dataclass(frozen=True)
class _Instance:
  shape: int                 # index into SHAPES
  anchor_t: int              # frame at which the centre is at `anchor` (inside the frame)
  anchor: np.ndarray         # [2] (x, y) px
  velocity: np.ndarray       # [2] px / frame
  accel: np.ndarray          # [2] px / frame^2
  wobble_amp: np.ndarray     # [2] px
  wobble_period: float       # frames
  wobble_phase: np.ndarray   # [2] rad
  log_r0: float              # log radius (px) at frame 0
  log_r_rate: float          # per frame
  log_r_wobble: float
  theta0: float
  omega: float               # rad / frame
  texture: int               # index into TEXTURES
  colours: np.ndarray        # [2, 3] float32
  tex_period: float          # object units
  tex_angle: float

  def pose(self, t: int) -> tuple[float, float, float, float]:
    """(cx, cy, radius, angle) at frame t."""
    dt = t - self.anchor_t
    wobble = self.wobble_amp * (np.sin(2 * np.pi * t / self.wobble_period + self.wobble_phase)
                                - np.sin(2 * np.pi * self.anchor_t / self.wobble_period
                                         + self.wobble_phase))
    c = self.anchor + self.velocity * dt + 0.5 * self.accel * dt * dt + wobble
    log_r = (self.log_r0 + self.log_r_rate * t
             + self.log_r_wobble * math.sin(2 * math.pi * t / self.wobble_period))
    return float(c[0]), float(c[1]), math.exp(log_r), self.theta0 + self.omega * t

  def paint(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Texture in object coordinates (it moves, turns and scales with the object).

    Args:
      u, v: float32 [h, w] object coordinates of a patch.

    Returns:
      uint8 RGB, [h, w, 3] or broadcastable to it.
    """
    a, b = self.colours
    name = TEXTURES[self.texture]
    if name == "plain":
      return a.astype(np.uint8)[None, None]
    along = u * math.cos(self.tex_angle) + v * math.sin(self.tex_angle)
    if name == "gradient":
      w = np.clip(along * 0.5 + 0.5, 0, 1)[..., None]
      return (a + w * (b - a)).astype(np.uint8)
    inv_p = 1.0 / self.tex_period
    if name == "stripes":
      pick = np.floor(along * inv_p).astype(np.int32) & 1
    elif name == "dots":
      su, sv = u * inv_p, v * inv_p
      du, dv = su - np.floor(su) - 0.5, sv - np.floor(sv) - 0.5
      pick = du * du + dv * dv < 0.09
    else:  # checker
      pick = (np.floor(u * inv_p).astype(np.int32) + np.floor(v * inv_p).astype(np.int32)) & 1
    return np.where(pick.astype(bool)[..., None], b.astype(np.uint8), a.astype(np.uint8))


def _sample_instance(rng: np.random.Generator, shape: int, length: int, width: int, height: int,
                     short: int, colour_rng: np.random.Generator | None = None,
                     object_radius: tuple[float, float] = DEFAULT_OBJECT_RADIUS) -> _Instance:
  """One instance; ``colour_rng`` (class_colours) draws its class-band main colour; the radius
  at frame 0 is uniform in ``object_radius`` x the short side."""
  anchor_t = int(rng.integers(0, length))
  anchor = np.array([rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height])
  # A third of the objects cross the frame quickly, so they enter or leave within the video.
  speed = short * (rng.uniform(0.015, 0.035) if rng.random() < 0.35 else rng.uniform(0, 0.012))
  heading = rng.uniform(0, 2 * np.pi)
  # Pairs of clearly different colours (hue + value) so stripes/dots/checker stay visible.
  colours = np.stack([_random_colour(rng, (0.45, 1.0), (0.55, 1.0)),
                      _random_colour(rng, (0.3, 1.0), (0.15, 0.6))])
  swapped = rng.random() < 0.5
  if swapped:
    colours = colours[::-1]
  # Grow or shrink up to ~2x over a long video, but keep the radius within [0.75 x the smallest,
  # 1.5 x the largest] initial radius ([0.06, 0.3] x short side by default).
  low, high = object_radius
  log_r0 = math.log(short * rng.uniform(low, high))
  span = max(length - 1, 1)
  log_r_rate = float(np.clip(rng.uniform(-0.012, 0.012),
                             (math.log(0.75 * low * short) - log_r0) / span,
                             (math.log(1.5 * high * short) - log_r0) / span))
  instance = _Instance(
      shape=shape, anchor_t=anchor_t, anchor=anchor,
      velocity=speed * np.array([math.cos(heading), math.sin(heading)]),
      accel=rng.normal(0, 0.0003 * short, 2),
      wobble_amp=rng.uniform(0, 0.03 * short, 2),
      wobble_period=float(rng.uniform(12, 40)),
      wobble_phase=rng.uniform(0, 2 * np.pi, 2),
      log_r0=log_r0,
      log_r_rate=log_r_rate,
      log_r_wobble=float(rng.uniform(0, 0.08)),
      theta0=float(rng.uniform(0, 2 * np.pi)),
      omega=float(rng.uniform(-0.06, 0.06)),
      texture=int(rng.integers(len(TEXTURES))),
      colours=colours,
      tex_period=float(rng.uniform(0.3, 0.6)),
      tex_angle=float(rng.uniform(0, np.pi)),
  )
  if colour_rng is not None:
    # Its own stream, so everything else equals the shape-only variant.
    hue = (6.0 * shape / len(SHAPES)
           + colour_rng.uniform(-_CLASS_HUE_JITTER, _CLASS_HUE_JITTER)) % 6
    main = _hsv_colour(hue, colour_rng.uniform(0.6, 1.0), colour_rng.uniform(0.6, 1.0))
    # Slot 0 is what a plain texture shows; the dark second colour stays.
    secondary = colours[0] if swapped else colours[1]
    instance = dataclasses.replace(instance, colours=np.stack([main, secondary]))
  return instance


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear resize of [h, w, 3] values in [0, 255] to uint8 [height, width, 3].

  PIL rather than an interpolation matmul: BLAS threads would spin on cores others need.
  """
  pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
  return np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR))


def _background(rng: np.random.Generator, height: int, width: int, short: int) -> np.ndarray:
  """Static textured background uint8 [height, width, 3]: gradient, smooth noise, soft blobs.

  The smooth part is drawn at 1/4 resolution and upsampled (it has no detail to lose); a fine
  grain on top keeps the background from being flat. Values stay in [4, 251] (see render()).
  """
  ch, cw = max(2, height // 4), max(2, width // 4)
  ys = np.linspace(0, 1, ch, dtype=np.float32)[:, None, None]
  xs = np.linspace(0, 1, cw, dtype=np.float32)[None, :, None]
  angle = rng.uniform(0, 2 * np.pi)
  g = xs * math.cos(angle) + ys * math.sin(angle)
  g = (g - g.min()) / max(float(g.max() - g.min()), 1e-6)
  c1 = _random_colour(rng, (0.0, 0.35), (0.2, 0.85))
  c2 = _random_colour(rng, (0.0, 0.35), (0.2, 0.85))
  bg = c1 + g * (c2 - c1)
  coarse = rng.normal(128, 18, (int(rng.integers(3, 8)), int(rng.integers(3, 8)), 3))
  bg = bg + _resize(coarse, ch, cw) - 128
  scale = ch / height
  for _ in range(int(rng.integers(2, 6))):
    cy, cx = rng.uniform(0, ch), rng.uniform(0, cw)
    sigma = scale * short * rng.uniform(0.05, 0.2)
    alpha = rng.uniform(0.25, 0.6)
    yy = np.exp(-((np.arange(ch, dtype=np.float32) - cy) ** 2) / (2 * sigma**2))
    xx = np.exp(-((np.arange(cw, dtype=np.float32) - cx) ** 2) / (2 * sigma**2))
    weight = (alpha * yy[:, None] * xx[None, :])[..., None]
    bg = bg + weight * (_random_colour(rng, (0.0, 0.5), (0.2, 0.9)) - bg)
  bg = _resize(np.clip(bg, 8, 247), height, width)
  grain = rng.integers(0, 9, (height, width, 1), dtype=np.uint8)
  return bg - 4 + grain


@dataclasses.dataclass(frozen=True)
class VideoScene:
  """Everything random about one video; ``render()`` turns it into frames and masks.

  Attributes:
    seed, split, index: identify the video (its Generators derive from them).
    height, width, length: frame size and number of frames.
    instances: the objects, in annotation order.
    back_to_front: int [N] instance indices from the farthest to the nearest.
  """

  seed: int
  split: str
  index: int
  height: int
  width: int
  length: int
  instances: tuple[_Instance, ...]
  back_to_front: np.ndarray

  @property
  def category_ids(self) -> list[int]:
    return [CATEGORIES[inst.shape]["id"] for inst in self.instances]

  def render(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields, per frame, the image uint8 [H, W, 3] and full-shape masks bool [N, H, W].

    Repeatable: noise comes from a Generator created here, not from the scene's.
    """
    rng = _rng(self.seed, self.split, self.index, 1)
    h, w = self.height, self.width
    short = min(h, w)
    pad = max(2, int(0.08 * short))
    # Colours stay in [4, 251] so that adding noise in [-4, 4] needs no clipping in uint8.
    bg = _background(rng, h + pad, w + pad, short)
    pan0, pan1 = rng.integers(0, pad + 1, 2), rng.integers(0, pad + 1, 2)
    # Per-frame noise is a random crop of one larger field: far cheaper than fresh draws.
    noise = rng.integers(0, 9, (2 * h, 2 * w, 3), dtype=np.uint8)
    offsets = rng.integers(0, [h, w], (self.length, 2))
    for t in range(self.length):
      # Slow camera pan over the larger background.
      oy, ox = np.round(pan0 + (pan1 - pan0) * t / max(self.length - 1, 1)).astype(int)
      canvas = bg[oy:oy + h, ox:ox + w].copy()
      full = np.zeros((len(self.instances), h, w), bool)
      for i in self.back_to_front:
        inst = self.instances[i]
        cx, cy, r, theta = inst.pose(t)
        ext = SHAPE_EXTENT * r
        x0, x1 = max(int(cx - ext), 0), min(int(cx + ext) + 2, w)
        y0, y1 = max(int(cy - ext), 0), min(int(cy + ext) + 2, h)
        if x0 >= x1 or y0 >= y1:
          continue
        dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
        dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
        cos, sin = math.cos(theta) / r, math.sin(theta) / r
        u, v = cos * dx + sin * dy, cos * dy - sin * dx
        inside = shape_mask(SHAPES[inst.shape], u, v)
        full[i, y0:y1, x0:x1] = inside
        np.copyto(canvas[y0:y1, x0:x1], inst.paint(u, v), where=inside[..., None])
      canvas -= 4
      ny, nx = offsets[t]
      canvas += noise[ny:ny + h, nx:nx + w]
      yield canvas, full


def sample_scene(seed: int, split: str, index: int, min_frames: int = 8, max_frames: int = 60,
                 short_side: int = 240, class_colours: bool = False,
                 object_radius: tuple[float, float] = DEFAULT_OBJECT_RADIUS) -> VideoScene:
  """The scene of video ``index`` of ``split``; independent of every other video.

  ``object_radius``: range of the objects' radii at frame 0 as fractions of the short side;
  scaling it leaves every other draw (positions, motion, colours, order) unchanged.
  """
  rng = _rng(seed, split, index, 0)
  aw, ah = ASPECTS[int(rng.integers(len(ASPECTS)))]
  scale = short_side / min(aw, ah)
  width, height = int(round(aw * scale)), int(round(ah * scale))
  length = int(rng.integers(min_frames, max_frames + 1))
  num = int(rng.integers(1, 6))
  # A small pool of classes per video makes several instances of one class common.
  pool = rng.choice(len(SHAPES), size=int(rng.integers(1, num + 1)), replace=False)
  shapes = np.concatenate([pool, rng.choice(pool, size=num - pool.size)])
  colour_rng = _rng(seed, split, index, 2) if class_colours else None
  instances = tuple(_sample_instance(rng, int(s), length, width, height, short_side,
                                     colour_rng, object_radius)
                    for s in rng.permutation(shapes))
  return VideoScene(seed=seed, split=split, index=index, height=height, width=width,
                    length=length, instances=instances, back_to_front=rng.permutation(num))
