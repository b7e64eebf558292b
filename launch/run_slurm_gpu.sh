#!/usr/bin/env bash
# Train on a SLURM GPU cluster: one process per node, all local GPUs per process.
#   sbatch --nodes=4 --gpus-per-node=8 launch/run_slurm_gpu.sh configs/magnet_small_10s.py [--config.key=value ...]
# The coordinator is set explicitly (the first node of the job, port $MAGNET_JAX_PORT or 8476), with
# the process count and each task's id, so nothing depends on JAX's SLURM auto-detection.
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
[[ $# -ge 1 ]] || { echo "usage: sbatch [--nodes=N ...] $0 CONFIG [--config.key=value ...]" >&2; exit 2; }
: "${SLURM_JOB_NODELIST:?run this under sbatch/salloc (SLURM_JOB_NODELIST is not set)}"
CONFIG=$1; shift
# awk reads every name: `head` would close the pipe early, and under pipefail scontrol's SIGPIPE would end the job.
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | awk 'NR == 1')
export MAGNET_JAX_COORDINATOR="$head_node:${MAGNET_JAX_PORT:-8476}"
export MAGNET_JAX_NUM_PROCESSES="${SLURM_NTASKS:-${SLURM_NNODES:-1}}"
echo "run_slurm_gpu: coordinator $MAGNET_JAX_COORDINATOR, $MAGNET_JAX_NUM_PROCESSES processes" >&2
# Each task reads its own SLURM_PROCID; the arguments pass through untouched (spaces included).
srun bash -c 'MAGNET_JAX_PROCESS_ID=$SLURM_PROCID exec magnet-jax train --no-progress "$@"' magnet-jax \
    --config "$CONFIG" "$@"
