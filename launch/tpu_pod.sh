#!/usr/bin/env bash
# All workers of a Cloud TPU VM pod slice. JAX finds the pod topology itself
# (jax.distributed.initialize() with no arguments), so every worker runs the same command.
#   launch/tpu_pod.sh TPU_NAME ZONE configs/vita_r50_ytvis19.py gs://bucket/runs/vita [--config...]
# The workdir must be shared by all workers (a GCS path or a shared filesystem); the repository
# is expected at ~/vis_jax on every worker (set REPO to change that).
set -euo pipefail
tpu=${1:?TPU name}; zone=${2:?zone}; config=${3:?config file}; workdir=${4:?workdir}; shift 4
repo=${REPO:-~/vis_jax}
extra=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd $repo && make .venv/.runtime-installed >/dev/null && \
   .venv/bin/pip install --quiet 'jax[tpu]==0.10.2' && \
   .venv/bin/python -m vis_jax.main --config $config --workdir $workdir --config.distributed.init=on$extra"
