"""Mask overlays and contact sheets (numpy + Pillow).

One colour per track everywhere (training batches, predictions, videos), so the same object is
recognisable across frames.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image


def track_colors(num: int, seed: int = 0) -> np.ndarray:
  """Distinct, saturated colours: golden-ratio hue steps. Returns uint8 ``[num, 3]``."""
  phase = (seed * 0.1234) % 1.0
  hues = (phase + 0.61803398875 * np.arange(num)) % 1.0
  rgb = [colorsys.hsv_to_rgb(h, 0.85, 1.0) for h in hues]
  return (np.asarray(rgb, np.float32).reshape(num, 3) * 255).round().astype(np.uint8)


def _edges(mask: np.ndarray) -> np.ndarray:
  """Boundary pixels of a bool mask ``[H, W]`` (4-neighbourhood)."""
  padded = np.pad(mask, 1, mode="edge")
  interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
  return mask & ~interior


def overlay_masks(image: np.ndarray, masks: np.ndarray, colors: np.ndarray,
                  alpha: float = 0.5) -> np.ndarray:
  """Blends instance masks onto an image.

  Args:
    image: uint8 ``[H, W, 3]``.
    masks: bool ``[N, H, W]``.
    colors: uint8 ``[N, 3]``.
    alpha: fill opacity; boundaries are drawn opaque.

  Returns:
    uint8 ``[H, W, 3]``.
  """
  out = image.astype(np.float32)
  for mask, color in zip(masks, colors, strict=True):
    if not mask.any():
      continue
    out[mask] = (1 - alpha) * out[mask] + alpha * color.astype(np.float32)
    out[_edges(mask)] = color
  return out.round().clip(0, 255).astype(np.uint8)


def contact_sheet(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
  """Tiles images (uint8 ``[h, w, 3]``, any sizes) into a grid, row by row."""
  cell_h = max(t.shape[0] for row in rows for t in row)
  cell_w = max(t.shape[1] for row in rows for t in row)
  ncols = max(len(row) for row in rows)
  sheet = np.full((len(rows) * (cell_h + pad) + pad, ncols * (cell_w + pad) + pad, 3), 255,
                  np.uint8)
  for r, row in enumerate(rows):
    for c, tile in enumerate(row):
      y, x = pad + r * (cell_h + pad), pad + c * (cell_w + pad)
      sheet[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
  return sheet


def save_png(path: str, image: np.ndarray) -> None:
  Image.fromarray(image).save(path)
