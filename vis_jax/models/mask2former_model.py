"""The whole Mask2Former image model (backbone → pixel decoder → masked-attention decoder) and
its training bundle (``config.model_name = "mask2former"``).

``Mask2FormerModel`` runs on frames ``[N, H, W, 3]`` uint8: ``preprocess`` (normalise, zero the
padding outside ``image_valid``, pad to a multiple of 32) → ``build_backbone`` (ResNet with frozen
BN, or Swin) → ``MSDeformAttnPixelDecoder`` → ``MultiScaleMaskedTransformerDecoder``. Parameters
sit under ``backbone``, ``pixel_decoder`` and ``predictor`` (the component names of
``vis_jax/convert_mask2former_heads.py``); a ResNet's statistics live in ``frozen_bn/backbone``.

VITA reuses this model as its frame detector: ``__call__`` also returns the decoder's
``query_features`` (``decoder_norm`` of every layer) and the pixel decoder's
``pre_mask_features`` (VITA's own mask-feature input), and ``pixel_features`` stops after the
pixel decoder. Under ``jit`` outputs a caller does not use are dead code and cost nothing.

``config.model`` (``default_config()``; official values)::

  backbone        build_backbone config: name + attribute overrides [resnet50]
  pixel_decoder   conv_dim, mask_dim [256], num_encoder_layers [6], num_heads [8], num_points [4],
                  dim_feedforward [1024], transformer_in_features [res3..res5], common_stride [4;
                  2 adds an FPN level from a ResNet's stride-2 stem, masks at 1/2],
                  mask_position [False: position-blind mask features], memory_position
                  [False: position only in the decoder's attention keys], num_groups [32];
                  deformable-attention memory knobs batch_mode ("vmap"|"map"), map_batch_size,
                  query_chunk (0 = off), remat
  decoder         hidden_dim [256], num_queries [100], num_heads [8], dim_feedforward [2048],
                  dec_layers [9 = official DEC_LAYERS − 1], pre_norm [False],
                  enforce_input_proj [False]
  remat_backbone        recompute the backbone in the backward pass (memory ↔ speed)
  remat_decoder_layers  recompute each decoder layer's blocks in the backward pass

``config.dtype`` is the compute dtype of every part (parameters stay fp32; the deformable
sampling, the heads' losses and the matching costs are fp32 whatever it is).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from configs.common import ConfigDict
from vis_jax.losses import centre_offsets, criterion, discriminative, semantic
from vis_jax.models import backbones
from vis_jax.models.backbones import FEATURE_STRIDES, PIXEL_MEAN, PIXEL_STD, STEM_STRIDE
from vis_jax.models.base import Batch, Metrics, ModelBundle
from vis_jax.models.layers.peak_prior import PRIOR_SCALE
from vis_jax.models.mask2former import MultiScaleMaskedTransformerDecoder
from vis_jax.models.pixel_decoder import MSDeformAttnPixelDecoder

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# Deformable-attention knobs where 0 means "off" in a config (ConfigDict fields cannot be None
# and still take an int from the command line).
_ZERO_IS_NONE = ("map_batch_size", "query_chunk")


def default_config() -> ConfigDict:
  """``config.model`` for the official Mask2Former R50 (COCO instance) architecture."""
  return ConfigDict(dict(
      backbone=ConfigDict(dict(name="resnet50")),
      pixel_decoder=ConfigDict(dict(
          conv_dim=256, mask_dim=256, num_encoder_layers=6, num_heads=8, num_points=4,
          dim_feedforward=1024, transformer_in_features=("res3", "res4", "res5"),
          common_stride=4, mask_position=False, memory_position=False, num_groups=32,
          batch_mode="vmap", map_batch_size=0, query_chunk=0, remat=False)),
      decoder=ConfigDict(dict(
          hidden_dim=256, num_queries=100, num_heads=8, dim_feedforward=2048, dec_layers=9,
          pre_norm=False, enforce_input_proj=False, mask_pooling=False, query_anchors=False,
          mask_piloting=False, pilot_label_noise=0.0, pilot_point_noise=0.0,
          fine_memory=False, peak_prior=False, peak_prior_scale=PRIOR_SCALE,
          peak_prior_template=0, peak_prior_votes=False,
          centre_offset_width=0)),
      remat_backbone=False,
      remat_decoder_layers=False,
      # A linear per-pixel class head on the mask features, trained by loss.semantic_weight
      # (vis_jax/losses/semantic.py); not part of the official model.
      semantic_head=False,
      # >0: a linear pixel embedding of this size on the mask features, trained by
      # loss.embedding_weight (vis_jax/losses/discriminative.py); not part of the official model.
      embedding_dim=0,
  ))


def _plain(cfg: Any) -> dict[str, Any]:
  """ConfigDict / mapping → dict with lists turned into tuples (hashable module fields)."""
  items = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
  return {k: tuple(v) if isinstance(v, list) else v for k, v in items.items()}


class Mask2FormerModel(nn.Module):
  """Backbone + pixel decoder + masked-attention decoder on frames.

  Build it with ``Mask2FormerModel.from_config(config.model, num_classes, config.dtype)``.

  Attributes:
    num_classes: ``K`` (class head has ``K + 1`` outputs, no-object last).
    backbone_config: ``build_backbone`` config (``name`` + overrides).
    pixel_decoder_config: ``MSDeformAttnPixelDecoder`` attributes (``_ZERO_IS_NONE`` keys: 0 =
      None).
    decoder_config: ``MultiScaleMaskedTransformerDecoder`` attributes except ``num_classes``,
      ``mask_dim`` and ``in_channels`` (taken from the pixel decoder).
    remat_backbone: ``nn.remat`` around the backbone.
    remat_decoder_layers: ``nn.remat`` around every decoder block.
    semantic_head: a ``Dense(K+1)`` on the mask features whose ``semantic_logits`` the
      auxiliary ``loss.semantic_weight`` trains (not in the official model).
    embedding_dim: > 0: a ``Dense(embedding_dim)`` on the mask features whose
      ``pixel_embedding`` the auxiliary ``loss.embedding_weight`` trains (not official).
    dtype: compute dtype.
    pixel_mean, pixel_std: input normalisation (RGB, 0–255).
  """
  num_classes: int
  backbone_config: Mapping[str, Any] = FrozenDict(name="resnet50")
  pixel_decoder_config: Mapping[str, Any] = FrozenDict()
  decoder_config: Mapping[str, Any] = FrozenDict()
  remat_backbone: bool = False
  remat_decoder_layers: bool = False
  semantic_head: bool = False
  embedding_dim: int = 0
  dtype: Any = jnp.float32
  pixel_mean: Sequence[float] = PIXEL_MEAN
  pixel_std: Sequence[float] = PIXEL_STD

  # The decoder class (not a dataclass field): Mask2Former-VIS swaps in the 3-D video decoder.
  decoder_class = MultiScaleMaskedTransformerDecoder

  @classmethod
  def from_config(cls, model_cfg: Any, num_classes: int, dtype: Any = "float32"
                  ) -> Mask2FormerModel:
    """The model described by ``config.model`` (see the module docstring)."""
    dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
    return cls(num_classes=int(num_classes),
               backbone_config=FrozenDict(_plain(model_cfg.backbone)),
               pixel_decoder_config=FrozenDict(_plain(model_cfg.pixel_decoder)),
               decoder_config=FrozenDict(_plain(model_cfg.decoder)),
               remat_backbone=bool(model_cfg.remat_backbone),
               remat_decoder_layers=bool(model_cfg.remat_decoder_layers),
               semantic_head=bool(model_cfg.get("semantic_head", False)),
               embedding_dim=int(model_cfg.get("embedding_dim", 0)), dtype=dtype)

  @property
  def backbone_family(self) -> str:
    return backbones.BACKBONE_PRESETS[self.backbone_config["name"]]["family"]

  def setup(self):
    bb_cfg = dict(self.backbone_config)
    bb_cfg.setdefault("dtype", self.dtype)
    strides = dict(FEATURE_STRIDES)
    common_stride = int(self.pixel_decoder_config.get("common_stride", 4))
    if common_stride < min(strides.values()):
      # Masks finer than 1/4 need the stem's stride-2 map (ResNet only).
      if common_stride != STEM_STRIDE or self.backbone_family != "resnet":
        raise ValueError(f"pixel_decoder.common_stride={common_stride}: below 4 only 2 is "
                         f"possible, with a ResNet backbone (got {bb_cfg['name']!r})")
      bb_cfg["stem_feature"] = True
      strides = {"stem": STEM_STRIDE, **strides}
    backbone = backbones.build_backbone(bb_cfg)
    if self.remat_backbone:
      kwargs = {f.name: getattr(backbone, f.name) for f in dataclasses.fields(backbone)
                if f.name not in ("parent", "name")}
      # Swin's ``train`` (argument 2 counting self) switches drop path: a Python bool.
      static = (2,) if self.backbone_family == "swin" else ()
      backbone = nn.remat(type(backbone), static_argnums=static)(**kwargs)
    self.backbone = backbone

    pd_cfg = dict(self.pixel_decoder_config)
    for key in _ZERO_IS_NONE:
      if not pd_cfg.get(key):
        pd_cfg[key] = None
    self.pixel_decoder = MSDeformAttnPixelDecoder(
        in_features=tuple(strides), feature_strides=tuple(strides.values()),
        dtype=self.dtype, **pd_cfg)

    self.predictor = self.decoder_class(
        num_classes=self.num_classes, mask_dim=self.pixel_decoder.mask_dim,
        in_channels=self.pixel_decoder.conv_dim, remat_layers=self.remat_decoder_layers,
        dtype=self.dtype, **dict(self.decoder_config))
    if self.semantic_head:
      self.semantic_classifier = nn.Dense(self.num_classes + 1, dtype=self.dtype)
    if self.embedding_dim:
      self.pixel_embedder = nn.Dense(self.embedding_dim, dtype=self.dtype)

  def _backbone_features(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    if self.backbone_family == "swin":
      return self.backbone(x, train)
    return self.backbone(x)

  def pixel_features(self, images: jax.Array, image_valid: jax.Array | None = None,
                     train: bool = False) -> dict[str, Any]:
    """Backbone + pixel decoder.

    Args:
      images: ``[N, H, W, 3]`` RGB uint8 (or float 0–255), zero padded bottom/right.
      image_valid: optional ``[N, H, W]`` bool, True inside the image (padding is set to 0
        after normalisation, as the official padding).
      train: Swin stochastic depth (needs a ``"dropout"`` rng).

    Returns:
      The pixel decoder's dict: ``mask_features [N, Hp/4, Wp/4, mask_dim]``,
      ``multi_scale_features`` (3 maps, coarsest first), ``pre_mask_features
      [N, Hp/4, Wp/4, conv_dim]``; ``Hp, Wp`` = H, W padded to multiples of 32.
    """
    x = backbones.preprocess(images, self.pixel_mean, self.pixel_std, dtype=self.dtype,
                             valid=image_valid)
    return self.pixel_decoder(self._backbone_features(x, train))

  def __call__(self, images: jax.Array, image_valid: jax.Array | None = None,
               train: bool = False, pilot: dict[str, jax.Array] | None = None
               ) -> dict[str, Any]:
    """Runs the whole model on frames.

    Args:
      images, image_valid, train: as ``pixel_features``.
      pilot: ``decoder.mask_piloting`` training inputs (``mask2former.py``: ground-truth
        ``masks [N, G, H, W]``, ``labels``, ``valid [N, G]``); adds ``pilot_outputs``.

    Returns:
      ``pred_logits [N, Q, K+1]``, ``pred_masks [N, Q, Hp/4, Wp/4]`` (last layer),
      ``aux_outputs`` (list of ``L`` dicts: initial queries, layers 1..L−1),
      ``query_features [L, N, Q, C]`` (``decoder_norm`` of every layer's output),
      ``mask_features [N, Hp/4, Wp/4, mask_dim]``, ``pre_mask_features
      [N, Hp/4, Wp/4, conv_dim]``; with ``semantic_head`` also ``semantic_logits
      [N, Hp/4, Wp/4, K+1]``, with ``embedding_dim`` ``pixel_embedding [N, Hp/4, Wp/4, D]``.
    """
    pix = self.pixel_features(images, image_valid, train)
    if pilot is None:
      out = self.predictor(pix["multi_scale_features"], pix["mask_features"])
    else:
      out = self.predictor(pix["multi_scale_features"], pix["mask_features"], pilot)
    out = dict(out, mask_features=pix["mask_features"],
               pre_mask_features=pix["pre_mask_features"])
    if self.semantic_head:
      out["semantic_logits"] = self.semantic_classifier(pix["mask_features"])
    if self.embedding_dim:
      out["pixel_embedding"] = self.pixel_embedder(pix["mask_features"])
    return out


# ---- training ----------------------------------------------------------------------------------


def criterion_config(config: ConfigDict) -> ConfigDict:
  """``config.loss`` as the criterion reads it: plus ``num_classes`` (``config.data``) and
  ``batch_axes`` (``config.sharding``), so the Hungarian matcher runs per device under the
  trainer's mesh (``matching.match_all_layers_sharded``)."""
  cfg = ConfigDict(config.loss.to_dict())
  cfg.num_classes = int(config.data.num_classes)
  cfg.batch_axes = tuple(config.sharding.batch_axes)
  return cfg


def as_single_frame_clips(outputs: Mapping[str, Any]) -> dict[str, Any]:
  """Image predictions ``[B, Q, h, w]`` → the criterion's ``[B, Q, 1, h, w]``, in fp32."""

  def one(o):
    return {"pred_logits": o["pred_logits"].astype(jnp.float32),
            "pred_masks": o["pred_masks"][:, :, None].astype(jnp.float32)}

  return dict(one(outputs), aux_outputs=[one(a) for a in outputs.get("aux_outputs", ())])


def frame_targets(batch: Batch, frame: int = 0) -> dict[str, jax.Array]:
  """Targets of one frame of each clip as ``T = 1`` clips.

  An instance counts only if it is present in that frame (the official image dataset has no
  absent instances).
  """
  return {"masks": batch["masks"][:, :, frame:frame + 1],
          "labels": batch["labels"],
          "instance_valid": batch["instance_valid"] & batch["present"][:, :, frame]}


class Mask2FormerImage(ModelBundle):
  """Bundle for ``config.model_name = "mask2former"``: image training on ``T = 1`` clips.

  Only frame 0 of every clip is used (``batch["images"][:, 0]``); the loss is the official
  ``SetCriterion`` (``config.loss``), its Hungarian matcher run per device (``batch_axes``),
  plus ``loss.semantic_weight`` times the dense class loss of ``losses/semantic.py`` (needs
  ``model.semantic_head``), ``loss.embedding_weight`` times the pixel embedding loss of
  ``losses/discriminative.py`` (needs ``model.embedding_dim``), ``loss.centre_offset_weight``
  times the centre-offset loss of ``losses/centre_offsets.py`` (needs
  ``model.decoder.peak_prior_votes``) and ``loss.mask_piloting_weight``
  times the mask-piloted queries' losses (``model.decoder.mask_piloting``,
  ``criterion.piloted_criterion``).
  """

  batch_keys = ("images", "image_valid", "masks", "labels", "present", "instance_valid")

  def __init__(self, config: ConfigDict):
    super().__init__(config)
    self.module = Mask2FormerModel.from_config(config.model, config.data.num_classes,
                                               config.dtype)
    self.loss_cfg = criterion_config(config)
    self.semantic_weight = float(config.loss.get("semantic_weight", 0.0))
    self.embedding_weight = float(config.loss.get("embedding_weight", 0.0))
    self.centre_offset_weight = float(config.loss.get("centre_offset_weight", 0.0))
    self.mask_piloting = bool(config.model.decoder.get("mask_piloting", False))
    self.mask_piloting_weight = float(config.loss.get("mask_piloting_weight", 1.0))

  def init(self, rng: jax.Array, batch: Batch) -> tuple[Any, Any]:
    params_key, dropout_key = jax.random.split(rng)
    variables = self.module.init({"params": params_key, "dropout": dropout_key},
                                 batch["images"][:, 0], batch["image_valid"])
    variables = dict(variables)
    params = variables.pop("params")
    return params, variables  # {"frozen_bn": ...} for ResNet, {} for Swin

  def loss(self, params: Any, model_state: Any, batch: Batch, rng: jax.Array
           ) -> tuple[jax.Array, Metrics]:
    dropout_key, criterion_key = jax.random.split(rng)
    targets = frame_targets(batch)
    pilot = None
    if self.mask_piloting:
      pilot = {"masks": targets["masks"][:, :, 0], "labels": targets["labels"],
               "valid": targets["instance_valid"]}
    outputs = self.module.apply({"params": params, **model_state}, batch["images"][:, 0],
                                batch["image_valid"], train=True, pilot=pilot,
                                rngs={"dropout": dropout_key})
    total, metrics = criterion.set_criterion(as_single_frame_clips(outputs), targets, None,
                                             criterion_key, self.loss_cfg)
    if self.mask_piloting:
      total, metrics = criterion.add_piloted_losses(
          total, metrics, [as_single_frame_clips(o) for o in outputs["pilot_outputs"]],
          targets, criterion_key, self.loss_cfg, self.mask_piloting_weight)
    if self.semantic_weight:
      logits = outputs["semantic_logits"]
      probs, weight = semantic.semantic_targets(
          targets["masks"][:, :, 0], targets["labels"], targets["instance_valid"],
          batch["image_valid"], logits.shape[1:3], self.module.num_classes)
      metrics["loss_semantic"] = semantic.semantic_loss(logits, probs, weight)
      total = total + self.semantic_weight * metrics["loss_semantic"]
    if self.embedding_weight:
      embedding_loss, parts = discriminative.discriminative_loss(
          outputs["pixel_embedding"], targets["masks"][:, :, 0], targets["instance_valid"])
      metrics.update({f"loss_embedding_{k}": v for k, v in parts.items()})
      metrics["loss_embedding"] = embedding_loss
      total = total + self.embedding_weight * embedding_loss
    if self.centre_offset_weight:
      metrics["loss_centre_offset"] = centre_offsets.centre_offset_loss(
          outputs["centre_offsets"], targets["masks"][:, :, 0], targets["instance_valid"],
          batch["image_valid"])
      total = total + self.centre_offset_weight * metrics["loss_centre_offset"]
    metrics["loss_total"] = total
    return total, metrics
