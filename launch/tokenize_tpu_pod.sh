#!/usr/bin/env bash
# Tokenise a dataset on every worker of a Cloud TPU pod slice: each host encodes its own slice,
# process 0 assembles the dataset when all slices are written. Rerun to resume. --out must be a
# folder every host sees (a shared file system).
#   launch/tokenize_tpu_pod.sh TPU_NAME ZONE --source /mnt/audio/songs.jsonl --out /mnt/data --name songs [...]
set -euo pipefail
TPU_NAME=$1; ZONE=$2; shift 2
REPO_DIR=${REPO_DIR:-'~/magnet_jax'}  # on the TPU hosts
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  cd $REPO_DIR && . .venv/bin/activate &&
  magnet-jax tokenize --no-progress --wait 3600$ARGS"
