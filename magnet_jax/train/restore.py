"""A finished (or interrupted) training run's newest intact checkpoint, with the config it was
trained with: what `magnet-jax eval` scores."""
from __future__ import annotations

import os
from typing import Any, Tuple

import jax

from magnet_jax.config import Config
from magnet_jax.config_io import config_from_dict


def restore_run(workdir: str, devices=None) -> Tuple[Config, Any, Any, int]:
    """(config, graphdef, train state, step) of the newest intact checkpoint in `workdir` (a
    `train.workdir`), sharded over a mesh of `devices` built from the run's own mesh config."""
    from magnet_jax.parallel.logical import axis_rules
    from magnet_jax.parallel.mesh import make_mesh
    from magnet_jax.train.checkpoint import Checkpointer
    from magnet_jax.train.optimizer import make_optimizer
    from magnet_jax.train.state import abstract_train_state, model_graphdef

    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"{workdir} is not a training run (no checkpoints/ folder): give a train.workdir")
    ckpt = Checkpointer(ckpt_dir, async_save=False)
    try:
        steps = sorted(ckpt.all_steps())
        if not steps:
            raise FileNotFoundError(f"{ckpt_dir} holds no checkpoint yet")
        cfg = config_from_dict(ckpt.read_meta(steps[-1])["config"])
        mesh = make_mesh(cfg.mesh, devices)
        tx, _ = make_optimizer(cfg.optim, cfg.train.num_steps)
        with jax.set_mesh(mesh), axis_rules(cfg.mesh.rules):
            abstract, _ = abstract_train_state(cfg, tx, mesh, cfg.mesh.rules)
            step, state, _ = ckpt.restore_newest_intact(abstract, cfg)
        if step is None:
            raise ValueError(f"no checkpoint in {ckpt_dir} restores intact")
        return cfg, model_graphdef(cfg), state, int(step)
    finally:
        ckpt.close()
