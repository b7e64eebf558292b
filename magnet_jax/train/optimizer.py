"""optax optimizers and learning-rate schedules of the MAGNeT recipes."""
from __future__ import annotations

import jax.numpy as jnp
import optax

from magnet_jax.config import OptimConfig
from magnet_jax.train.dadapt_adam import dadapt_adam


def lr_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """audiocraft's schedulers: cosine with linear warmup (to lr_min_ratio * lr), inverse
    square root after warmup, or constant."""
    warmup = max(int(cfg.warmup_steps), 0)
    if cfg.schedule == "cosine":
        if total_steps <= warmup:
            raise ValueError(f"train.num_steps={total_steps} must exceed optim.warmup_steps={warmup} for 'cosine'")
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup, decay_steps=total_steps,
            end_value=cfg.lr * cfg.lr_min_ratio)
    if cfg.schedule == "inverse_sqrt":
        def schedule(step):
            step = jnp.asarray(step, jnp.float32)
            if warmup == 0:
                return cfg.lr * jnp.reciprocal(jnp.sqrt(jnp.maximum(step, 1.0)))
            warm = cfg.lr * step / warmup
            decay = cfg.lr * jnp.sqrt(warmup / jnp.maximum(step, 1.0))
            return jnp.where(step < warmup, warm, decay)
        return schedule
    if cfg.schedule == "constant":
        return optax.constant_schedule(cfg.lr)
    raise ValueError(f"Unknown optim.schedule {cfg.schedule!r}; use 'cosine', 'inverse_sqrt' or 'constant'.")


def make_optimizer(cfg: OptimConfig, total_steps: int):
    """Returns (optax transformation, learning-rate schedule)."""
    schedule = lr_schedule(cfg, total_steps)
    if cfg.optimizer == "adamw":
        opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "dadam":
        # D-Adaptation Adam (the paper's recipe, lr ~ 1): the schedule scales the adapted step.
        opt = dadapt_adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"Unknown optim.optimizer {cfg.optimizer!r}; use 'adamw' or 'dadam'.")
    parts = [optax.clip_by_global_norm(cfg.max_norm)] if cfg.max_norm > 0 else []
    return optax.chain(*parts, opt), schedule
