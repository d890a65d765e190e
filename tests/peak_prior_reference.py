"""Independent numpy re-derivation of ``layers/peak_prior.py`` (shared by the decoder tests)."""

import numpy as np


def numpy_peak_prior(coefficients: np.ndarray, previous: np.ndarray,
                     scale: float = 0.2) -> np.ndarray:
  """Independent re-derivation: loops over every (query, frame) map's arg-max cell; ``scale``
  is σ₀ as a fraction of the frame's side."""
  h, w = previous.shape[-2:]
  lead = previous.shape[:-2]
  prior = np.zeros(previous.shape)
  ys, xs = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
  for index in np.ndindex(*lead):
    row, col = np.unravel_index(np.argmax(previous[index]), (h, w))
    ux, uy, v = coefficients[index[:2]]
    dx = (xs[None, :] - xs[col]) / scale
    dy = (ys[:, None] - ys[row]) / scale
    prior[index] = ux * dx + uy * dy - np.log1p(np.exp(v)) * (dx ** 2 + dy ** 2)
  return prior
