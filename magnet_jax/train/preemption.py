"""Pre-emption: SIGTERM (how TPU VMs, SLURM and Kubernetes announce an eviction) ends training
with a checkpoint at a step every process agrees on, instead of losing the work since the last one.

In a multi-process job JAX's preemption service (started by `jax.distributed.initialize`) takes
the signal and tells every process the same safe step; a single process watches the signal itself.
"""
from __future__ import annotations

import signal
from typing import Optional


class PreemptionWatch:
    def __init__(self):
        import jax
        from jax._src import distributed

        self._service = jax.process_count() > 1 and distributed.global_state.preemption_sync_manager is not None
        self._noticed = False
        self._previous: Optional[object] = None
        if not self._service:
            try:
                self._previous = signal.signal(signal.SIGTERM, self._notice)
            except ValueError:  # not the main thread: no handler, no pre-emption checkpoints
                self._previous = None

    def _notice(self, signum, frame) -> None:
        self._noticed = True

    def stop_at(self, step: int) -> bool:
        """Whether to checkpoint and stop after `step` (every process gets the same answer)."""
        if self._service:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self._noticed

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
