"""Model name (``config.model_name``) → bundle class."""

from __future__ import annotations

import importlib

from configs.common import ConfigDict, ConfigError
from vis_jax.models.base import ModelBundle

# name → "module:ClassName", imported on demand so a config pulls in only its own model.
_BUNDLES = {
    "pixel_baseline": "vis_jax.models.pixel_baseline:PixelBaseline",
    "mask2former": "vis_jax.models.mask2former_model:Mask2FormerImage",
    "vita": "vis_jax.models.vita_model:Vita",
    "mask2former_vis": "vis_jax.models.mask2former_vis_model:Mask2FormerVIS",
}


def available() -> list[str]:
  return sorted(_BUNDLES)


def get_bundle(config: ConfigDict) -> ModelBundle:
  name = config.model_name
  if name not in _BUNDLES:
    raise ConfigError(f"invalid config value config.model_name: {name!r} is not a registered "
                      f"model; available: {available()}")
  module, cls = _BUNDLES[name].split(":")
  return getattr(importlib.import_module(module), cls)(config)
