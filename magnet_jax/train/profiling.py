"""Profiler traces of chosen training steps (`train.profile_steps`), for TensorBoard's profile tab.

    --config.train.profile_steps=10,13    # trace steps 10, 11 and 12 (0-based, as `step` in the loop)

Every process traces its own devices into `WORKDIR/profile/` (JAX names each host's file), and
each step is annotated (`StepTraceAnnotation`), so the trace viewer and the overview page see
steps. `tensorboard --logdir WORKDIR/profile` shows them (with tensorboard-plugin-profile).
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Tuple

import jax

from magnet_jax.config_checks import check_profile_steps

log = logging.getLogger(__name__)


class StepProfiler:
    """Starts the trace before step `start` (or the first step of a resumed run inside the
    window) and stops it after step `stop - 1`, once the device has finished that step."""

    def __init__(self, steps: Tuple[int, ...], workdir: str):
        self.start, self.stop = check_profile_steps(steps)
        self.logdir = os.path.join(workdir, "profile")
        self.tracing = False

    def step(self, step: int):
        """A context around dispatching step `step`."""
        if not self.tracing and self.start <= step < self.stop:
            jax.profiler.start_trace(self.logdir)
            self.tracing = True
            log.info("profiling steps %d to %d into %s", step, self.stop - 1, self.logdir)
        if self.tracing:
            return jax.profiler.StepTraceAnnotation("train", step_num=step)
        return contextlib.nullcontext()

    def after(self, step: int, outputs, last: bool = False) -> None:
        """After dispatching step `step`: stop at the window's end (or the run's last step)."""
        if self.tracing and (step + 1 >= self.stop or last):
            jax.block_until_ready(outputs)  # the traced steps' device work lies inside the trace
            self.close()

    def close(self) -> None:
        if self.tracing:
            self.tracing = False
            jax.profiler.stop_trace()
            log.info("profile written to %s (tensorboard --logdir %s)", self.logdir, self.logdir)
