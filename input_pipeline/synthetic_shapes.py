"""The synthetic dataset's shapes: inside tests of the seven unit shapes (one per class).

A shape lives in its own frame: radius ~1 around the origin, never beyond ``SHAPE_EXTENT`` radii,
so the renderer (``input_pipeline/synthetic.py``) evaluates it only inside that box.
"""

from __future__ import annotations

import functools
import math

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross", "crescent")

# Largest distance from the centre of any shape, in units of the instance radius.
SHAPE_EXTENT = 1.2
_TEMPLATE = 512
_STAR = np.array([(1.1 if k % 2 == 0 else 0.45) * np.array(
    [math.sin(k * math.pi / 5), -math.cos(k * math.pi / 5)]) for k in range(10)])
_TRIANGLE = np.array([
    1.1 * np.array([math.sin(k * 2 * math.pi / 3), -math.cos(k * 2 * math.pi / 3)])
    for k in range(3)])


def _inside_convex(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
  """Inside test of a convex polygon (vertices [K, 2] clockwise in image coordinates)."""
  inside = None
  for (xa, ya), (xb, yb) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
    nx, ny = yb - ya, xa - xb
    half = u * nx + v * ny <= xa * nx + ya * ny
    inside = half if inside is None else inside & half
  return inside


def _inside_polygon(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
  """Even-odd rule point-in-polygon test; u, v any broadcastable shape, vertices [K, 2]."""
  inside = np.zeros(np.broadcast_shapes(u.shape, v.shape), bool)
  for (xa, ya), (xb, yb) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
    if ya == yb:
      continue
    crosses = (ya > v) != (yb > v)
    x_at = xa + (v - ya) * (xb - xa) / (yb - ya)
    inside ^= crosses & (u < x_at)
  return inside


@functools.cache
def _star_template() -> np.ndarray:
  """The star rasterised once on a fine grid over [-E, E]^2; bool [_TEMPLATE, _TEMPLATE]."""
  c = ((np.arange(_TEMPLATE, dtype=np.float32) + 0.5) / _TEMPLATE * 2 - 1) * SHAPE_EXTENT
  return _inside_polygon(c[None, :], c[:, None], _STAR)


def _inside_star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  # A lookup is ~5x cheaper than the 10-edge polygon test; at 512 px over the shape it is
  # exact to well under a pixel for any radius we draw, and masks and images share it anyway.
  scale = _TEMPLATE / (2 * SHAPE_EXTENT)
  iu = np.clip(((u + SHAPE_EXTENT) * scale).astype(np.int32), 0, _TEMPLATE - 1)
  iv = np.clip(((v + SHAPE_EXTENT) * scale).astype(np.int32), 0, _TEMPLATE - 1)
  return _star_template()[iv, iu]


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Inside test of a unit shape in its own frame (radius ~1 around the origin).

  Args:
    shape: one of ``SHAPES``.
    u, v: float arrays (broadcastable, e.g. [h, 1] and [1, w] or [h, w]) of object coordinates.

  Returns:
    bool array of the broadcast shape.
  """
  r2 = u * u + v * v
  if shape == "circle":
    return r2 <= 1.0
  if shape == "square":
    return (np.abs(u) <= 0.82) & (np.abs(v) <= 0.82)
  if shape == "triangle":
    return _inside_convex(u, v, _TRIANGLE)
  if shape == "star":
    return _inside_star(u, v)
  if shape == "ring":
    return (r2 <= 1.0) & (r2 >= 0.55**2)
  if shape == "cross":
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.32) & (av <= 0.95)) | ((av <= 0.32) & (au <= 0.95))
  if shape == "crescent":
    return (r2 <= 1.0) & ((u - 0.42) ** 2 + v * v > 0.8**2)
  raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
