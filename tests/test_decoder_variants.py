"""Non-official decoder switches, each against a numpy re-derivation on a tiny decoder.

``decoder.mask_pooling``: mask embeddings read the query's mask-pooled mask features (every
layer's mask logits re-derived; the zero-initialised projection is the official decoder).
``decoder.query_anchors``: the initial prediction's Gaussian anchor log-prior.
``decoder.fine_memory``: the official decoder on the 1/16, 1/8 and 1/4 maps.
``decoder.peak_prior``: the log-prior centred on each previous mask's arg-max cell, and with
``peak_prior_votes`` the centre-vote term compared with the arg-max cell's vote.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.peak_prior_reference import numpy_peak_prior, numpy_vote_prior
from vis_jax.models import mask2former
from vis_jax.models.layers import mask_pooling

B, Q, D, C = 2, 5, 8, 16
LEVELS = ((2, 3), (4, 6), (8, 12))


def _decoder(pooling: bool, anchors: bool = False
             ) -> mask2former.MultiScaleMaskedTransformerDecoder:
  return mask2former.MultiScaleMaskedTransformerDecoder(
      num_classes=3, hidden_dim=C, num_queries=Q, num_heads=2, dim_feedforward=32,
      dec_layers=3, mask_dim=D, mask_pooling=pooling, query_anchors=anchors)


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  feats = [jnp.asarray(rng.normal(size=(B, h, w, C)), jnp.float32) for h, w in LEVELS]
  mask_features = jnp.asarray(rng.normal(size=(B, 16, 24, D)), jnp.float32)
  return feats, mask_features


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def test_zero_initialised_projection_is_the_official_decoder(inputs):
  feats, mask_features = inputs
  pooled = _decoder(True)
  params = pooled.init(jax.random.PRNGKey(1), feats, mask_features)["params"]
  assert not np.any(np.asarray(params["mask_pool_proj"]["kernel"]))
  official = {k: v for k, v in params.items() if k != "mask_pool_proj"}
  a = pooled.apply({"params": params}, feats, mask_features)
  b = _decoder(False).apply({"params": official}, feats, mask_features)
  np.testing.assert_array_equal(np.asarray(a["pred_masks"]), np.asarray(b["pred_masks"]))


def test_every_layer_matches_numpy(inputs):
  feats, mask_features = inputs
  module = _decoder(True)
  params = module.init(jax.random.PRNGKey(1), feats, mask_features)["params"]
  kernel = np.random.default_rng(2).normal(size=(D, D)).astype(np.float32) * 0.3
  params = dict(params, mask_pool_proj={"kernel": jnp.asarray(kernel)})
  out = module.apply({"params": params}, feats, mask_features)
  sets = [*out["aux_outputs"], out]
  f = np.asarray(mask_features, np.float64)
  for layer in range(1, len(sets)):
    normed = out["query_features"][layer - 1]
    embed = np.asarray(module.apply({"params": params}, normed,
                                    method=lambda m, x: m.mask_embed(x)), np.float64)
    weights = _sigmoid(np.asarray(sets[layer - 1]["pred_masks"], np.float64))   # [B, Q, H, W]
    pooled = (np.einsum("bqhw,bhwd->bqd", weights, f)
              / (weights.sum((2, 3))[..., None] + 1.0))
    expected = np.einsum("bqd,bhwd->bqhw", embed + pooled @ kernel, f)
    np.testing.assert_allclose(np.asarray(sets[layer]["pred_masks"]), expected,
                               rtol=1e-4, atol=1e-4)
  # The pooled term is what changed the masks (the check above is not vacuous).
  plain = module.apply({"params": dict(params, mask_pool_proj={"kernel": jnp.zeros((D, D))})},
                       feats, mask_features)
  assert np.abs(np.asarray(plain["pred_masks"]) - np.asarray(out["pred_masks"])).max() > 1e-2


def test_video_pooling_ignores_padded_frames():
  rng = np.random.default_rng(3)
  t = 3
  masks = rng.normal(size=(B, Q, t, 4, 6)).astype(np.float32)
  feats = rng.normal(size=(B, t, 4, 6, D)).astype(np.float32)
  valid = np.array([[True, True, False], [True, False, False]])
  got = mask_pooling.pooled_mean(*mask_pooling.mask_pool_sums(
      jnp.asarray(masks), jnp.asarray(feats), jnp.asarray(valid)))
  for b in range(B):
    n = int(valid[b].sum())
    w = _sigmoid(masks[b, :, :n].astype(np.float64))
    expected = (np.einsum("qthw,thwd->qd", w, feats[b, :n].astype(np.float64))
                / (w.sum((1, 2, 3))[:, None] + 1.0))
    np.testing.assert_allclose(np.asarray(got[b]), expected, rtol=1e-5, atol=1e-5)


def test_query_anchor_prior_matches_numpy(inputs):
  feats, mask_features = inputs
  module = _decoder(False, anchors=True)
  params = module.init(jax.random.PRNGKey(1), feats, mask_features)["params"]
  centers = np.asarray(params["anchor_centers"], np.float64)               # [Q, 2] (x, y)
  assert centers.min() >= 0.05 and centers.max() <= 0.95
  np.testing.assert_allclose(np.exp(np.asarray(params["anchor_log_sigma"])), 0.1, rtol=1e-6)
  sigma = np.linspace(0.05, 0.3, Q)
  params = dict(params, anchor_log_sigma=jnp.asarray(np.log(sigma), jnp.float32))
  out = module.apply({"params": params}, feats, mask_features)
  official = {k: v for k, v in params.items() if not k.startswith("anchor_")}
  plain = _decoder(False).apply({"params": official}, feats, mask_features)
  h, w = mask_features.shape[1:3]
  y, x = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
  d2 = ((x[None, None, :] - centers[:, 0, None, None]) ** 2
        + (y[None, :, None] - centers[:, 1, None, None]) ** 2)
  prior = -d2 / (2 * sigma[:, None, None] ** 2)
  # The initial prediction is the official one plus the prior; later layers attend differently.
  np.testing.assert_allclose(np.asarray(out["aux_outputs"][0]["pred_masks"]),
                             np.asarray(plain["aux_outputs"][0]["pred_masks"]) + prior[None],
                             rtol=1e-4, atol=1e-3)
  assert np.abs(np.asarray(out["pred_masks"]) - np.asarray(plain["pred_masks"])).max() > 1e-3
  video = module.apply({"params": params}, mask_features[:, None],
                       method=lambda m, f: m.anchor_prior(f))
  np.testing.assert_allclose(np.asarray(video)[0, :, 0], prior, rtol=1e-5, atol=1e-4)


def _pilot_case():
  rng = np.random.default_rng(4)
  masks = np.zeros((B, 3, 32, 48), bool)
  # Both valid instances in the top half, large enough to be non-empty at the coarsest level
  # (an empty row would attend everywhere, the official fallback).
  masks[:, 0, 0:16, 0:20] = True
  masks[:, 1, 0:16, 28:48] = True
  return {"masks": jnp.asarray(masks), "labels": jnp.asarray(rng.integers(0, 3, (B, 3))),
          "valid": jnp.asarray(np.array([[True, True, False]] * B))}


def test_mask_piloting_leaves_matching_queries_unchanged(inputs):
  feats, mask_features = inputs
  module = mask2former.MultiScaleMaskedTransformerDecoder(
      num_classes=3, hidden_dim=C, num_queries=Q, num_heads=2, dim_feedforward=32,
      dec_layers=3, mask_dim=D, mask_piloting=True)
  params = module.init(jax.random.PRNGKey(1), feats, mask_features)["params"]
  assert params["pilot_label_embed"]["embedding"].shape == (3, C)
  plain = module.apply({"params": params}, feats, mask_features)
  piloted = module.apply({"params": params}, feats, mask_features, _pilot_case())
  for key in ("pred_logits", "pred_masks", "query_features"):
    np.testing.assert_allclose(np.asarray(piloted[key]), np.asarray(plain[key]), atol=1e-5)
  assert len(piloted["pilot_outputs"]) == 4 and "pilot_outputs" not in plain
  assert piloted["pilot_outputs"][-1]["pred_masks"].shape == (B, 3, 16, 24)


def test_piloted_queries_read_only_their_ground_truth(inputs):
  """Memory outside every valid instance's ground truth (bottom half of each level) does not
  reach the piloted queries; memory inside it does."""
  feats, mask_features = inputs
  module = mask2former.MultiScaleMaskedTransformerDecoder(
      num_classes=3, hidden_dim=C, num_queries=Q, num_heads=2, dim_feedforward=32,
      dec_layers=3, mask_dim=D, mask_piloting=True)
  params = module.init(jax.random.PRNGKey(1), feats, mask_features)["params"]
  pilot = _pilot_case()
  run = lambda f: np.stack([np.asarray(o["pred_masks"])[:, :2] for o in module.apply(
      {"params": params}, f, mask_features, pilot)["pilot_outputs"]])
  base = run(feats)
  outside = [f.at[:, f.shape[1] // 2:].add(5.0) for f in feats]
  np.testing.assert_allclose(run(outside), base, atol=1e-5)
  inside = [f.at[:, :1].add(5.0) for f in feats]
  assert np.abs(run(inside) - base).max() > 1e-3


def test_pilot_point_noise_flips_cells_of_valid_slots_only():
  """``pilot_point_noise``: probability 1 turns a valid slot's attention mask into its
  complement; 0.25 flips about a quarter of its cells; padding slots stay unblocked."""
  pilot = _pilot_case()
  clean = mask2former.MultiScaleMaskedTransformerDecoder(num_classes=3, mask_piloting=True)
  exact = np.asarray(clean.pilot_attention(pilot["masks"], pilot["valid"], (16, 24)))
  key = jax.random.PRNGKey(3)
  for ratio in (1.0, 0.25):
    noisy = mask2former.MultiScaleMaskedTransformerDecoder(
        num_classes=3, mask_piloting=True, pilot_point_noise=ratio)
    got = np.asarray(noisy.pilot_attention(pilot["masks"], pilot["valid"], (16, 24), None, key))
    flipped = got[:, :2] != exact[:, :2]
    if ratio == 1.0:
      assert flipped.all()
    else:
      assert abs(flipped.mean() - ratio) < 0.05
    assert got[:, 2].all()  # padding slot: an empty row, unblocked
  assert not np.asarray(clean.pilot_attention(pilot["masks"], pilot["valid"], (16, 24), None,
                                              key) != exact).any()


def test_pilot_label_noise_changes_only_the_piloted_queries(inputs):
  """``pilot_label_noise``: piloted queries start from a random class's embedding (from the
  ``dropout`` stream); the matching queries are untouched."""
  feats, mask_features = inputs
  kwargs = dict(num_classes=3, hidden_dim=C, num_queries=Q, num_heads=2, dim_feedforward=32,
                dec_layers=3, mask_dim=D, mask_piloting=True)
  clean = mask2former.MultiScaleMaskedTransformerDecoder(**kwargs)
  params = clean.init(jax.random.PRNGKey(1), feats, mask_features)["params"]
  pilot = dict(_pilot_case(), labels=jnp.zeros((B, 3), jnp.int32))
  base = clean.apply({"params": params}, feats, mask_features, pilot)
  noisy = mask2former.MultiScaleMaskedTransformerDecoder(**kwargs, pilot_label_noise=1.0)
  outs = [noisy.apply({"params": params}, feats, mask_features, pilot,
                      rngs={"dropout": jax.random.PRNGKey(k)}) for k in range(4)]
  for out in outs:
    np.testing.assert_allclose(np.asarray(out["pred_masks"]), np.asarray(base["pred_masks"]),
                               atol=1e-5)
  # Some draw relabels a valid query away from class 0: its predictions differ from the clean
  # run; a draw that keeps class 0 for both reproduces them exactly.
  differs = [np.abs(np.asarray(o["pilot_outputs"][-1]["pred_masks"])[:, :2]
                    - np.asarray(base["pilot_outputs"][-1]["pred_masks"])[:, :2]).max() > 1e-4
             for o in outs]
  assert any(differs)


def test_piloted_criterion_is_the_criterion_with_identity_matching():
  """On predictions that are their slot's ground truth, the Hungarian matcher finds the
  identity: the fixed-matching loss equals ``set_criterion``'s, term by term."""
  from ml_collections import ConfigDict

  from vis_jax.losses import criterion
  rng = np.random.default_rng(5)
  g, k = 4, 3
  masks = np.zeros((B, g, 1, 24, 24), bool)
  for i in range(g):
    masks[:, i, 0, 5 * i:5 * i + 5, 2:20] = True
  valid = np.array([[True, True, True, False], [True, True, False, False]])
  labels = rng.integers(0, k, (B, g))
  targets = {"masks": jnp.asarray(masks), "labels": jnp.asarray(labels),
             "instance_valid": jnp.asarray(valid)}
  sets = []
  for _ in range(3):
    logits = rng.normal(size=(B, g, k + 1)).astype(np.float32)
    logits[np.arange(B)[:, None], np.arange(g)[None], labels] += 8.0
    logits[~valid, -1] += 16.0
    pred = np.where(masks, 6.0, -6.0) + rng.normal(size=masks.shape) * 0.5
    sets.append({"pred_logits": jnp.asarray(logits), "pred_masks": jnp.asarray(pred,
                                                                                jnp.float32)})
  cfg = ConfigDict(dict(num_classes=k, eos_coef=0.1, class_weight=2.0, mask_weight=5.0,
                        dice_weight=5.0, num_points=64, oversample_ratio=3.0,
                        importance_sample_ratio=0.75, matcher="scipy"))
  key = jax.random.key(0)
  total, metrics = criterion.piloted_criterion(sets, targets, key, cfg)
  ref_total, ref = criterion.set_criterion(dict(sets[-1], aux_outputs=sets[:-1]), targets, None,
                                           key, cfg)
  np.testing.assert_allclose(float(total), float(ref_total), rtol=1e-6)
  for name in ("loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_dice_1"):
    np.testing.assert_allclose(float(metrics[name.replace("loss_", "loss_pilot_")]),
                               float(ref[name]), rtol=1e-6)


def test_fine_memory_is_the_official_decoder_on_finer_maps(inputs):
  feats, mask_features = inputs
  fine = mask2former.MultiScaleMaskedTransformerDecoder(
      num_classes=3, hidden_dim=C, num_queries=Q, num_heads=2, dim_feedforward=32,
      dec_layers=3, mask_dim=C, fine_memory=True)
  official = fine.clone(fine_memory=False)
  mask_c = jnp.concatenate([mask_features, mask_features], -1)        # mask_dim = C: no proj
  params = fine.init(jax.random.PRNGKey(1), feats, mask_c)["params"]
  # Same parameter tree: a detector trained either way loads into the other.
  ref_params = official.init(jax.random.PRNGKey(1), feats, mask_c)["params"]
  assert jax.tree.structure(params) == jax.tree.structure(ref_params)
  out = fine.apply({"params": params}, feats, mask_c)
  expected = official.apply({"params": params}, [feats[1], feats[2], mask_c], mask_c)
  np.testing.assert_allclose(np.asarray(out["pred_masks"]), np.asarray(expected["pred_masks"]),
                             rtol=1e-5, atol=1e-5)
  # The coarsest map is not read at all; the official decoder does read it.
  changed = [feats[0] + 5.0, *feats[1:]]
  np.testing.assert_array_equal(
      np.asarray(fine.apply({"params": params}, changed, mask_c)["pred_masks"]),
      np.asarray(out["pred_masks"]))
  official_out = official.apply({"params": params}, feats, mask_c)["pred_masks"]
  official_changed = official.apply({"params": params}, changed, mask_c)["pred_masks"]
  assert np.abs(np.asarray(official_out) - np.asarray(official_changed)).max() > 1e-3
  # The 3-D decoder: the same switch on every frame's maps.
  video = mask2former.VideoMultiScaleMaskedTransformerDecoder(
      num_classes=3, hidden_dim=C, num_queries=Q, num_heads=2, dim_feedforward=32,
      dec_layers=3, mask_dim=C, fine_memory=True)
  clip = [jnp.stack([f, f[::-1]], 1) for f in feats]
  mask_clip = jnp.stack([mask_c, mask_c[::-1]], 1)
  video_out = video.apply({"params": params}, clip, mask_clip)
  video_ref = video.clone(fine_memory=False).apply(
      {"params": params}, [clip[1], clip[2], mask_clip], mask_clip)
  assert video_out["pred_masks"].shape == (B, Q, 2, 16, 24)
  np.testing.assert_allclose(np.asarray(video_out["pred_masks"]),
                             np.asarray(video_ref["pred_masks"]), rtol=1e-5, atol=1e-5)


def test_video_piloted_queries_read_only_their_track():
  """3-D decoder: a piloted query reads its track's ground truth in every frame (frame 0 top
  half, frame 1 bottom half) and nothing else, never a padded frame; matching queries are
  unchanged by the piloted ones."""
  rng = np.random.default_rng(5)
  t = 3
  feats = [jnp.asarray(rng.normal(size=(B, t, h, w, C)), jnp.float32) for h, w in LEVELS]
  mask_features = jnp.asarray(rng.normal(size=(B, t, 16, 24, D)), jnp.float32)
  frame_valid = jnp.asarray([[True, True, False]] * B)
  module = mask2former.VideoMultiScaleMaskedTransformerDecoder(
      num_classes=3, hidden_dim=C, num_queries=Q, num_heads=2, dim_feedforward=32,
      dec_layers=3, mask_dim=D, mask_piloting=True)
  params = module.init(jax.random.PRNGKey(1), feats, mask_features, frame_valid)["params"]
  masks = np.zeros((B, 2, t, 32, 48), bool)
  masks[:, 0, 0, 0:16, 0:20] = True
  masks[:, 0, 1, 16:32, 0:20] = True
  masks[:, 1, 0, 0:16, 28:48] = True
  masks[:, 1, 1, 16:32, 28:48] = True
  pilot = {"masks": jnp.asarray(masks), "labels": jnp.asarray([[0, 2]] * B),
           "valid": jnp.ones((B, 2), bool)}
  plain = module.apply({"params": params}, feats, mask_features, frame_valid)
  piloted = module.apply({"params": params}, feats, mask_features, frame_valid, pilot)
  np.testing.assert_allclose(np.asarray(piloted["pred_masks"]), np.asarray(plain["pred_masks"]),
                             atol=1e-5)
  assert piloted["pilot_outputs"][-1]["pred_masks"].shape == (B, 2, t, 16, 24)
  run = lambda f: np.stack([np.asarray(o["pred_masks"]) for o in module.apply(
      {"params": params}, f, mask_features, frame_valid, pilot)["pilot_outputs"]])
  base = run(feats)

  def shifted(rows_by_frame):
    out = []
    for f in feats:
      h = f.shape[2]
      for frame, (lo, hi) in rows_by_frame.items():
        f = f.at[:, frame, int(lo * h):int(hi * h)].add(5.0)
      out.append(f)
    return out

  # Outside the tracks: frame 0 bottom half, frame 1 top half, all of the padded frame 2.
  np.testing.assert_allclose(run(shifted({0: (0.5, 1.0), 1: (0.0, 0.5), 2: (0.0, 1.0)})), base,
                             atol=1e-5)
  assert np.abs(run(shifted({1: (0.5, 1.0)})) - base).max() > 1e-3


def _peak_prior_case(inputs, frames, scale, **switches):
  """(memory levels, mask features, peak-prior decoder): the image decoder, or with
  ``frames`` the 3-D decoder on a two-frame clip (the second frame flipped and scaled)."""
  feats, mask_features = inputs
  cls = (mask2former.VideoMultiScaleMaskedTransformerDecoder if frames
         else mask2former.MultiScaleMaskedTransformerDecoder)
  if frames:
    feats = [jnp.stack([f, f[::-1]], 1) for f in feats]
    mask_features = jnp.stack([mask_features, mask_features[::-1] * 0.5], 1)
  module = cls(num_classes=3, hidden_dim=C, num_queries=Q, num_heads=2, dim_feedforward=32,
               dec_layers=3, mask_dim=D, peak_prior=True, peak_prior_scale=scale, **switches)
  return feats, mask_features, module


@pytest.mark.parametrize("frames, scale, side", [(0, 0.2, 0), (2, 0.1, 3), (0, 0.15, 4)])
def test_peak_prior_matches_numpy(inputs, frames, scale, side):
  """``decoder.peak_prior``: every prediction after the first adds the log-prior (length scale
  ``peak_prior_scale``, with a ``side × side`` shape template when ``side > 0``) centred on the
  previous prediction's arg-max cell (per frame for clips); the first prediction is the plain
  ``mask_embed · F``."""
  feats, mask_features, module = _peak_prior_case(inputs, frames, scale,
                                                  peak_prior_template=side)
  params = module.init(jax.random.PRNGKey(1), feats, mask_features)["params"]
  head = params["peak_prior_head"]
  assert not np.any(np.asarray(head["kernel"]))
  np.testing.assert_array_equal(np.asarray(head["bias"]), [0.0, 0.0, -2.0] + [0.0] * side ** 2)
  kernel = np.random.default_rng(7).normal(size=(C, 3 + side ** 2)).astype(np.float32)
  params = dict(params, peak_prior_head={"kernel": jnp.asarray(kernel), "bias": head["bias"]})
  out = module.apply({"params": params}, feats, mask_features)
  sets = [*out["aux_outputs"], out]
  f = np.asarray(mask_features, np.float64)
  plain_masks = lambda x: np.einsum(
      "bqd,b...d->bq...", np.asarray(module.apply({"params": params}, x,
                                                  method=lambda m, y: m.mask_embed(y)),
                                     np.float64), f)
  initial = module.apply({"params": params}, jnp.broadcast_to(
      params["query_feat_embed"]["embedding"][None], (B, Q, C)),
      method=lambda m, x: m.decoder_norm(x))
  np.testing.assert_allclose(np.asarray(sets[0]["pred_masks"]), plain_masks(initial),
                             rtol=1e-4, atol=1e-4)
  for layer in range(1, len(sets)):
    normed = out["query_features"][layer - 1]
    coefficients = np.asarray(normed, np.float64) @ kernel + np.asarray(head["bias"])
    previous = np.asarray(sets[layer - 1]["pred_masks"], np.float64)
    prior = numpy_peak_prior(coefficients, previous, scale)
    assert np.abs(prior).max() > 1.0   # the prior is not negligible here
    np.testing.assert_allclose(np.asarray(sets[layer]["pred_masks"]),
                               plain_masks(normed) + prior, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("frames, scale", [(0, 0.2), (2, 0.1)])
def test_peak_prior_votes_match_numpy(inputs, frames, scale):
  """``decoder.peak_prior_votes``: ``centre_offsets`` is the zero-initialised dense head on the
  mask features, and every prediction after the first adds, besides the peak prior, the vote
  prior: ``−softplus(w)·|ν(p) − ν(peak)|²/σ₀²`` with ``ν = cell + offset``."""
  feats, mask_features, module = _peak_prior_case(inputs, frames, scale, peak_prior_votes=True)
  params = module.init(jax.random.PRNGKey(1), feats, mask_features)["params"]
  for name in ("centre_offset_head", "vote_prior_head"):
    assert not np.any(np.asarray(params[name]["kernel"]))
  assert not np.any(np.asarray(params["centre_offset_head"]["bias"]))
  np.testing.assert_array_equal(np.asarray(params["vote_prior_head"]["bias"]), [-2.0])
  rng = np.random.default_rng(11)
  peak_kernel = rng.normal(size=(C, 3)).astype(np.float32)
  vote_kernel = rng.normal(size=(C, 1)).astype(np.float32)
  offset_kernel = rng.normal(size=(D, 2)).astype(np.float32) * 0.05
  offset_bias = np.array([0.03, -0.02], np.float32)
  params = dict(params,
                peak_prior_head=dict(params["peak_prior_head"], kernel=jnp.asarray(peak_kernel)),
                vote_prior_head={"kernel": jnp.asarray(vote_kernel), "bias": jnp.asarray([2.0])},
                centre_offset_head={"kernel": jnp.asarray(offset_kernel),
                                    "bias": jnp.asarray(offset_bias)})
  out = module.apply({"params": params}, feats, mask_features)
  f = np.asarray(mask_features, np.float64)
  offsets = f @ offset_kernel + offset_bias                                  # [B, *E, H, W, 2]
  np.testing.assert_allclose(np.asarray(out["centre_offsets"]), offsets, rtol=1e-4, atol=1e-5)
  sets = [*out["aux_outputs"], out]
  for layer in range(1, len(sets)):
    normed = np.asarray(out["query_features"][layer - 1], np.float64)
    embed = np.asarray(module.apply({"params": params}, out["query_features"][layer - 1],
                                    method=lambda m, y: m.mask_embed(y)), np.float64)
    previous = np.asarray(sets[layer - 1]["pred_masks"], np.float64)
    peak = numpy_peak_prior(normed @ peak_kernel + [0.0, 0.0, -2.0], previous, scale)
    votes = numpy_vote_prior((normed @ vote_kernel)[..., 0] + 2.0, offsets, previous, scale)
    assert np.abs(votes).max() > 1.0   # the vote term is not negligible here
    expected = np.einsum("bqd,b...d->bq...", embed, f) + peak + votes
    np.testing.assert_allclose(np.asarray(sets[layer]["pred_masks"]), expected,
                               rtol=1e-4, atol=1e-3)


def test_votes_need_the_peak_prior(inputs):
  feats, mask_features = inputs
  module = mask2former.MultiScaleMaskedTransformerDecoder(
      num_classes=3, hidden_dim=C, num_queries=Q, num_heads=2, dim_feedforward=32,
      dec_layers=3, mask_dim=D, peak_prior_votes=True)
  with pytest.raises(ValueError, match="peak_prior_votes needs peak_prior"):
    module.init(jax.random.PRNGKey(1), feats, mask_features)


def _numpy_conv3x3_relu(x, kernel, bias):
  """``[..., H, W, Cin]`` → ``[..., H, W, Cout]``: zero-padded 3 × 3 cross-correlation
  (``kernel [3, 3, Cin, Cout]``), bias, ReLU — written out window by window."""
  h, w = x.shape[-3:-1]
  padded = np.pad(x, [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0)])
  out = np.zeros((*x.shape[:-1], kernel.shape[-1]))
  for dy in range(3):
    for dx in range(3):
      out += padded[..., dy:dy + h, dx:dx + w, :] @ kernel[dy, dx]
  return np.maximum(out + bias, 0.0)


@pytest.mark.parametrize("frames", [0, 2])
def test_centre_offset_tower_matches_numpy(inputs, frames):
  """``decoder.centre_offset_width``: the offsets are the head on two zero-padded 3 × 3
  conv + ReLU layers of the mask features (per frame for clips)."""
  feats, mask_features, module = _peak_prior_case(inputs, frames, 0.2, peak_prior_votes=True,
                                                  centre_offset_width=4)
  params = module.init(jax.random.PRNGKey(1), feats, mask_features)["params"]
  rng = np.random.default_rng(3)
  head = {"kernel": rng.normal(size=(4, 2)).astype(np.float32), "bias": np.float32([0.1, -0.2])}
  params = dict(params, centre_offset_head=head)
  out = module.apply({"params": params}, feats, mask_features)
  x = np.asarray(mask_features, np.float64)
  for i in range(2):
    conv = params["centre_offset_tower"][f"conv_{i}"]
    x = _numpy_conv3x3_relu(x, np.asarray(conv["kernel"], np.float64),
                            np.asarray(conv["bias"], np.float64))
  assert np.abs(x).max() > 0.1   # the tower passes something on
  np.testing.assert_allclose(np.asarray(out["centre_offsets"]),
                             x @ head["kernel"] + head["bias"], rtol=1e-4, atol=1e-4)
