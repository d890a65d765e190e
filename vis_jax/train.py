"""One linear trainer (big_vision order).

mesh → data → ``eval_shape(init)`` → shardings → ``jit(init, out_shardings)`` →
``jit(step, in/out_shardings, donate)`` → restore → loop (log, checkpoint).

The step is model-agnostic: a model bundle (``vis_jax/models/base.py``) supplies ``init`` and
``loss``. Per-step randomness is ``fold_in(rng, step)``, so a resumed run draws exactly what an
uninterrupted one would. A step whose loss or gradients are not finite leaves params and
optimizer state untouched and is counted (``nonfinite_steps``); the run stops once the count
exceeds ``config.max_nonfinite_steps``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from configs import common
from input_pipeline import datasets, pipeline
from vis_jax import checkpointing, metric_writers, optim, parallel
from vis_jax.evaluation import runner
from vis_jax.models import registry
from vis_jax.models.base import ModelBundle


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes (and a checkpoint stores).

  Attributes:
    step: int32 scalar, steps taken.
    params: trainable parameters (fp32).
    model_state: non-trainable collections (frozen BN statistics), may be ``{}``.
    opt_state: optax state (no entries for frozen parameters).
    rng: uint32 key data of the run's base key (``fold_in`` with the step per step).
    nonfinite_steps: int32 scalar, steps skipped for a non-finite loss or gradient.
  """

  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  rng: jax.Array
  nonfinite_steps: jax.Array


class NonFiniteLossError(RuntimeError):
  pass


# fold_in data of the initialisation stream; steps fold in 0, 1, 2, ... and never reach it.
_INIT_STREAM = 0xFFFFFFFF


def _dummy_batch(info: pipeline.PipelineInfo, keys: tuple[str, ...]) -> dict[str, jax.Array]:
  spec = info.batch_spec(info.buckets[0], global_batch=False)
  return {k: jnp.zeros((1, *spec[k][0][1:]), spec[k][1]) for k in keys}


def make_init_fn(bundle: ModelBundle, tx: optax.GradientTransformation,
                 dummy: dict[str, jax.Array]):
  def init(rng_data: jax.Array) -> TrainState:
    rng = jax.random.wrap_key_data(rng_data)
    params, model_state = bundle.init(jax.random.fold_in(rng, _INIT_STREAM), dummy)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=tx.init(params), rng=rng_data,
                      nonfinite_steps=jnp.zeros((), jnp.int32))
  return init


def make_train_step(bundle: ModelBundle, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, accum_steps: int = 1):
  """``step(state, batch) -> (state, metrics)``; ``batch`` holds ``bundle.batch_keys``."""

  def loss_and_grads(params, model_state, batch, rng):
    grad_fn = jax.value_and_grad(bundle.loss, has_aux=True)
    if accum_steps == 1:
      return grad_fn(params, model_state, batch, rng)

    def split(x):
      if x.shape[0] % accum_steps:
        raise ValueError(f"config.grad_accum_steps={accum_steps} does not divide the batch "
                         f"size {x.shape[0]}")
      return x.reshape(accum_steps, x.shape[0] // accum_steps, *x.shape[1:])

    micro = jax.tree_util.tree_map(split, batch)
    first = jax.tree_util.tree_map(lambda x: x[0], micro)
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                   jax.eval_shape(grad_fn, params, model_state, first, rng))

    def body(carry, inputs):
      index, micro_batch = inputs
      out = grad_fn(params, model_state, micro_batch, jax.random.fold_in(rng, index))
      return jax.tree_util.tree_map(jnp.add, carry, out), None

    summed, _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), micro))
    return jax.tree_util.tree_map(lambda x: x / accum_steps, summed)

  def step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    (loss, metrics), grads = loss_and_grads(state.params, state.model_state, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree_util.tree_map(  # noqa: E731
        lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state.replace(
        step=state.step + 1, params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32))
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm,
                   param_norm=optax.tree.norm(new_state.params),
                   update_norm=optax.tree.norm(updates),
                   learning_rate=schedule(state.step), finite=finite,
                   nonfinite_steps=new_state.nonfinite_steps)
    return new_state, metrics

  return step


def _initialise_from(state: TrainState, sharding: Any, config: common.ConfigDict) -> TrainState:
  """Overwrites freshly initialised params/model state with ``config.init_from`` where paths
  and shapes match, and reports what was (not) loaded."""
  loaded_params, loaded_state = checkpointing.load_inference_params(config.init_from)
  if config.init_from_prefix:
    # e.g. "detector": a Mask2Former image model's tensors become VITA's frame detector.
    loaded_params = checkpointing.nest_under(loaded_params, config.init_from_prefix)
    loaded_state = {col: checkpointing.nest_under(tree, config.init_from_prefix)
                    for col, tree in dict(loaded_state or {}).items()}
  host = jax.device_get((state.params, state.model_state))
  params, report = checkpointing.merge_params(host[0], loaded_params)
  model_state, state_report = checkpointing.merge_params(host[1], loaded_state)
  message = (f"init_from {config.init_from}: params: {report.summary()}; model state: "
             f"{state_report.summary()}")
  logging.info(message)
  if jax.process_index() == 0:
    print(message, file=sys.stderr, flush=True)
  problems = report.missing or report.unexpected or report.mismatched or state_report.mismatched
  if config.init_from_strict and problems:
    raise ValueError(f"config.init_from_strict: {message}")
  if not report.loaded:
    raise ValueError(f"config.init_from: nothing in {config.init_from} matches the model "
                     f"({message})")
  return state.replace(params=jax.device_put(params, sharding.params),
                       model_state=jax.device_put(model_state, sharding.model_state))


def _memory_report(compiled: Any) -> dict[str, float]:
  try:
    analysis = compiled.memory_analysis()
  except Exception:  # not every backend implements it
    return {}
  if analysis is None:
    return {}
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
            "generated_code_size_in_bytes")
  return {f.replace("_in_bytes", "_mb"): round(getattr(analysis, f, 0) / 2**20, 2)
          for f in fields}


def _evaluate(bundle: ModelBundle, state: TrainState, data: runner.EvalData,
              config: common.ConfigDict, workdir: str, step: int,
              writer: metric_writers.MetricWriter) -> dict[str, float]:
  """Scores ``state`` on ``data``; writes ``eval/step_N/`` and a ``metrics.jsonl`` line."""
  from jax.experimental import multihost_utils

  # Every process predicts its own videos with a full host copy of the (possibly sharded)
  # parameters.
  params, model_state = multihost_utils.process_allgather((state.params, state.model_state),
                                                          tiled=True)
  metrics = runner.run(lambda video: bundle.predict_video(params, model_state, video), data,
                       config, os.path.join(workdir, "eval", f"step_{step}"))
  if metrics:
    writer.write(step, metrics)
    print(f"eval at step {step} ({data.name}): " + ", ".join(
        f"{k} {v:.2f}" for k, v in metrics.items() if k in runner.REPORTED), file=sys.stderr,
          flush=True)
  return metrics


def train(config: common.ConfigDict, workdir: str, mode: str = "train") -> dict[str, Any]:
  """Runs ``mode`` (train | train_and_eval | eval) for ``config.model_name`` in ``workdir``.

  Training resumes from the latest checkpoint in ``workdir``; ``eval`` scores it (or, with
  no checkpoint, ``config.init_from``).
  """
  if mode not in ("train", "train_and_eval", "eval"):
    raise ValueError(f"unknown mode {mode!r}")
  parallel.maybe_initialize_distributed(config.distributed)
  is_main = jax.process_index() == 0
  mesh = parallel.create_mesh(config.sharding.mesh)
  rules = tuple(tuple(r) for r in config.sharding.logical_axis_rules)
  logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), jax.device_count(),
               jax.process_count())

  # ---- data --------------------------------------------------------------------------------
  sources = {name: datasets.build_source(name, src, config)
             for name, src in common.active_sources(config).items()}
  bundle = registry.get_bundle(config)
  eval_data = None
  if mode != "train":
    if type(bundle).predict_video is ModelBundle.predict_video:
      raise common.ConfigError(
          f"invalid config value config.model_name: {config.model_name!r} has no video "
          f"inference, so --mode={mode} cannot evaluate it; use --mode=train")
    eval_data = (runner.split_local_validation(config, sources)
                 or runner.eval_data_from_config(config))
  if is_main:
    for name, loaded in sources.items():
      for line in datasets.report_lines(loaded):
        logging.info("data[%s] %s", name, line)
  train_iter, info = pipeline.make_train_iterator(config, sources)

  # ---- abstract state and shardings ---------------------------------------------------------
  dummy = _dummy_batch(info, bundle.batch_keys)
  base_rng = jax.random.key_data(jax.random.key(config.seed))
  abstract_params = jax.eval_shape(lambda: bundle.init(jax.random.key(0), dummy)[0])
  optim_cfg = optim.with_frozen_patterns(config.optim, bundle.frozen_patterns())
  tx, schedule = optim.make_optimizer(optim_cfg, abstract_params, config.num_train_steps)
  init_fn = make_init_fn(bundle, tx, dummy)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    abstract_state = jax.eval_shape(init_fn, base_rng)
  state_specs = parallel.param_partition_specs(abstract_state, mesh, config.sharding.param_rules)
  state_sharding = parallel.shardings_for(state_specs, mesh)
  batch_sharding = parallel.batch_sharding(mesh, config.sharding.batch_axes)
  replicated = jax.sharding.NamedSharding(mesh, jax.P())
  if is_main:
    counts = optim.group_summary(abstract_params, optim_cfg)
    logging.info("parameters per optimizer group: %s (total %d)", counts, sum(counts.values()))

  # ---- restore or initialise ---------------------------------------------------------------
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    interval=config.checkpoint_every_steps,
                                    keep=config.keep_checkpoints)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    if ckpt.latest_step is not None:
      state, _ = ckpt.restore(
          checkpointing.abstract_with_shardings(abstract_state, state_sharding), train_iter)
      logging.info("resumed from step %d", int(state.step))
    else:
      state = jax.jit(init_fn, out_shardings=state_sharding)(base_rng)
      if config.init_from:
        state = _initialise_from(state, state_sharding, config)
  start_step = int(state.step)
  if mode == "eval":
    if ckpt.latest_step is None and not config.init_from:
      raise ValueError(f"--mode=eval: no checkpoint in {ckpt.directory} and no "
                       "config.init_from to evaluate")
    writer = metric_writers.MetricWriter(workdir, enabled=is_main)
    try:
      metrics = _evaluate(bundle, state, eval_data, config, workdir, start_step, writer)
    finally:
      writer.close()
      ckpt.close()
    return {"step": start_step, "eval": metrics}

  step_fn = jax.jit(make_train_step(bundle, tx, schedule, config.grad_accum_steps),
                    in_shardings=(state_sharding, batch_sharding),
                    out_shardings=(state_sharding, replicated), donate_argnums=(0,))

  # ---- loop --------------------------------------------------------------------------------
  writer = metric_writers.MetricWriter(workdir, enabled=is_main)
  progress = metric_writers.Progress(config.num_train_steps, start_step, enabled=is_main)
  compiled: dict[tuple[int, ...], Any] = {}
  last_metrics: dict[str, Any] = {}
  step, t_log, steps_since_log = start_step, time.perf_counter(), 0
  run_start = time.perf_counter()
  last_eval: dict[str, float] = {}
  try:
    while step < config.num_train_steps:
      local = next(train_iter)
      with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        batch = parallel.global_batch({k: local[k] for k in bundle.batch_keys}, mesh,
                                      config.sharding.batch_axes)
        shape_key = batch["images"].shape
        if shape_key not in compiled:
          t0 = time.perf_counter()
          compiled[shape_key] = step_fn.lower(state, batch).compile()
          report = {"compile_seconds": round(time.perf_counter() - t0, 2),
                    **_memory_report(compiled[shape_key])}
          logging.info("compiled train step for images %s: %s", shape_key, report)
          if is_main:
            print(f"compiled train step for images {tuple(shape_key)}: {report}",
                  file=sys.stderr, flush=True)
          t_log = time.perf_counter()  # compile time is not training throughput
        state, metrics = compiled[shape_key](state, batch)
      step += 1
      steps_since_log += 1
      if step % config.log_every_steps == 0 or step == config.num_train_steps:
        metrics = jax.device_get(metrics)
        now = time.perf_counter()
        steps_per_sec = steps_since_log / max(now - t_log, 1e-9)
        t_log, steps_since_log = now, 0
        last_metrics = {k: float(v) for k, v in metrics.items()}
        last_metrics["steps_per_sec"] = steps_per_sec
        last_metrics.update({f"data/{k}": v for k, v in
                             pipeline.bad_sample_counts(info).items() if not isinstance(v, dict)})
        writer.write(step, last_metrics)
        progress.update(step, last_metrics["loss"], steps_per_sec)
        if last_metrics["nonfinite_steps"] > config.max_nonfinite_steps:
          raise NonFiniteLossError(
              f"{int(last_metrics['nonfinite_steps'])} steps had a non-finite loss or gradient "
              f"(config.max_nonfinite_steps={config.max_nonfinite_steps}); stopping at step "
              f"{step}. The last checkpoint is in {ckpt.directory}.")
      ckpt.save(step, state, train_iter)
      if (mode == "train_and_eval" and config.eval_every_steps > 0
          and step % config.eval_every_steps == 0 and step < config.num_train_steps):
        last_eval = _evaluate(bundle, state, eval_data, config, workdir, step, writer)
    if mode == "train_and_eval":
      last_eval = _evaluate(bundle, state, eval_data, config, workdir, step, writer)
    ckpt.wait()
    if ckpt.latest_step != step:
      ckpt.save(step, state, train_iter, force=True)
  finally:
    ckpt.close()
    writer.close()
    progress.close()
  leaves = jax.tree_util.tree_leaves(state_specs, is_leaf=lambda x: isinstance(x, jax.P))
  sharded = sum(any(axis is not None for axis in spec) for spec in leaves)
  return {"start_step": start_step, "final_step": step,
          "state_leaves": {"sharded": sharded, "replicated": len(leaves) - sharded},
          "seconds": round(time.perf_counter() - run_start, 2), "final_metrics": last_metrics,
          "eval": last_eval,
          "mesh": dict(mesh.shape), "devices": jax.device_count(),
          "param_count": int(sum(np.prod(x.shape) for x in
                                 jax.tree_util.tree_leaves(abstract_params)))}
