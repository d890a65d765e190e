"""Orbax checkpoints of the train state, the data-iterator state and the RNG, with resume.

The whole orbax V0 ``CheckpointManager`` API lives behind this module, so moving to orbax V1
(``orbax.checkpoint.v1``) is a local change. A checkpoint step directory holds:
  ``state/``      the train state pytree (params, optimizer state, step, rng, counters);
  ``data_iter/``  the grain iterator state, one small json per JAX process;
  ``meta/``       json: config snapshot and what the step was trained on.
Saves are asynchronous; ``close()`` waits for them.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
  """Save every ``interval`` steps, keep the newest ``keep``, restore the latest."""

  def __init__(self, directory: str, interval: int, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(int(interval), 1),
        max_to_keep=keep if keep > 0 else None,
        enable_async_checkpointing=async_save,
        create=True,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  @property
  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iter: Any | None = None,
           meta: dict[str, Any] | None = None, force: bool = False) -> bool:
    """Saves if the interval says so (or ``force``). Returns whether a save started."""
    items: dict[str, Any] = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    if meta is not None:
      items["meta"] = ocp.args.JsonSave(meta)
    saved = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
    if saved:
      logging.info("checkpoint: saving step %d to %s", step, self.directory)
    return saved

  def restore(self, abstract_state: Any, data_iter: Any | None = None, step: int | None = None
              ) -> tuple[Any, dict[str, Any] | None]:
    """Restores ``step`` (default latest) into the shardings of ``abstract_state``.

    ``abstract_state`` is ``jax.eval_shape(init)`` with shardings attached (ShapeDtypeStruct
    leaves with ``.sharding``), so arrays land on the right devices; ``data_iter`` is
    restored in place.
    """
    step = self.latest_step if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    items: dict[str, Any] = {"state": ocp.args.StandardRestore(abstract_state)}
    present = set(self._manager.item_metadata(step).keys()) if hasattr(
        self._manager, "item_metadata") else {"data_iter", "meta"}
    if data_iter is not None and "data_iter" in present:
      items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    if "meta" in present:
      items["meta"] = ocp.args.JsonRestore()
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    logging.info("checkpoint: restored step %d from %s", step, self.directory)
    return restored["state"], restored.get("meta") if "meta" in items else None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  """Attaches shardings to an ``eval_shape`` pytree (the restore target)."""
  return jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


# ---- inference-only parameters (export, converters, --config.init_from) ----------------------


def save_inference_params(directory: str, params: Any, model_state: Any,
                          config_json: str | None = None) -> str:
  """Writes ``{"params", "model_state"}`` (no optimizer state) as an orbax pytree.

  This is the format ``vis_jax.convert`` writes and ``--config.init_from`` reads.
  """
  directory = os.path.abspath(directory)
  os.makedirs(os.path.dirname(directory) or ".", exist_ok=True)
  tree = {"params": params, "model_state": model_state if model_state else {}}
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(directory, "variables"), tree, force=True)
  if config_json is not None:
    with open(os.path.join(directory, "config.json"), "w") as f:
      f.write(config_json)
  return directory


def load_inference_params(directory: str) -> tuple[Any, Any]:
  """Reads what ``save_inference_params`` wrote, as host numpy arrays."""
  path = os.path.join(os.path.abspath(directory), "variables")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{directory} has no inference parameters (expected {path}); "
                            "write them with `python -m vis_jax.export` or `vis_jax.convert`")
  tree = restore_as_numpy(path)
  return tree.get("params", {}), tree.get("model_state", {}) or {}


def restore_as_numpy(path: str) -> Any:
  """Restores an orbax pytree directory onto the host (numpy), whatever devices wrote it."""
  with ocp.PyTreeCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(path)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                          tree)
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))


@dataclasses.dataclass
class MergeReport:
  """What a partial load took from the file and what it left at its initial value."""

  loaded: list[str] = dataclasses.field(default_factory=list)
  missing: list[str] = dataclasses.field(default_factory=list)      # in model, not in file
  unexpected: list[str] = dataclasses.field(default_factory=list)   # in file, not in model
  mismatched: list[str] = dataclasses.field(default_factory=list)   # same path, other shape

  def summary(self, limit: int = 10) -> str:
    lines = [f"loaded {len(self.loaded)} tensors"]
    for name in ("missing", "unexpected", "mismatched"):
      items = getattr(self, name)
      if items:
        more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
        lines.append(f"{name} {len(items)}: {', '.join(items[:limit])}{more}")
    return "; ".join(lines)


def nest_under(tree: Any, prefix: str) -> Any:
  """``tree`` placed at path ``prefix`` ("a/b" → ``{"a": {"b": tree}}``); "" → unchanged."""
  for key in reversed([k for k in prefix.split("/") if k]):
    tree = {key: tree}
  return tree


def merge_params(initial: Any, loaded: Any) -> tuple[Any, MergeReport]:
  """Takes every tensor of ``loaded`` whose path and shape match ``initial``; keeps the rest.

  Both are nested dicts; the result has the structure and dtypes of ``initial``.
  """
  from flax import traverse_util

  flat_init = traverse_util.flatten_dict(initial, sep="/") if initial else {}
  flat_loaded = traverse_util.flatten_dict(loaded, sep="/") if loaded else {}
  report = MergeReport()
  merged = {}
  for path, value in flat_init.items():
    if path not in flat_loaded:
      report.missing.append(path)
      merged[path] = value
    elif tuple(flat_loaded[path].shape) != tuple(value.shape):
      report.mismatched.append(f"{path} {tuple(flat_loaded[path].shape)} vs {tuple(value.shape)}")
      merged[path] = value
    else:
      report.loaded.append(path)
      merged[path] = np.asarray(flat_loaded[path]).astype(value.dtype)
  report.unexpected = sorted(set(flat_loaded) - set(flat_init))
  return (traverse_util.unflatten_dict(merged, sep="/") if merged else initial), report
