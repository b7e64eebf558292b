"""Orbax checkpoints of the train state, with the config and data-iterator state beside it.

Saves are asynchronous, atomic (a step directory appears only once complete, so a crash
mid-save leaves the last good checkpoint intact) and keep the newest N. Restores target
the abstract sharded state, so each device reads only its shards.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional, Tuple

import orbax.checkpoint as ocp

from magnet_jax.config import Config
from magnet_jax.config_io import config_from_dict, config_to_dict, diff_configs

log = logging.getLogger(__name__)

# Sections whose change makes a checkpoint unusable (others, e.g. train.num_steps, may change on resume).
_MODEL_SECTIONS = ("lm", "conditioner")


class CheckpointMismatchError(ValueError):
    pass


class Checkpointer:
    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def all_steps(self):
        return list(self._manager.all_steps())

    def save(self, step: int, state, cfg: Config, extra: Optional[Dict[str, Any]] = None, *, force=False) -> bool:
        meta = {"config": config_to_dict(cfg), "extra": dict(extra or {})}
        return self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                                 meta=ocp.args.JsonSave(meta)), force=force)

    def read_meta(self, step: int) -> Dict[str, Any]:
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, abstract_state, cfg: Config) -> Tuple[Any, Dict[str, Any]]:
        """Restores `step` into `abstract_state` (ShapeDtypeStructs with shardings).

        Raises CheckpointMismatchError naming the differing config keys when the checkpoint
        was written for another model, before touching any array.
        """
        meta = self.read_meta(step)
        saved = config_from_dict(meta["config"])
        diffs = [k for k in diff_configs(saved, cfg) if k.split(".")[0] in _MODEL_SECTIONS]
        if diffs:
            lines = ", ".join(f"{k}: checkpoint={_get(saved, k)!r} config={_get(cfg, k)!r}" for k in diffs)
            raise CheckpointMismatchError(
                f"checkpoint {self.directory} step {step} was written for another model ({lines}). "
                "Use the config it was trained with, or a new train.workdir."
            )
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointMismatchError(
                f"checkpoint {self.directory} step {step} does not fit the current train state: {e}. "
                "Use the config it was trained with, or a new train.workdir."
            ) from e
        return restored["state"], meta.get("extra", {})

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
