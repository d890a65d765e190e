"""Entry point: ``python -m vis_jax.main --config configs/NAME.py[:variant] --workdir DIR``.

Thin on purpose: parse flags, validate the config, hand over to the job for ``--mode``.
Any config key can be overridden with ``--config.a.b=value``; an unknown key is an error that
names it (the config is locked).

Modes:
  train  train ``config.model_name`` (resuming from ``DIR/checkpoints`` if present); writes
         ``DIR/metrics.jsonl``, TensorBoard events and orbax checkpoints.
  train_and_eval  train, and evaluate every ``config.eval_every_steps`` steps and at the end
         (``DIR/eval/step_N/``: results.json, results.zip, metrics.json; AP lines in
         metrics.jsonl). Needs a model with video inference.
  eval   evaluate the latest checkpoint (or ``config.init_from``).
  data   run the input pipeline end to end (generating the synthetic dataset on first use),
         write ``DIR/data_report.json`` and a contact sheet ``DIR/data_batch.png``.
"""

from __future__ import annotations

import json
import logging as std_logging
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from configs import common

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/vita_synthetic.py or configs/x.py:smoke.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for reports, logs and checkpoints.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "train_and_eval", "eval", "data"],
                          "What to run.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 20, "mode=data: batches to pull.")

flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter from orbax/grain (every save logs a dozen lines); warnings pass."""

  def filter(self, record) -> bool:
    noisy = "/orbax/" in record.pathname or "/grain/" in record.pathname
    return not noisy or record.levelno >= 30


def main(argv: list[str]) -> None:
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = common.validate(_CONFIG.value)
  workdir = os.path.abspath(_WORKDIR.value)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  if _MODE.value in ("train", "train_and_eval", "eval"):
    from vis_jax import train

    summary = train.train(config, workdir, _MODE.value)
    if jax.process_index() == 0:
      print(json.dumps(summary, indent=2))
  elif _MODE.value == "data":
    from vis_jax import data_report

    report = data_report.run(config, workdir, num_batches=_NUM_BATCHES.value)
    print(json.dumps(report["summary"], indent=2))
  logging.flush()


def _parse_command_line(argv: list[str]) -> list[str]:
  """Parses flags so a misspelt ``--config.x`` or a bad value is one clear line, not a trace."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError, flags.Error) as e:
    message = " ".join(str(e).replace("\\n", " ").replace("\\'", "").split()).strip("'\"")
    if message.isidentifier():
      # ml_collections names only the last path component; point at the flag(s) using it.
      flagged = [a.split("=", 1)[0] for a in argv
                 if a.startswith("--config.") and message in a.split("=", 1)[0].split(".")]
      message = f"unknown config key {message!r}" + (f" in {', '.join(flagged)}" if flagged
                                                      else "")
    print(f"error: bad command line: {message}", file=sys.stderr)
    sys.exit(2)


def run() -> None:
  from input_pipeline.datasets import DataError

  try:
    app.run(main, flags_parser=_parse_command_line)
  except (common.ConfigError, DataError) as e:  # user errors: one clear line, no traceback
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  run()
