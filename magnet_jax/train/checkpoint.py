"""Orbax checkpoints of the train state, with the config and data-iterator state beside it.

Saves are asynchronous, atomic (a step directory appears only once complete, so a crash
mid-save leaves the last good checkpoint intact) and keep the newest N. Restores target
the abstract sharded state, so each device reads only its shards.

A checkpoint damaged after it was written (a file deleted, truncated or altered; an emptied
folder; garbage metadata) is told apart from one written for another model: the saved array
shapes are read first, and a fingerprint of every array, saved beside them, is checked after
the restore (a flipped bit restores without any error otherwise). `restore_newest_intact` sets
a damaged checkpoint aside (renamed, never deleted) and falls back to the next newest.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from magnet_jax.config import Config
from magnet_jax.config_io import config_from_dict, config_to_dict, diff_configs
from magnet_jax.parallel.distributed import all_processes, barrier

log = logging.getLogger(__name__)

# Sections whose change makes a checkpoint unusable (others, e.g. train.num_steps, may change on resume).
_MODEL_SECTIONS = ("lm", "conditioner")


class CheckpointMismatchError(ValueError):
    pass


class CheckpointDamagedError(ValueError):
    """A checkpoint whose files no longer hold what was saved."""


class Checkpointer:
    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def all_steps(self):
        return list(self._manager.all_steps())

    def save(self, step: int, state, cfg: Config, extra: Optional[Dict[str, Any]] = None, *, force=False) -> bool:
        meta = {"config": config_to_dict(cfg), "extra": dict(extra or {}), "fingerprint": fingerprint(state)}
        return self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                                 meta=ocp.args.JsonSave(meta)), force=force)

    def read_meta(self, step: int) -> Dict[str, Any]:
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, abstract_state, cfg: Config) -> Tuple[Any, Dict[str, Any]]:
        """Restores `step` into `abstract_state` (ShapeDtypeStructs with shardings).

        Raises CheckpointMismatchError naming the differing config keys (or shapes) when the
        checkpoint was written for another model, before touching any array, and
        CheckpointDamagedError when its files do not hold what was saved.
        """
        where = f"checkpoint {self.directory} step {step}"
        meta = self._damage_guard(where, "its metadata is unreadable", lambda: self.read_meta(step))
        saved = self._damage_guard(where, "its config is unreadable", lambda: config_from_dict(meta["config"]))
        diffs = [k for k in diff_configs(saved, cfg) if k.split(".")[0] in _MODEL_SECTIONS]
        if diffs:
            lines = ", ".join(f"{k}: checkpoint={_get(saved, k)!r} config={_get(cfg, k)!r}" for k in diffs)
            raise CheckpointMismatchError(
                f"{where} was written for another model ({lines}). "
                "Use the config it was trained with, or a new train.workdir."
            )
        # The array store's index first, in one read: a damaged one fails here with one error, not
        # in dozens of concurrent array opens that each print a traceback.
        self._damage_guard(where, "its array index is unreadable", lambda: _list_array_store(
            os.path.join(self.directory, str(step), "state")))
        arrays = self._damage_guard(where, "its array metadata is unreadable",
                                    lambda: jax.tree.leaves(self._manager.item_metadata(step)["state"]))
        if _shapes(arrays) != _shapes(jax.tree.leaves(abstract_state)):
            raise CheckpointMismatchError(
                f"{where} holds other arrays than the current train state ({len(arrays)} saved, "
                f"{len(jax.tree.leaves(abstract_state))} now; e.g. another optimizer, EMA or clipping setting). "
                "Use the config it was trained with, or a new train.workdir.")
        restored = self._damage_guard(where, "its arrays do not read back", lambda: self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))))["state"]
        if "fingerprint" in meta and fingerprint(restored) != meta["fingerprint"]:
            raise CheckpointDamagedError(f"{where} is damaged: its arrays differ from what was saved "
                                         "(their fingerprint does not match)")
        return restored, meta.get("extra", {})

    @staticmethod
    def _damage_guard(where: str, what: str, fn):
        try:
            return fn()
        except Exception as e:  # orbax / TensorStore raise many types (some plain Exception)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(" See full TensorStore details")[0]
            raise CheckpointDamagedError(f"{where} is damaged: {what} ({type(e).__name__}: {first[:300]})") from e

    def restore_newest_intact(self, abstract_state, cfg: Config) -> Tuple[Optional[int], Any, Dict[str, Any]]:
        """(step, state, extra) of the newest checkpoint that restores intact, or (None, None, {}) if
        none does. Damaged ones are renamed into `<directory>.damaged/` with a warning each; a
        checkpoint of another model stops the run (CheckpointMismatchError), whatever its age."""
        for step in sorted(self.all_steps(), reverse=True):
            try:
                error = None
                state, extra = self.restore(step, abstract_state, cfg)
            except CheckpointDamagedError as e:
                error = e
            if all_processes(error is None, "checkpoint intact"):
                return step, state, extra
            aside = self.set_aside(step)
            log.warning("%s; moved it to %s and trying the checkpoint before it",
                        error or f"checkpoint step {step} is damaged on another process", aside)
        return None, None, {}

    def set_aside(self, step: int) -> str:
        """Renames step `step`'s folder into `<directory>.damaged/` (process 0; all wait for it)."""
        base = os.path.join(self.directory + ".damaged", str(step))
        target, n = base, 1
        while os.path.exists(target):
            target, n = f"{base}.{n}", n + 1
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(os.path.join(self.directory, str(step)), target)
        barrier(f"magnet_jax checkpoint {step} set aside")
        self._manager.reload()
        return target

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()


def _get(cfg, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _shapes(leaves) -> List[Tuple[Tuple[int, ...], str]]:
    return sorted((tuple(x.shape), str(jnp.dtype(x.dtype))) for x in leaves)


def _list_array_store(folder: str) -> None:
    """Reads the index of an OCDBT array store (orbax's default format), if the folder has one."""
    if os.path.isfile(os.path.join(folder, "manifest.ocdbt")):
        import tensorstore as ts

        ts.KvStore.open({"driver": "ocdbt", "base": f"file://{os.path.abspath(folder)}/"}).result().list().result()


def fingerprint(tree) -> List[List[int]]:
    """Two wrapping uint32 sums per array of its raw bits, plain and position-weighted: any
    flipped bit changes the first, a moved value the second. Computed where the arrays live."""
    return [[int(a), int(b)] for a, b in jax.device_get(_fingerprint(jax.tree.leaves(tree)))]


@jax.jit
def _fingerprint(leaves):
    out = []
    for x in leaves:
        if x.dtype == jnp.bool_:
            bits = x.astype(jnp.uint32)
        else:
            unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
            bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
        bits = bits.reshape(-1)
        weights = jnp.arange(bits.shape[0], dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1)
        out.append((jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weights, dtype=jnp.uint32)))
    return out
