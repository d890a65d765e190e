"""Linear probe of mask features: could *any* mask embedding segment this instance?

Mask2Former-style models predict a mask as ``embedding · features`` per pixel. Given the mask
features of a trained model, the probe fits, for each ground-truth instance, the best such
embedding (plus a bias) by logistic regression on the instance's own target (the ground truth
taken to the feature grid): one embedding per instance-frame (what a frame query is), or one per
track shared by all its sampled frames (what a VITA / Mask2Former-VIS video query is). Its IoU
is an upper bound on what the queries could reach with these features; far above the model's
own masks, it says the features separate the instances and the decoder does not find the
embedding that does. In-sample by design (fitted on the frames it is scored on), so it is an
optimistic bound.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

PIXEL_BUCKET = 8192   # fitted pixel counts are padded to a multiple of this (few compilations)
STEPS = 1500
LEARNING_RATE = 0.05
L2 = 1e-4


@functools.partial(jax.jit, static_argnames=("steps",))
def _fit(features: jax.Array, targets: jax.Array, weights: jax.Array, steps: int
         ) -> jax.Array:
  """Logistic regression per target row, full batch with Adam.

  ``features [N, D]`` (standardised here), ``targets [g, N]`` in [0, 1], ``weights [N]``
  (0 = padding) → logits ``[g, N]``.
  """
  mean = jnp.sum(features * weights[:, None], 0) / jnp.sum(weights)
  var = jnp.sum((features - mean) ** 2 * weights[:, None], 0) / jnp.sum(weights)
  x = jnp.concatenate([(features - mean) / jnp.sqrt(var + 1e-6),
                       jnp.ones((features.shape[0], 1))], 1)

  def loss(w, target):
    z = x @ w
    bce = jax.nn.softplus(z) - z * target
    return jnp.sum(bce * weights) / jnp.sum(weights) + L2 * jnp.sum(w[:-1] ** 2)

  def one(target):
    def step(_, state):
      w, m, v = state
      g = jax.grad(loss)(w, target)
      m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
      return w - LEARNING_RATE * m / (jnp.sqrt(v) + 1e-8), m, v
    zeros = jnp.zeros(x.shape[1])
    w, _, _ = jax.lax.fori_loop(0, steps, step, (zeros, zeros, zeros))
    return x @ w

  return jax.vmap(one)(targets)


def fit_masks(features: np.ndarray, targets: np.ndarray, steps: int = STEPS) -> np.ndarray:
  """The best linear mask of each instance on the given features.

  Args:
    features: ``[n, h, w, D]`` mask features of ``n`` frames (their valid grid cells only).
    targets: ``[g, n, h, w]`` soft ground truth in [0, 1]: one embedding per row ``g`` is
      shared by its ``n`` frames (``n = 1``: per frame).
    steps: optimisation steps.

  Returns:
    ``[g, n, h, w]`` fitted mask logits.
  """
  n, h, w, d = features.shape
  g = targets.shape[0]
  pixels = n * h * w
  padded = -(-pixels // PIXEL_BUCKET) * PIXEL_BUCKET
  flat = np.zeros((padded, d), np.float32)
  flat[:pixels] = features.reshape(pixels, d)
  target = np.zeros((g, padded), np.float32)
  target[:, :pixels] = targets.reshape(g, pixels)
  weights = (np.arange(padded) < pixels).astype(np.float32)
  logits = _fit(jnp.asarray(flat), jnp.asarray(target), jnp.asarray(weights), steps)
  return np.asarray(logits)[:, :pixels].reshape(g, n, h, w)
