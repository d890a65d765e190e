"""Video-level post-processing shared by VITA and Mask2Former-VIS (spec §2.3, §3.8).

1. ``select_topk``: softmax over K+1 classes, drop no-object, flatten queries × classes, top-k
   (one query may appear with several labels), label = index mod K, query = index // K.
2. ``StreamingMasks``: the selected queries' mask logits arrive a chunk of frames at a time
   (``[k, t, h/4, w/4]``) so a video of any length never holds all its masks:
   bilinear to the padded input size → crop to the resized (un-padded) size → sigmoid; the
   mask score accumulates Σ(σ·[σ>0.5]) / Σ[σ>0.5] over all frames; the cropped logits are
   resized bilinearly to the original (height, width) and thresholded at logit > 0; each frame
   becomes one compressed RLE per instance immediately. ``upsample_and_encode`` is one such
   chunk on its own (also used for the stitched tracks of chunked inference,
   ``vis_jax/inference/clip_linker.py``).
3. ``finish``: score = class probability × mask score, results in the official format.

Interpolation is ``jax.image.resize(method="bilinear", antialias=False)`` = PyTorch's
``F.interpolate(mode="bilinear", align_corners=False)`` (the official code), also when
shrinking.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from pycocotools import mask as mask_util


def select_topk(pred_logits: np.ndarray | jax.Array, k: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Top-k (query, class) pairs.

  Args:
    pred_logits: ``[N, K+1]`` class logits of the video queries (last class = no object).
    k: detections to keep (10 for YouTube-VIS, 20 for OVIS); capped at N·K.

  Returns:
    scores ``[k]`` (softmax probabilities), labels ``[k]`` (0..K-1), query indices ``[k]``.
  """
  logits = np.asarray(pred_logits, np.float32)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs = probs / probs.sum(-1, keepdims=True)
  num_classes = logits.shape[-1] - 1
  flat = probs[:, :num_classes].reshape(-1)
  k = min(k, flat.size)
  # Stable descending order: ties keep the lower flat index, as torch.topk does on CPU.
  order = np.argsort(-flat, kind="stable")[:k]
  return flat[order], (order % num_classes).astype(np.int64), (order // num_classes)


@functools.partial(jax.jit, static_argnames=("padded_hw", "resized_hw", "original_hw"))
def upsample_chunk(logits: jax.Array, frame_valid: jax.Array, padded_hw: tuple[int, int],
                   resized_hw: tuple[int, int], original_hw: tuple[int, int]
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``[k, t, h, w]`` logits → (binary masks ``[k, t, H0, W0]``, score numerator and
  denominator ``[k]`` over the valid frames ``frame_valid [t]`` of this chunk)."""
  k, t = logits.shape[:2]
  logits = logits.astype(jnp.float32)
  full = jax.image.resize(logits, (k, t, *padded_hw), "bilinear", antialias=False)
  cropped = full[:, :, :resized_hw[0], :resized_hw[1]]
  probs = jax.nn.sigmoid(cropped)
  fg = (probs > 0.5) & frame_valid[None, :, None, None]
  numerator = jnp.where(fg, probs, 0.0).sum((1, 2, 3))
  denominator = fg.sum((1, 2, 3)).astype(jnp.float32)
  original = jax.image.resize(cropped, (k, t, *original_hw), "bilinear", antialias=False)
  return original > 0, numerator, denominator


def upsample_and_encode(mask_logits: np.ndarray | jax.Array, num_valid: int | None,
                        padded_hw: tuple[int, int], resized_hw: tuple[int, int],
                        original_hw: tuple[int, int]
                        ) -> tuple[list[list[dict[str, Any]]], np.ndarray, np.ndarray]:
  """Low-resolution mask logits of ``k`` instances → per-frame RLEs at the original size.

  Args:
    mask_logits: ``[k, t, h, w]``; only the first ``num_valid`` frames count (None = all; a
      padded chunk keeps shapes static).
    padded_hw, resized_hw, original_hw: the video's sizes (``EvalVideo``).

  Returns:
    ``(rles, numerator, denominator)``: ``rles[i]`` holds ``num_valid`` compressed RLEs of
    instance ``i``; the mask-score sums ``[k]`` (Σσ·[σ>0.5], Σ[σ>0.5]) over those frames.
  """
  t = mask_logits.shape[1] if num_valid is None else int(num_valid)
  # A validity mask instead of slicing keeps one compiled shape per chunk size.
  frame_valid = jnp.arange(mask_logits.shape[1]) < t
  masks, numerator, denominator = upsample_chunk(
      jnp.asarray(mask_logits), frame_valid, tuple(int(s) for s in padded_hw),
      tuple(int(s) for s in resized_hw), tuple(int(s) for s in original_hw))
  masks = np.asarray(masks)
  rles: list[list[dict[str, Any]]] = [[] for _ in range(masks.shape[0])]
  for frame in range(t):
    if not rles:
      break
    # [H, W, k] Fortran order: one encode call for all instances of the frame.
    encoded = mask_util.encode(np.asfortranarray(masks[:, frame].transpose(1, 2, 0),
                                                 dtype=np.uint8))
    for i, rle in enumerate(encoded):
      rle["counts"] = rle["counts"].decode("ascii")
      rles[i].append(rle)
  return rles, np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)


class StreamingMasks:
  """Accumulates per-frame RLEs and mask scores of k instances over chunks of frames."""

  def __init__(self, num_instances: int, padded_hw: tuple[int, int],
               resized_hw: tuple[int, int], original_hw: tuple[int, int]):
    self.padded_hw = tuple(int(s) for s in padded_hw)
    self.resized_hw = tuple(int(s) for s in resized_hw)
    self.original_hw = tuple(int(s) for s in original_hw)
    self.rles: list[list[dict[str, Any]]] = [[] for _ in range(num_instances)]
    self._numerator = np.zeros(num_instances, np.float64)
    self._denominator = np.zeros(num_instances, np.float64)

  @property
  def num_frames(self) -> int:
    return len(self.rles[0]) if self.rles else 0

  def add_chunk(self, mask_logits: np.ndarray | jax.Array, num_valid: int | None = None) -> None:
    """Adds frames. ``mask_logits``: ``[k, t, h, w]``; only the first ``num_valid`` frames
    count (a padded last chunk keeps shapes static)."""
    rles, numerator, denominator = upsample_and_encode(
        mask_logits, num_valid, self.padded_hw, self.resized_hw, self.original_hw)
    self._numerator += numerator
    self._denominator += denominator
    for mine, added in zip(self.rles, rles, strict=True):
      mine.extend(added)

  def mask_scores(self) -> np.ndarray:
    return self._numerator / (self._denominator + 1e-6)

  def finish(self, video_id: int, class_scores: np.ndarray, category_ids: np.ndarray
             ) -> list[dict[str, Any]]:
    """Official result dicts; score = class probability × mask score."""
    scores = np.asarray(class_scores, np.float64) * self.mask_scores()
    return [{"video_id": int(video_id), "score": float(s), "category_id": int(c),
             "segmentations": rles}
            for s, c, rles in zip(scores, category_ids, self.rles, strict=True)]
