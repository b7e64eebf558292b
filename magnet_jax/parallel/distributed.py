"""Multi-host start-up: one call on every host before any other JAX work."""
from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)

_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES",
                  "MEGASCALE_COORDINATOR_ADDRESS")


def maybe_initialize() -> None:
    """`jax.distributed.initialize()` when the environment describes a multi-process job
    (TPU pod, SLURM, or an explicit coordinator); a no-op on a single host."""
    if os.environ.get("MAGNET_JAX_NO_DISTRIBUTED"):
        return
    if any(os.environ.get(k) for k in _MULTIHOST_ENV):
        jax.distributed.initialize()
        log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())
