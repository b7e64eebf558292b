"""The training progress bar: finished steps at a steady rate, log lines above it.

Steps are dispatched asynchronously, so counting them at dispatch makes the bar race ahead
and then stall at every host sync (logging, eval), and its ETA jumps. Here a step counts
when its metrics are ready (polled, never waited for), evals are paused out of the bar's
timing, and log records print above the bar instead of into it.
"""
from __future__ import annotations

import collections
import contextlib
from typing import Any


class StepProgress:
    def __init__(self, total: int, initial: int, desc: str, enabled: bool = True):
        self.bar = None
        self.pending: collections.deque = collections.deque()
        self._redirect = contextlib.ExitStack()
        if not enabled:
            return
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, smoothing=0.05)
        self._redirect.enter_context(logging_redirect_tqdm())

    def dispatched(self, marker: Any) -> None:
        """A step was dispatched; `marker` is one of its outputs (a jax.Array)."""
        if self.bar is None:
            return
        self.pending.append(marker)
        done = 0
        while self.pending and self.pending[0].is_ready():
            self.pending.popleft()
            done += 1
        if done:
            self.bar.update(done)

    def finish_pending(self) -> None:
        """Waits for the dispatched steps and counts them."""
        if self.bar is None or not self.pending:
            return
        self.pending[-1].block_until_ready()
        self.bar.update(len(self.pending))
        self.pending.clear()

    @contextlib.contextmanager
    def paused(self):
        """Work inside (evals) is left out of the bar's rate and ETA."""
        self.finish_pending()
        try:
            yield
        finally:
            if self.bar is not None:
                self.bar.unpause()

    def show(self, **values: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def close(self) -> None:
        """Closes the bar (steps still pending are not waited for: the run may be failing)."""
        if self.bar is not None:
            self.bar.close()
        self._redirect.close()
