#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per node, all GPUs of the node local to it.
#   sbatch --nodes=4 --gpus-per-node=8 launch/slurm_gpu.sh configs/vita_r50_ytvis19.py runs/vita
# Each node runs one task; the first node hosts the jax.distributed coordinator. The workdir must
# be on a filesystem every node sees. Outside SLURM, set JAX_COORDINATOR_ADDRESS,
# JAX_NUM_PROCESSES and JAX_PROCESS_ID yourself and run vis_jax.main on every node.
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
config=${1:?config file}; workdir=${2:?workdir}; shift 2
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export JAX_COORDINATOR_ADDRESS="${head}:${PORT:-12355}"
export JAX_NUM_PROCESSES="$SLURM_NNODES"
# Leave a little GPU memory to cuDNN/NCCL workspaces.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
srun --kill-on-bad-exit=1 bash -c \
  'JAX_PROCESS_ID=$SLURM_PROCID exec .venv/bin/python -m vis_jax.main "$@"' _ \
  --config "$config" --workdir "$workdir" "$@"
