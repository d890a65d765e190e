"""Video IoU: sum over frames of intersections / sum over frames of unions (spec §4).

Per pair (prediction d, GT g), frames are walked like ``zip(d, g)`` (the shorter list wins):
both present -> I += |d∩g|, U += |d∪g| (both 0 if the RLE sizes differ, as an RLE merge of
different sizes is empty); one present -> U += its area; IoU = I / U, or 0 when U = 0.

Instead of two RLE merges per pair and frame (the official loop), each frame costs one
``pycocotools.mask.iou`` call over all present predictions x all present GTs of the video, and
the exact integer intersection is recovered from the IoU: o = i / (a + b - i) gives
i = o (a + b) / (1 + o), exact after rounding because i < 2^31 and o carries 53 bits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from vis_jax.evaluation.loading import Track


def _stack(tracks: Sequence[Track], num_frames: int) -> tuple[np.ndarray, ...]:
  n = len(tracks)
  present = np.zeros((n, num_frames), bool)
  areas = np.zeros((n, num_frames), np.int64)
  sizes = np.zeros((n, num_frames, 2), np.int64)
  lengths = np.zeros(n, np.int64)
  for i, t in enumerate(tracks):
    length = len(t.rles)
    lengths[i] = length
    present[i, :length] = t.present
    areas[i, :length] = t.areas
    sizes[i, :length] = t.sizes
  return present, areas, sizes, lengths


def frame_intersections(d_rles: list[dict], g_rles: list[dict], d_areas: np.ndarray,
                        g_areas: np.ndarray) -> np.ndarray:
  """Exact |d∩g| [len(d_rles), len(g_rles)] for same-size masks (0 where sizes differ)."""
  o = np.asarray(mask_utils.iou(d_rles, g_rles, [0] * len(g_rles)), np.float64)
  o = o.reshape(len(d_rles), len(g_rles))
  # pycocotools marks size mismatches -1; the caller masks those frames out anyway.
  o = np.where(o > 0, o, 0.0)
  total = (d_areas[:, None] + g_areas[None, :]).astype(np.float64)
  return np.rint(o * total / (1.0 + o)).astype(np.int64)


def video_iou(dts: Sequence[Track], gts: Sequence[Track]) -> tuple[np.ndarray, int]:
  """Returns (IoU [len(dts), len(gts)], number of both-present frames with differing mask sizes)."""
  num_d, num_g = len(dts), len(gts)
  if num_d == 0 or num_g == 0:
    return np.zeros((num_d, num_g)), 0
  num_frames = max(len(t.rles) for t in (*dts, *gts))
  pd, ad, sd, ld = _stack(dts, num_frames)
  pg, ag, sg, lg = _stack(gts, num_frames)
  inter = np.zeros((num_d, num_g, num_frames), np.int64)
  for f in range(num_frames):
    di = np.flatnonzero(pd[:, f])
    gi = np.flatnonzero(pg[:, f])
    if di.size and gi.size:
      inter[np.ix_(di, gi, [f])] = frame_intersections(
          [dts[i].rles[f] for i in di], [gts[j].rles[f] for j in gi],
          ad[di, f], ag[gi, f])[..., None]
  # zip() semantics: a pair only looks at frames below the shorter of its two lengths.
  valid = np.arange(num_frames) < np.minimum(ld[:, None], lg[None, :])[..., None]
  pdv = pd[:, None, :] & valid
  pgv = pg[None, :, :] & valid
  both = pdv & pgv
  same_size = np.all(sd[:, None] == sg[None, :], axis=-1)
  both_same = both & same_size
  ad3, ag3 = ad[:, None, :], ag[None, :, :]
  inter_sum = np.where(both_same, inter, 0).sum(-1)
  union_sum = (np.where(both_same, ad3 + ag3 - inter, 0)
               + np.where(pdv & ~pgv, ad3, 0)
               + np.where(pgv & ~pdv, ag3, 0)).sum(-1)
  iou = np.where(union_sum > 0, inter_sum / np.maximum(union_sum, 1), 0.0)
  return iou, int((both & ~same_size).sum())
