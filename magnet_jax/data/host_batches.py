"""Host batching: each process's slice of the global batch, its per-step reader (with the
iterator positions checkpoints keep), and the assembly of the processes' slices into global
`jax.Array`s sharded over the mesh's batch axes. Used by the training loop (train/trainer.py),
the config-independent evaluation (eval/token_metrics.py) and ahead-of-time compilation (aot.py).
"""
from __future__ import annotations

import logging
from typing import Any, Dict

import jax
import numpy as np

from magnet_jax.config import Config
from magnet_jax.data.interface import TokenSource
from magnet_jax.parallel.distributed import gather_to_process_zero
from magnet_jax.parallel.mesh import batch_axis_size, data_sharding

log = logging.getLogger(__name__)


def process_slice(batch: Dict[str, np.ndarray], process_index: int, process_count: int):
    """This process's contiguous slice of a global host batch."""
    n = batch["codes"].shape[0] // process_count
    return {k: v[process_index * n:(process_index + 1) * n] for k, v in batch.items()}


class BatchReader:
    """This host's batch for each step: random access by step (synthetic data), or a prefetching
    iterator (datasets) whose position before each step is kept so checkpoints can resume it."""

    def __init__(self, data: TokenSource, global_batch: int, pidx: int, pcount: int, start: int, state=None):
        self.data, self.args = data, (global_batch, pidx, pcount)
        self.it = None
        # A checkpoint without iterator state (start > 0): random access by step is equivalent.
        if state is not None or not start:
            self.it = data.iterator(*self.args, state=state)  # None: the source has no iterator
            if self.it is not None and state is not None:
                log.info("data: this host's iterator continues from its checkpointed position (step %d)", start)
        self.states: Dict[int, Any] = {}

    def read(self, step: int):
        if self.it is None:
            return self.data.batch(step, *self.args)
        batch = next(self.it)
        # the position that reads batch `step + 1` next (kept for `step` too: the loop reads ahead)
        self.states = {k: v for k, v in self.states.items() if k >= step}
        self.states[step + 1] = self.it.get_state()
        return batch

    def state_at(self, step: int) -> Dict[str, Any]:
        """The checkpoint entry of the iterator positions before `step`: one per process, in
        process order (gathered on process 0, which writes the metadata); {} without them."""
        states = gather_to_process_zero(self.states.get(step), "data_iterator")
        if states is None or any(s is None for s in states):
            return {}
        return {"data_iterator": states}

    def close(self) -> None:
        """Stops the iterator's reader threads / worker processes."""
        close = getattr(self.it, "close", None)
        if close is not None:
            close()


def host_iterator_state(extra: Dict[str, Any], process_index: int, process_count: int):
    """This process's iterator position from a checkpoint's metadata, or None (then batches are
    read by random access from the resumed step: the same batches, without read-ahead)."""
    saved = extra.get("data_iterator")
    if saved is None:
        return None
    if isinstance(saved, dict):  # written before positions were kept per process
        saved = [saved]
    if len(saved) != process_count:
        log.warning("the checkpoint holds the data positions of %d processes, this run has %d: each host's "
                    "slice of the data differs, so batches are read by step from the resumed step on",
                    len(saved), process_count)
        return None
    return saved[process_index]


def check_batch_sizes(cfg: Config, mesh, rules) -> int:
    shards = batch_axis_size(mesh, rules)
    g, per = cfg.train.global_batch_size, cfg.train.per_device_batch_size
    if g % shards:
        raise ValueError(f"train.global_batch_size={g} is not divisible by the {shards} batch shards of the mesh")
    if g % jax.process_count():
        raise ValueError(f"train.global_batch_size={g} is not divisible by {jax.process_count()} processes")
    accum = cfg.train.grad_accum_steps
    if (g // shards) % accum:
        raise ValueError(f"train.grad_accum_steps={accum} does not divide the per-device batch {g // shards} "
                         f"(train.global_batch_size={g} over {shards} batch shards): every micro-batch needs a "
                         "share of each device's rows")
    if per and per * shards != g:
        raise ValueError(
            f"train.per_device_batch_size={per} x {shards} batch shards = {per * shards} "
            f"!= train.global_batch_size={g}; fix one of them (or set per_device_batch_size=0)"
        )
    return g // shards


def to_global(batch: Dict[str, np.ndarray], mesh, rules, global_batch: int):
    """Per-process numpy slices -> global jax.Arrays sharded over the batch axes."""
    out = {}
    for name, local in batch.items():
        sharding = data_sharding(mesh, rules, local.ndim)
        out[name] = jax.make_array_from_process_local_data(sharding, local, (global_batch,) + local.shape[1:])
    return out
