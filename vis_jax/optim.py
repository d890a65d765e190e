"""Optimizer: AdamW with the official detectron2 parameter groups, clipping and schedules.

Parameter groups follow the official Mask2Former/VITA ``build_optimizer``:
  * parameters whose path matches ``backbone_pattern`` get ``learning_rate * backbone_multiplier``;
  * norm parameters, embeddings and Swin's ``relative_position_bias_table`` /
    ``absolute_pos_embed`` get no weight decay (``no_decay_patterns``). The official code DOES
    decay biases; ``no_decay_bias=True`` switches to the common "no decay on biases" variant;
  * parameters matching ``frozen_patterns`` get neither updates nor optimizer state
    (``optax.set_to_zero`` inside ``optax.multi_transform``).

Gradients of frozen parameters are zeroed before full-model clipping, so the global norm is
over trainable parameters only, as ``clip_grad_norm_`` over ``requires_grad`` params.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from configs.common import ConfigDict

FROZEN = "frozen"


def param_path(path: tuple[Any, ...]) -> str:
  """``('backbone', 'conv1', 'kernel')`` → ``'backbone/conv1/kernel'``."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _matches(patterns: Sequence[str], path: str) -> bool:
  return any(re.search(p, path) for p in patterns)


def param_label(path: str, cfg: ConfigDict) -> str:
  """Group label of one parameter: ``frozen`` or ``{backbone,head}_{decay,no_decay}``."""
  if _matches(cfg.frozen_patterns, path):
    return FROZEN
  where = "backbone" if re.search(cfg.backbone_pattern, path) else "head"
  no_decay = _matches(cfg.no_decay_patterns, path) or (
      cfg.no_decay_bias and path.rsplit("/", 1)[-1] == "bias")
  return f"{where}_{'no_decay' if no_decay else 'decay'}"


def param_labels(params: Any, cfg: ConfigDict) -> Any:
  """A pytree of group labels with the structure of ``params``."""
  return jax.tree_util.tree_map_with_path(lambda p, _: param_label(param_path(p), cfg), params)


def learning_rate_schedule(cfg: ConfigDict, num_train_steps: int) -> optax.Schedule:
  """detectron2-style warmup (linear from ``warmup_factor``) times a multi-step or cosine decay."""
  base = cfg.learning_rate
  if cfg.schedule == "multistep":
    boundaries = {int(s): cfg.decay_factor for s in cfg.decay_steps}
    decay = optax.piecewise_constant_schedule(base, boundaries)
  elif cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(base, max(num_train_steps, 1), alpha=cfg.cosine_alpha)
  elif cfg.schedule == "constant":
    decay = optax.constant_schedule(base)
  else:
    raise ValueError(f"config.optim.schedule: unknown schedule {cfg.schedule!r}")
  warmup_steps = int(cfg.warmup_steps)
  if warmup_steps <= 0:
    return decay

  def schedule(step: jax.Array) -> jax.Array:
    alpha = jnp.minimum(step / warmup_steps, 1.0)
    factor = cfg.warmup_factor * (1.0 - alpha) + alpha
    return decay(step) * factor

  return schedule


def with_frozen_patterns(cfg: ConfigDict, patterns: Sequence[str]) -> ConfigDict:
  """``cfg`` with ``patterns`` appended to ``frozen_patterns`` (e.g. a model's frozen parts)."""
  if not patterns:
    return cfg
  out = cfg.copy_and_resolve_references()
  with out.unlocked():
    out.frozen_patterns = tuple(cfg.frozen_patterns) + tuple(patterns)
  return out


def make_optimizer(cfg: ConfigDict, params: Any, num_train_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the full optimizer for ``params`` (a concrete or abstract pytree).

  Returns:
    (transformation, schedule) — the schedule is returned for logging the learning rate.
  """
  schedule = learning_rate_schedule(cfg, num_train_steps)
  labels = param_labels(params, cfg)

  def adamw(multiplier: float, weight_decay: float) -> optax.GradientTransformation:
    return optax.adamw(lambda step: schedule(step) * multiplier, b1=cfg.b1, b2=cfg.b2,
                       eps=cfg.eps, weight_decay=weight_decay)

  groups = {
      FROZEN: optax.set_to_zero(),
      "backbone_decay": adamw(cfg.backbone_multiplier, cfg.weight_decay),
      "backbone_no_decay": adamw(cfg.backbone_multiplier, 0.0),
      "head_decay": adamw(1.0, cfg.weight_decay),
      "head_no_decay": adamw(1.0, 0.0),
  }
  used = set(jax.tree_util.tree_leaves(labels))
  groups = {k: v for k, v in groups.items() if k in used}
  frozen_mask = jax.tree_util.tree_map(lambda label: label == FROZEN, labels)
  chain = [optax.masked(optax.set_to_zero(), frozen_mask)]
  if cfg.clip_grad_norm > 0:
    chain.append(optax.clip_by_global_norm(cfg.clip_grad_norm))
  chain.append(optax.multi_transform(groups, labels))
  return optax.chain(*chain), schedule


def group_summary(params: Any, cfg: ConfigDict) -> dict[str, int]:
  """Number of parameters per group (for the start-of-run report)."""
  counts: dict[str, int] = {}
  labels = jax.tree_util.tree_leaves(param_labels(params, cfg))
  for label, leaf in zip(labels, jax.tree_util.tree_leaves(params), strict=True):
    counts[label] = counts.get(label, 0) + int(leaf.size)
  return counts
