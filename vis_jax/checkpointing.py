"""Orbax checkpoints of the train state, the data-iterator state and the RNG, with resume.

The whole orbax V0 ``CheckpointManager`` API lives behind this module, so moving to orbax V1
(``orbax.checkpoint.v1``) is a local change. A checkpoint step directory holds:
  ``state/``      the train state pytree (params, optimizer state, step, rng, counters);
  ``data_iter/``  the grain iterator state, one small json per JAX process;
  ``meta/``       json: config snapshot and what the step was trained on.
Saves are asynchronous; ``close()`` waits for them.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
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
