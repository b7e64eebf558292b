#!/usr/bin/env bash
# Train on a SLURM GPU cluster: one process per node, all local GPUs per process.
#   sbatch --nodes=4 --gpus-per-node=8 launch/run_slurm_gpu.sh configs/magnet_small_10s.py [--config.key=value ...]
# jax.distributed.initialize() inside `magnet-jax train` reads the SLURM environment.
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
CONFIG=$1; shift
srun magnet-jax train --no-progress --config "$CONFIG" "$@"
