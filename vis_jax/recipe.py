"""Staged training recipes: ``python -m vis_jax.recipe --recipe NAME --workdir DIR``.

The official VITA and Mask2Former-VIS recipes start from a Mask2Former detector trained on COCO
images. The synthetic recipes reproduce that schedule from scratch on the synthetic dataset:

1. ``detector``: the small frame detector as an image Mask2Former on single frames
   (``configs/synthetic_detector.py``) → ``DIR/detector``, exported to ``DIR/detector/export``
   and measured on the validation frames (``vis_jax.detector_report`` →
   ``DIR/detector/report.json``: frame AP, best-query mask IoU, resolution ceiling);
2. the video model, its detector started from that export (``--config.init_from``, under
   ``init_from_prefix``), trained and evaluated on the validation split
   (``--mode=train_and_eval``) → ``DIR/<stage>``.

Every stage is its own ``vis_jax.main`` process, so a killed recipe resumes where it stopped:
a stage whose final checkpoint exists is skipped, a partial one resumes from its checkpoint.
``DIR/recipe.json`` records each stage's wall time and the final evaluation (AP, AR, ...).
Extra ``--config.key=value`` flags go to the last (video) stage, except ``--config.data.*``
flags, which go to every stage (the stages must see the same data); ``--detector_steps`` and
``--steps`` shorten the stages, ``--variant smoke`` runs every stage's ``:smoke`` config.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import subprocess
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Stage:
  """One ``vis_jax.main`` run of a recipe.

  Attributes:
    name: sub-directory of the recipe's workdir.
    config: config file (relative to the repository).
    mode: ``vis_jax.main --mode``.
    init_from_stage: start from this earlier stage's export, or "".
    init_from_prefix: ``config.init_from_prefix`` for that load.
    overrides: fixed ``--config.*`` flags of the stage.
  """
  name: str
  config: str
  mode: str
  init_from_stage: str = ""
  init_from_prefix: str = ""
  overrides: tuple[str, ...] = ()


_DETECTOR = Stage("detector", "configs/synthetic_detector.py", "train")

RECIPES: dict[str, tuple[Stage, ...]] = {
    "vita_synthetic": (
        _DETECTOR,
        Stage("vita", "configs/vita_synthetic.py", "train_and_eval", init_from_stage="detector",
              init_from_prefix="detector")),
    "m2f_vis_synthetic": (
        _DETECTOR,
        Stage("m2f_vis", "configs/m2f_vis_synthetic.py", "train_and_eval",
              init_from_stage="detector")),
}


def _last_step(workdir: str) -> int | None:
  directory = os.path.join(workdir, "checkpoints")
  steps = [int(d) for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(
      directory) else []
  return max(steps) if steps else None


def _final_eval(workdir: str) -> dict[str, Any] | None:
  """The last evaluation line of ``metrics.jsonl`` (None if the stage never evaluated)."""
  path = os.path.join(workdir, "metrics.jsonl")
  last = None
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        record = json.loads(line)
        if "AP" in record:
          last = record
  return last


def _detector_report(stage_dir: str) -> dict[str, Any]:
  """``vis_jax.detector_report`` of a finished detector stage (``report.json``, kept), as the
  recipe records it: ``{"report": {...}, "report_seconds": s}`` (seconds only when run now)."""
  path = os.path.join(stage_dir, "report.json")
  out: dict[str, Any] = {}
  if not os.path.exists(path):
    start = time.perf_counter()
    _run([sys.executable, "-m", "vis_jax.detector_report", f"--workdir={stage_dir}",
          f"--output={path}"])
    out["report_seconds"] = round(time.perf_counter() - start, 1)
  with open(path) as f:
    report = json.load(f)
  out["report"] = {k: report[k] for k in ("frame_AP", "frame_AP50", "best_query_iou",
                                          "resolution_ceiling_iou") if k in report}
  return out


def _run(command: list[str]) -> None:
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p))
  print("+ " + " ".join(command), flush=True)
  done = subprocess.run(command, env=env, cwd=REPO)
  if done.returncode:
    raise SystemExit(f"recipe: stage command failed with status {done.returncode}: "
                     f"{' '.join(command)}")


def stage_command(stage: Stage, workdir: str, steps: int | None, extra: list[str],
                  variant: str = "") -> list[str]:
  """The ``vis_jax.main`` command line of ``stage`` under the recipe's ``workdir``."""
  config = os.path.join(REPO, stage.config) + (f":{variant}" if variant else "")
  command = [sys.executable, "-m", "vis_jax.main", f"--config={config}",
             f"--workdir={os.path.join(workdir, stage.name)}", f"--mode={stage.mode}",
             *stage.overrides]
  if stage.init_from_stage:
    command.append(f"--config.init_from={os.path.join(workdir, stage.init_from_stage, 'export')}")
    if stage.init_from_prefix:
      command.append(f"--config.init_from_prefix={stage.init_from_prefix}")
  if steps is not None:
    command.append(f"--config.num_train_steps={steps}")
  return command + extra


def stage_flags(extra: list[str], last: bool) -> list[str]:
  """The recipe's extra ``--config.*`` flags that a stage receives: all of them for the last
  stage, only the data flags (``--config.data.*``) for the earlier ones."""
  return list(extra) if last else [f for f in extra if f.startswith("--config.data.")]


def _stage_steps(stage: Stage, steps: int | None, variant: str) -> int:
  if steps is not None:
    return steps
  module = importlib.import_module(stage.config.removesuffix(".py").replace("/", "."))
  return int(module.get_config(variant or None).num_train_steps)


def run_recipe(name: str, workdir: str, detector_steps: int | None = None,
               steps: int | None = None, extra: list[str] | None = None,
               variant: str = "") -> dict[str, Any]:
  """Runs (or resumes) recipe ``name`` in ``workdir``; returns what ``recipe.json`` holds."""
  if name not in RECIPES:
    raise SystemExit(f"recipe: unknown recipe {name!r}; known: {sorted(RECIPES)}")
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  summary_path = os.path.join(workdir, "recipe.json")
  summary: dict[str, Any] = {"recipe": name, "stages": {}}
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      summary = json.load(f)
  # A workdir can hold several recipes' stages (they share the detector stage): the summary
  # names the recipe run last and totals only its stages.
  summary["recipe"] = name
  stages = RECIPES[name]
  for index, stage in enumerate(stages):
    last = index == len(stages) - 1
    stage_dir = os.path.join(workdir, stage.name)
    stage_steps = steps if last else detector_steps
    target = _stage_steps(stage, stage_steps, variant)
    record = summary["stages"].get(stage.name, {})
    if _last_step(stage_dir) == target and (not last or _final_eval(stage_dir)):
      print(f"recipe: stage {stage.name} already complete ({target} steps)", flush=True)
    else:
      start = time.perf_counter()
      _run(stage_command(stage, workdir, stage_steps, stage_flags(extra or [], last), variant))
      record["seconds"] = round(record.get("seconds", 0.0) + time.perf_counter() - start, 1)
    record["steps"] = target
    if not last:
      export = os.path.join(stage_dir, "export")
      _run([sys.executable, "-m", "vis_jax.export", f"--workdir={stage_dir}",
            f"--output={export}"])
      record.update(_detector_report(stage_dir))
    final = _final_eval(stage_dir)
    if final is not None:
      record["eval"] = final
    summary["stages"][stage.name] = record
    own = [summary["stages"][s.name] for s in stages if s.name in summary["stages"]]
    summary["total_seconds"] = round(sum(r.get("seconds", 0.0) + r.get("report_seconds", 0.0)
                                         for r in own), 1)
    with open(summary_path, "w") as f:
      json.dump(summary, f, indent=1)
  return summary


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--recipe", default="vita_synthetic", help=f"one of {sorted(RECIPES)}")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--variant", default="", help="config variant of every stage (smoke)")
  parser.add_argument("--detector_steps", type=int, default=None,
                      help="override the detector stage's num_train_steps")
  parser.add_argument("--steps", type=int, default=None,
                      help="override the video stage's num_train_steps")
  args, extra = parser.parse_known_args(argv)
  bad = [a for a in extra if not a.startswith("--config.")]
  if bad:
    parser.error(f"unknown arguments {bad} (only --config.key=value flags are passed on)")
  summary = run_recipe(args.recipe, args.workdir, args.detector_steps, args.steps, extra,
                       args.variant)
  final = summary["stages"][RECIPES[args.recipe][-1].name].get("eval", {})
  print(json.dumps({"recipe": args.recipe, "total_seconds": summary["total_seconds"],
                    **{k: final[k] for k in ("AP", "AP50", "AP75", "AR1", "AR10") if k in final}},
                   indent=1))


if __name__ == "__main__":
  main()
