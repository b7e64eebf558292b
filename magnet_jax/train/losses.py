"""The loss pieces MAGNeT's objective (train/step.py) and Hybrid-MAGNeT's (train/hybrid.py) share:
the masked token cross-entropy and which rows keep their caption."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from magnet_jax.config import Config
from magnet_jax.text.conditioner import cfg_dropout_keep


def masked_cross_entropy(logits, targets, weights):
    """Mean CE and accuracy over the positions where `weights` is True (audiocraft's
    ignore_index mean: over tokens of the whole batch). logits fp32 [..., V]."""
    logz = jax.nn.logsumexp(logits, axis=-1)
    tgt = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    ce = logz - tgt
    w = weights.astype(jnp.float32)
    count = jnp.maximum(w.sum(), 1.0)
    acc = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return (ce * w).sum() / count, (acc * w).sum() / count, w.sum()


def condition_keep(condition: str, key, batch: int, cfg: Config) -> jnp.ndarray:
    """Which rows keep their text: CFG dropout ('dropout'), all ('text') or none ('null')."""
    if condition == "dropout":
        return cfg_dropout_keep(key, batch, cfg.conditioner.cfg_dropout)
    if condition in ("text", "null"):
        return jnp.full((batch,), condition == "text")
    raise ValueError(f"condition must be 'dropout', 'text' or 'null', got {condition!r}")
