#!/usr/bin/env bash
# Single machine, all local devices (CPU, one or more GPUs, or one TPU VM host).
#   launch/local.sh configs/vita_synthetic.py runs/vita [--config.a.b=v ...]
# Simulate N devices on a CPU: DEVICES=8 launch/local.sh ...
# Simulate N hosts on one machine (jax.distributed over loopback): PROCESSES=2 launch/local.sh ...
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?config file}; workdir=${2:?workdir}; shift 2
py=${PYTHON:-.venv/bin/python}
if [[ -n "${DEVICES:-}" ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES}"
fi
processes=${PROCESSES:-1}
if [[ "$processes" == 1 ]]; then
  exec "$py" -m vis_jax.main --config "$config" --workdir "$workdir" "$@"
fi
port=${PORT:-$((20000 + RANDOM % 20000))}
pids=()
for ((i = 0; i < processes; i++)); do
  JAX_COORDINATOR_ADDRESS="127.0.0.1:${port}" JAX_NUM_PROCESSES="$processes" JAX_PROCESS_ID="$i" \
    "$py" -m vis_jax.main --config "$config" --workdir "$workdir" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
