"""Device mesh, parameter/batch shardings and multi-host initialisation.

Everything is driven by ``config.sharding``:
  * ``mesh``: ``(("data", -1), ("fsdp", 1), ("model", 1))`` — one ``-1`` is filled with the
    remaining devices. Axes are ``AxisType.Auto`` so linen's logical constraints constrain
    instead of asserting (jax >= 0.9 defaults ``make_mesh`` to Explicit).
  * ``param_rules``: ordered ``(regex, strategy)`` pairs over parameter paths
    (``backbone/conv1/kernel``); the first match wins. ``replicate`` keeps a full copy per
    device (data parallel); ``fsdp`` shards the largest dimension divisible by the ``fsdp``
    axis size (falls back to replicated when none divides). FSDP is a rule change, not a
    code change: ``--config.sharding.param_rules='((".*", "fsdp"),)'`` and an fsdp axis > 1.
  * ``batch_axes``: mesh axes the leading batch dimension is split over.
  * ``logical_axis_rules``: linen logical-axis rules for activation constraints in modules.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from configs.common import ConfigDict


def mesh_shape(axes: Sequence[tuple[str, int]], num_devices: int) -> tuple[tuple[str, ...],
                                                                         tuple[int, ...]]:
  """Names and sizes with the single ``-1`` filled so the product is ``num_devices``."""
  names = tuple(name for name, _ in axes)
  sizes = [int(size) for _, size in axes]
  if sizes.count(-1) > 1:
    raise ValueError(f"config.sharding.mesh: at most one axis may be -1, got {tuple(axes)}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"config.sharding.mesh: {num_devices} devices are not divisible by the "
                       f"fixed axes {tuple(axes)} (product {known})")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"config.sharding.mesh: axes {tuple(axes)} need {math.prod(sizes)} "
                     f"devices, {num_devices} are available")
  return names, tuple(sizes)


def create_mesh(axes: Sequence[tuple[str, int]], devices: Sequence[Any] | None = None) -> Mesh:
  """A mesh over all (or the given) devices with Auto axis types."""
  devices = list(jax.devices() if devices is None else devices)
  names, sizes = mesh_shape(axes, len(devices))
  try:
    grid = mesh_utils.create_device_mesh(sizes, devices)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices).reshape(sizes)  # CPU / unknown topologies: plain order
  return Mesh(grid, names, axis_types=(AxisType.Auto,) * len(names))


def _fsdp_spec(shape: tuple[int, ...], axis_size: int, axis: str) -> P:
  candidates = [(d, i) for i, d in enumerate(shape) if d % axis_size == 0 and d >= axis_size]
  if axis_size == 1 or not candidates:
    return P()
  _, dim = max(candidates)
  spec: list[str | None] = [None] * len(shape)
  spec[dim] = axis
  return P(*spec)


def param_partition_specs(params: Any, mesh: Mesh, rules: Sequence[tuple[str, str]]) -> Any:
  """PartitionSpecs for a (possibly abstract) parameter or optimizer-state pytree."""
  from vis_jax.optim import param_path  # local: optim imports nothing from here

  fsdp_size = mesh.shape.get("fsdp", 1)

  def spec(path: tuple[Any, ...], leaf: Any) -> P:
    name = param_path(path)
    for pattern, strategy in rules:
      if re.search(pattern, name):
        if strategy == "replicate":
          return P()
        if strategy == "fsdp":
          return _fsdp_spec(tuple(getattr(leaf, "shape", ())), fsdp_size, "fsdp")
        raise ValueError(f"config.sharding.param_rules: unknown strategy {strategy!r} "
                         f"for pattern {pattern!r} (use 'replicate' or 'fsdp')")
    return P()

  return jax.tree_util.tree_map_with_path(spec, params)


def shardings_for(specs: Any, mesh: Mesh) -> Any:
  return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), specs,
                                is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, batch_axes: Sequence[str]) -> NamedSharding:
  """Leading (batch) dimension split over ``batch_axes``; the rest replicated."""
  return NamedSharding(mesh, P(tuple(batch_axes)))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh,
                 batch_axes: Sequence[str]) -> dict[str, jax.Array]:
  """Assembles this process's slice of the batch into global, sharded arrays."""
  sharding = batch_sharding(mesh, batch_axes)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def maybe_initialize_distributed(cfg: ConfigDict) -> bool:
  """Starts ``jax.distributed`` for multi-process runs. Returns True if it initialised.

  ``cfg.init``: ``auto`` initialises on TPU pods (detected by JAX itself), under SLURM with more
  than one task, or when ``JAX_COORDINATOR_ADDRESS`` is set (launch/ scripts export it together
  with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``); ``off`` never does; ``on`` always does.
  """
  mode = cfg.init
  if mode == "off":
    return False
  env = os.environ
  explicit = "JAX_COORDINATOR_ADDRESS" in env
  slurm = int(env.get("SLURM_NTASKS", "1")) > 1
  tpu_pod = "TPU_WORKER_HOSTNAMES" in env or "MEGASCALE_COORDINATOR_ADDRESS" in env
  if mode == "auto" and not (explicit or slurm or tpu_pod):
    return False
  # Only affects the CPU backend (CPU-only clusters and local multi-process tests).
  jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
  kwargs: dict[str, Any] = {}
  if explicit:
    kwargs = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                  num_processes=int(env["JAX_NUM_PROCESSES"]),
                  process_id=int(env["JAX_PROCESS_ID"]))
    if "JAX_LOCAL_DEVICE_IDS" in env:
      kwargs["local_device_ids"] = [int(i) for i in env["JAX_LOCAL_DEVICE_IDS"].split(",")]
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True
