"""Independent numpy re-derivation of ``layers/peak_prior.py`` (shared by the decoder tests)."""

import numpy as np


def numpy_peak_prior(coefficients: np.ndarray, previous: np.ndarray,
                     scale: float = 0.2) -> np.ndarray:
  """Independent re-derivation: loops over every (query, frame) map's arg-max cell; ``scale``
  is σ₀ as a fraction of the frame's side. Coefficients beyond the first three are an ``n × n``
  template: one Gaussian bump per grid point, evaluated directly (no separable product)."""
  h, w = previous.shape[-2:]
  lead = previous.shape[:-2]
  prior = np.zeros(previous.shape)
  ys, xs = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
  for index in np.ndindex(*lead):
    row, col = np.unravel_index(np.argmax(previous[index]), (h, w))
    ux, uy, v, *template = coefficients[index[:2]]
    px, py = xs[None, :] - xs[col], ys[:, None] - ys[row]   # frame units
    dx, dy = px / scale, py / scale
    prior[index] = ux * dx + uy * dy - np.log1p(np.exp(v)) * (dx ** 2 + dy ** 2)
    side = int(round(np.sqrt(len(template))))
    assert side * side == len(template)
    for k, weight in enumerate(template):
      i, j = divmod(k, side)                  # row-major: y offset, then x offset
      spacing = 2 * scale / (side - 1)        # frame units
      centre_x, centre_y = -scale + j * spacing, -scale + i * spacing
      prior[index] += weight * np.exp(
          -((px - centre_x) ** 2 + (py - centre_y) ** 2) / (2 * spacing ** 2))
  return prior


def numpy_vote_prior(weights: np.ndarray, offsets: np.ndarray, previous: np.ndarray,
                     scale: float = 0.2) -> np.ndarray:
  """Independent re-derivation of the centre-vote prior: ``weights [B, Q]`` (the raw ``w``),
  ``offsets [B, *E, H, W, 2]``, ``previous [B, Q, *E, H, W]``; loops over every (query, frame)
  map and every cell, comparing the cell's vote with the vote of the map's arg-max cell."""
  h, w = previous.shape[-2:]
  prior = np.zeros(previous.shape)
  ys, xs = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
  for index in np.ndindex(*previous.shape[:-2]):
    frame = (index[0], *index[2:])
    row, col = np.unravel_index(np.argmax(previous[index]), (h, w))
    peak_vote = np.array([xs[col], ys[row]]) + offsets[frame][row, col]
    softplus = np.log1p(np.exp(weights[index[:2]]))
    for y in range(h):
      for x in range(w):
        vote = np.array([xs[x], ys[y]]) + offsets[frame][y, x]
        prior[index + (y, x)] = -softplus * np.sum((vote - peak_vote) ** 2) / scale ** 2
  return prior
