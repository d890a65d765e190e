"""The model-bundle contract shared by every model family (scenic-style).

A bundle owns the flax module, how to initialise it from a batch, and the training loss. The
trainer knows nothing else about a model, so VITA, Mask2Former-VIS, IFC and VisTR plug in by
registering a bundle (``vis_jax/models/registry.py``).
"""

from __future__ import annotations

import abc
from typing import Any

import jax

from configs.common import ConfigDict

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class ModelBundle(abc.ABC):
  """Module + initialisation + loss of one model family.

  Attributes:
    batch_keys: the input-pipeline batch keys the loss reads; the trainer ships only these
      to the devices (host-only keys such as ``video_ids`` stay on the host).
  """

  batch_keys: tuple[str, ...] = ("images", "image_valid", "masks", "labels", "present",
                                 "instance_valid")

  def __init__(self, config: ConfigDict):
    self.config = config

  @abc.abstractmethod
  def init(self, rng: jax.Array, batch: Batch) -> tuple[Any, Any]:
    """Returns ``(params, model_state)``; ``model_state`` holds non-trainable collections
    (e.g. frozen BatchNorm statistics) and may be ``{}``."""

  @abc.abstractmethod
  def loss(self, params: Any, model_state: Any, batch: Batch, rng: jax.Array
           ) -> tuple[jax.Array, Metrics]:
    """Scalar training loss (fp32) and named scalar metrics, for a (micro-)batch."""

  def frozen_patterns(self) -> tuple[str, ...]:
    """Parameter-path regexes the model itself freezes (added to ``optim.frozen_patterns``)."""
    return ()

  def predict_video(self, params: Any, model_state: Any, video: Any) -> list[dict[str, Any]]:
    """Predictions for one whole video (``input_pipeline.eval_source.EvalVideo``).

    Returns dicts ``{"score": float, "label": int (contiguous), "segmentations": [one
    compressed RLE per frame at the original size]}``. Models without video inference keep
    this default, and evaluation modes refuse them with a clear message.
    """
    raise NotImplementedError(
        f"model {self.config.model_name!r} has no video inference; evaluation needs a video "
        "model (see docs/architecture.md)")
