"""Multi-process start-up: one call in every process before any other JAX work.

Where the job is described, in order: explicit arguments (the CLI's `--coordinator`,
`--num-processes`, `--process-id`), then the environment variables `MAGNET_JAX_COORDINATOR`,
`MAGNET_JAX_NUM_PROCESSES`, `MAGNET_JAX_PROCESS_ID`, then JAX's own detection on TPU VMs and
SLURM. Nothing described: a single process, no-op. On CPU the processes talk over gloo
(`launch/local_cluster.sh` simulates a pod that way on one machine).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Any, List, Optional

import jax

log = logging.getLogger(__name__)

_AUTODETECTED_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES",
                     "MEGASCALE_COORDINATOR_ADDRESS")
ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = (
    "MAGNET_JAX_COORDINATOR", "MAGNET_JAX_NUM_PROCESSES", "MAGNET_JAX_PROCESS_ID")
DEFAULT_TIMEOUT_S = 300  # joining the job; $MAGNET_JAX_INIT_TIMEOUT overrides


def _env_int(name: str) -> Optional[int]:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${name}={value!r} is not an integer") from None


def process_spec(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                 process_id: Optional[int] = None):
    """(coordinator, num_processes, process_id) from the arguments, else the environment;
    checked. All None when nothing is given explicitly."""
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    given = [x is not None for x in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError("a multi-process job needs all three of --coordinator HOST:PORT, --num-processes N and "
                         f"--process-id I (or ${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID}); got "
                         f"coordinator={coordinator}, num_processes={num_processes}, process_id={process_id}")
    if coordinator is None:
        return None, None, None
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--coordinator must be HOST:PORT (e.g. 10.0.0.1:8476), got {coordinator!r}")
    if num_processes < 1:
        raise ValueError(f"--num-processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id must be in [0, {num_processes}), got {process_id}")
    return coordinator, num_processes, process_id


def wait_for_coordinator(coordinator: str, timeout_s: float) -> None:
    """Returns once HOST:PORT accepts a TCP connection; ConnectionError naming it after timeout_s."""
    host, _, port = coordinator.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2.0):
                return
        except OSError as e:
            if time.monotonic() > deadline:
                raise ConnectionError(
                    f"the coordinator {coordinator} did not answer within {timeout_s:g}s ({e}): start process 0 "
                    f"(--process-id 0) on that host, check the address and that the port is open "
                    f"(${ENV_COORDINATOR}, or raise $MAGNET_JAX_INIT_TIMEOUT)") from None
            time.sleep(0.5)


def maybe_initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                     process_id: Optional[int] = None, timeout_s: Optional[int] = None) -> None:
    """`jax.distributed.initialize` for a described multi-process job; a no-op otherwise (or
    when already initialised, or with $MAGNET_JAX_NO_DISTRIBUTED set)."""
    if os.environ.get("MAGNET_JAX_NO_DISTRIBUTED") or jax.distributed.is_initialized():
        return
    coordinator, num_processes, process_id = process_spec(coordinator, num_processes, process_id)
    if coordinator is not None:
        if num_processes == 1:
            return
        timeout_s = timeout_s or _env_int("MAGNET_JAX_INIT_TIMEOUT") or DEFAULT_TIMEOUT_S
        # Cross-process collectives between CPU devices (JAX's default there is none; no effect
        # on accelerators).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        if process_id != 0:  # XLA aborts the process on an unreachable coordinator: check first
            wait_for_coordinator(coordinator, timeout_s)
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout_s)
    elif any(os.environ.get(k) for k in _AUTODETECTED_ENV):
        jax.distributed.initialize()
    else:
        return
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())


_barriers = 0


def barrier(name: str, timeout_s: float = 1800.0) -> None:
    """Waits until every process reaches `name` (the coordination service's barrier: no device
    collective). Used before a program's first collective, a precaution: processes that reach it
    far apart (one compiled slower) can time out in gloo's reduce-scatter, which waits only 30 s
    on CPU (reported upstream, jax-ml/jax#40831; not what deadlocked here)."""
    if jax.process_count() == 1:
        return
    global _barriers
    _barriers += 1  # every process passes the same barriers in the same order: ids agree, never reused
    name = f"{name} #{_barriers}"
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:  # pragma: no cover - multi-process without jax.distributed (not a case we create)
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
        return
    client.wait_at_barrier(name, int(timeout_s * 1000))



_exchanges = 0


def _exchange_prefix(name: str) -> str:
    """A key prefix for one exchange; every process calls the exchanges in the same order, so the
    prefixes agree and are never reused."""
    global _exchanges
    _exchanges += 1
    return f"magnet_jax/{name}/{_exchanges}"


def _client():
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:  # pragma: no cover - multi-process without jax.distributed (not a case we create)
        raise RuntimeError("exchanging values between processes needs jax.distributed to be initialised")
    return client


def gather_to_process_zero(value: Any, name: str, timeout_s: float = 600.0) -> Optional[List[Any]]:
    """Every process's JSON-serialisable `value`, in process order, on process 0 (None on the
    others). Through the coordination service's key-value store, not a device collective, so it
    cannot interleave with a running program's collectives. Every process must call it, in the
    same order."""
    if jax.process_count() == 1:
        return [value]
    prefix, client = _exchange_prefix(name), _client()
    client.key_value_set(f"{prefix}/{jax.process_index()}", json.dumps(value))
    if jax.process_index() != 0:
        return None
    values = []
    for i in range(jax.process_count()):
        values.append(json.loads(client.blocking_key_value_get(f"{prefix}/{i}", int(timeout_s * 1000))))
        client.key_value_delete(f"{prefix}/{i}")
    return values


def all_processes(ok: bool, name: str, timeout_s: float = 600.0) -> bool:
    """Whether `ok` holds on every process (the key-value store as above; every process calls it)."""
    if jax.process_count() == 1:
        return bool(ok)
    prefix, client = _exchange_prefix(name), _client()
    client.key_value_set(f"{prefix}/{jax.process_index()}", "1" if ok else "0")
    return all(client.blocking_key_value_get(f"{prefix}/{i}", int(timeout_s * 1000)) == "1"
               for i in range(jax.process_count()))
