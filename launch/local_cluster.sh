#!/usr/bin/env bash
# A pod on one machine: N processes of one command, each with D CPU devices, joined through
# a coordinator on 127.0.0.1 (collectives over gloo). How users and tests try multi-host code.
#
#   launch/local_cluster.sh N D -- magnet-jax train --config configs/tiny.py --config.mesh.fsdp=-1
#
# Each output line is prefixed with its process ([p0], [p1], ...). Exits non-zero if any process
# fails (the others are then stopped); SIGTERM / SIGINT are passed on to every process
# (training then stops with a checkpoint: `magnet-jax train` treats SIGTERM as pre-emption).
set -uo pipefail

usage() { echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS -- COMMAND [ARGS...]" >&2; exit 2; }
[[ $# -ge 4 && "$3" == "--" ]] || usage
N=$1 D=$2
shift 3
[[ "$N" =~ ^[1-9][0-9]*$ && "$D" =~ ^[1-9][0-9]*$ ]] || usage

# A free port for the coordinator (or $MAGNET_JAX_PORT).
PORT=${MAGNET_JAX_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

pids=()
# TERM first, KILL $MAGNET_JAX_KILL_AFTER seconds later. A training process takes TERM as a
# pre-emption notice: it checkpoints and exits, so when the launcher itself is stopped (the
# job pre-empted) the processes get 60 s for that; after a failure, 20 s.
stop_all() {
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null; done
  if [[ -z "${killer:-}" ]]; then
    ( sleep "${MAGNET_JAX_KILL_AFTER:-$1}"; for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null; done ) &
    killer=$!
  fi
}
trap 'stop_all 60' TERM INT

for ((i = 0; i < N; i++)); do
  (
    export MAGNET_JAX_COORDINATOR="127.0.0.1:$PORT" MAGNET_JAX_NUM_PROCESSES="$N" MAGNET_JAX_PROCESS_ID="$i"
    export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$D"
    export JAX_PLATFORMS=cpu
    # Its own process group (same pid), so stopping it stops everything it started; the
    # prefixing seds stay outside it and pass on its last lines.
    exec setsid "$@"
  ) > >(sed -u "s/^/[p$i] /") 2> >(sed -u "s/^/[p$i] /" >&2) &
  pids+=($!)
done

status=0
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  done_pid=
  wait -n -p done_pid "${running[@]}"
  rc=$?
  [[ -z "${done_pid:-}" ]] && continue  # interrupted by a trapped signal (which may unset it): keep waiting
  running=("${running[@]/$done_pid/}")
  read -ra running <<< "${running[*]}"
  if ((rc != 0 && status == 0)); then
    status=$rc
    echo "local_cluster: a process exited with status $rc; stopping the others" >&2
    stop_all 20
  fi
done
[[ -n "${killer:-}" ]] && kill "$killer" 2>/dev/null
wait  # the output prefixers
exit $status
