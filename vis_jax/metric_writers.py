"""Where training metrics go: ``metrics.jsonl`` (the contract), TensorBoard, the console.

Only process 0 writes; other processes get a writer that drops everything, so callers never
branch on the process index.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import numpy as np


def _plain(value: Any) -> Any:
  """JSON-safe scalars: numpy/jax scalars → python, non-finite floats → strings."""
  if hasattr(value, "item") and np.ndim(value) == 0:
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


class MetricWriter:
  """Appends one JSON object per call to ``workdir/metrics.jsonl`` and mirrors scalars to
  TensorBoard (``workdir/tensorboard``)."""

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)  # noqa: SIM115
    if tensorboard:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for key, value in record.items():
        if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
          self._tb.add_scalar(key, value, int(step))

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


class Progress:
  """Console progress: a tqdm bar with ETA and steps/s on process 0 (plain lines when not a
  terminal, so CI logs stay readable)."""

  def __init__(self, total: int, initial: int, enabled: bool = True):
    self.enabled = enabled
    self._bar = None
    self._last_print = 0.0
    self.total = total
    if enabled and sys.stderr.isatty():
      from tqdm import tqdm

      self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

  def update(self, step: int, loss: float | None = None, steps_per_sec: float | None = None
             ) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.n = step
      if loss is not None:
        self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
      self._bar.refresh()
    elif loss is not None:
      eta = ""
      if steps_per_sec:
        eta = f", eta {time.strftime('%H:%M:%S', time.gmtime((self.total - step) / steps_per_sec))}"
      rate = f", {steps_per_sec:.2f} steps/s" if steps_per_sec else ""
      print(f"step {step}/{self.total}: loss {loss:.4f}{rate}{eta}", file=sys.stderr, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
