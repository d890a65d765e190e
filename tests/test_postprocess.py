"""Video post-processing against hand cases and PyTorch's F.interpolate (the official op)."""

import numpy as np
import pytest
from pycocotools import mask as mask_util

from vis_jax.inference import postprocess


def test_select_topk_flattens_queries_by_classes():
  # 2 queries, K = 3 (+ no-object). Probabilities chosen by hand via log.
  probs = np.array([[0.5, 0.1, 0.3, 0.1], [0.05, 0.6, 0.05, 0.3]])
  scores, labels, queries = postprocess.select_topk(np.log(probs), k=3)
  np.testing.assert_allclose(scores, [0.6, 0.5, 0.3], rtol=1e-6)
  assert labels.tolist() == [1, 0, 2] and queries.tolist() == [1, 0, 0]
  # k larger than N*K is capped.
  assert len(postprocess.select_topk(np.log(probs), k=100)[0]) == 6


def _reference(logits, padded, resized, original):
  """The official steps with PyTorch ops (upsample → crop → sigmoid; resize logits → > 0)."""
  torch = pytest.importorskip("torch")
  import torch.nn.functional as F
  x = torch.from_numpy(logits)
  full = F.interpolate(x, size=padded, mode="bilinear", align_corners=False)
  cropped = full[:, :, :resized[0], :resized[1]]
  prob = cropped.sigmoid()
  fg = (prob > 0.5).float()
  score = (prob * fg).flatten(1).sum(1) / (fg.flatten(1).sum(1) + 1e-6)
  final = F.interpolate(cropped, size=original, mode="bilinear", align_corners=False) > 0
  return final.numpy(), score.numpy()


@pytest.mark.parametrize("original", [(75, 101), (30, 41)])  # upscaling and shrinking
def test_streaming_masks_equal_official_ops_in_chunks(original):
  rng = np.random.default_rng(0)
  k, t, h, w = 3, 7, 12, 16
  logits = rng.normal(scale=3, size=(k, t, h, w)).astype(np.float32)
  padded, resized = (48, 64), (45, 60)
  want_masks, want_score = _reference(logits, padded, resized, original)

  stream = postprocess.StreamingMasks(k, padded, resized, original)
  for start in range(0, t, 3):  # chunks of 3; the last has 1 valid frame, padded to 3
    chunk = logits[:, start:start + 3]
    valid = chunk.shape[1]
    if valid < 3:
      chunk = np.concatenate([chunk, np.full((k, 3 - valid, h, w), 9.0, np.float32)], 1)
    stream.add_chunk(chunk, num_valid=valid)
  assert stream.num_frames == t
  np.testing.assert_allclose(stream.mask_scores(), want_score, rtol=1e-4)
  for i in range(k):
    for f in range(t):
      got = mask_util.decode(stream.rles[i][f]).astype(bool)
      assert got.shape == original
      # Bilinear values that land within float noise of 0 may flip; allow a handful of pixels.
      assert (got != want_masks[i, f]).sum() <= 2

  results = stream.finish(7, np.array([0.9, 0.5, 0.1]), np.array([3, 1, 2]))
  assert [r["category_id"] for r in results] == [3, 1, 2]
  np.testing.assert_allclose([r["score"] for r in results],
                             np.array([0.9, 0.5, 0.1]) * want_score, rtol=1e-4)
  assert all(r["video_id"] == 7 and len(r["segmentations"]) == t for r in results)
  assert isinstance(results[0]["segmentations"][0]["counts"], str)
