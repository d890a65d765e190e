"""``python -m vis_jax.export --workdir DIR --output OUT [--step N]``: inference-only params.

Reads a training checkpoint (latest, or ``--step``) and writes its parameters and model state
without the optimizer state — the file ``--config.init_from``, ``vis_jax.predict`` and other
runs load. The run's ``config.json`` is copied alongside.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import jax
import orbax.checkpoint as ocp
from absl import app, flags

from vis_jax import checkpointing

_WORKDIR = flags.DEFINE_string("workdir", None, "Training directory (holds checkpoints/).")
_OUTPUT = flags.DEFINE_string("output", None, "Directory to write the parameters to.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.mark_flags_as_required(["workdir", "output"])


def export(workdir: str, output: str, step: int | None = None) -> dict:
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{workdir} has no checkpoints/ directory")
  with ocp.CheckpointManager(directory) as manager:
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
      raise FileNotFoundError(f"no checkpoint {'' if step is None else step} in {directory}; "
                              f"available steps: {list(manager.all_steps())}")
  state = checkpointing.restore_as_numpy(os.path.join(directory, str(step), "state"))
  checkpointing.save_inference_params(output, state["params"], state.get("model_state", {}))
  config_path = os.path.join(workdir, "config.json")
  if os.path.exists(config_path):
    shutil.copy(config_path, os.path.join(output, "config.json"))
  sizes = [x.size for x in jax.tree_util.tree_leaves(state["params"])]
  return {"step": int(step), "output": os.path.abspath(output), "parameters": int(sum(sizes))}


def main(argv: list[str]) -> None:
  del argv
  try:
    print(json.dumps(export(_WORKDIR.value, _OUTPUT.value, _STEP.value)))
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
