#!/usr/bin/env bash
# Train on every worker of a Cloud TPU pod slice. All hyper-parameters live in configs/.
#   launch/run_tpu_pod.sh TPU_NAME ZONE configs/magnet_small_10s.py [--config.key=value ...]
# jax.distributed.initialize() runs inside `magnet-jax train` (the TPU environment describes the pod).
set -euo pipefail
TPU_NAME=$1; ZONE=$2; CONFIG=$3; shift 3
REPO_DIR=${REPO_DIR:-'~/magnet_jax'}  # expanded on the TPU hosts, not here
ARGS=$(printf ' %q' --config "$CONFIG" "$@")  # each argument quoted: values with spaces survive ssh
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  cd $REPO_DIR && . .venv/bin/activate &&
  magnet-jax train --no-progress$ARGS"
