"""The training objectives, one per `lm.kind`, each a loss and its per-example draws.

MAGNeT's (`"magnet"`): each step draws ONE codebook stage for the whole batch, a mask rate per
example from the schedule, masks that stage with spans, replaces every higher stage by the mask
id, keeps the lower stages, and takes the cross-entropy on the masked frames of that stage only.
Hybrid-MAGNeT's (`"hybrid"`): an autoregressive prefix, then MAGNeT's masked stages (train/hybrid.py).

`objective_for(cfg)` gives the `Objective` of `cfg.lm.kind`:
- `loss(model, batch, key, stage, cfg, lut, condition="dropout", text=None, **given) -> (loss, aux)`;
- `draws(key, batch, seq_len, cfg, lut, condition="dropout") -> {name: [B, ...]}`, the step's
  per-example randomness, which `loss` takes back as keyword arguments (gradient accumulation
  draws it for the whole batch, then slices it with the batch).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict

import jax
import jax.numpy as jnp

from magnet_jax.config import Config
from magnet_jax.masking import get_schedule, span_mask
from magnet_jax.train.hybrid import hybrid_draws, hybrid_loss
from magnet_jax.train.losses import condition_keep, masked_cross_entropy


def build_inputs(codes, stage, span, mask_id: int):
    """codes [B,K,T], stage scalar, span bool [B,T] -> (input codes, loss mask on stage [B,T])."""
    k = jnp.arange(codes.shape[1])[None, :, None]
    hidden = (k > stage) | ((k == stage) & span[:, None, :])
    return jnp.where(hidden, mask_id, codes), span


def stage_draws(key, batch: int, seq_len: int, cfg: Config, lut, condition: str = "dropout"):
    """One step's per-example randomness of MAGNeT's objective: span masks at mask rates drawn from
    the schedule, and which rows keep their caption. Drawn for the whole batch, so that gradient
    accumulation slices the very masks of the one large batch."""
    k_rate, k_mask, k_cfg = jax.random.split(key, 3)
    rates = get_schedule(cfg.masking.schedule)(jax.random.uniform(k_rate, (batch,)))
    return {"span": span_mask(k_mask, rates, seq_len, cfg.lm.span_len, lut),
            "keep": condition_keep(condition, k_cfg, batch, cfg)}


def stage_loss(model, batch, key, stage, cfg: Config, lut, condition: str = "dropout", text=None, span=None,
               keep=None):
    """Loss of one stage on a batch. `stage` may be traced. Returns (loss, aux dict).

    condition: 'dropout' (training: CFG dropout), 'text' (always conditioned) or 'null'
    (always the null condition: what the model knows without the caption).
    text: the conditioner's input when not `batch["text_ids"]` (the frozen T5's hidden states).
    span, keep: a given span mask bool [B, T] (the config-independent evaluation,
    eval/token_metrics.py) and caption rows bool [B], instead of the ones `stage_draws` gives.
    """
    codes = batch["codes"]
    b, _, t = codes.shape
    if span is None or keep is None:
        drawn = stage_draws(key, b, t, cfg, lut, condition)
        span = drawn["span"] if span is None else span
        keep = drawn["keep"] if keep is None else keep
    inputs, loss_mask = build_inputs(codes, stage, span, cfg.lm.mask_id)
    if "padding_mask" in batch:
        loss_mask = loss_mask & batch["padding_mask"].astype(bool)
    text = batch["text_ids"] if text is None else text
    logits = model(inputs, text, batch["text_mask"], stage=stage, keep=keep, stage_logits_only=True)
    targets = jnp.take(codes, stage, axis=1)
    ce, acc, count = masked_cross_entropy(logits, targets, loss_mask)
    return ce, {"ce": ce, "acc": acc, "masked_frac": span.astype(jnp.float32).mean(), "num_masked": count}


@dataclasses.dataclass(frozen=True)
class Objective:
    """A training objective: its loss and its per-example draws (see the module doc)."""

    loss: Callable
    draws: Callable


OBJECTIVES: Dict[str, Objective] = {
    "magnet": Objective(loss=stage_loss, draws=stage_draws),
    "hybrid": Objective(loss=hybrid_loss, draws=hybrid_draws),
}


def objective_for(cfg: Config) -> Objective:
    """The objective of `cfg.lm.kind`."""
    try:
        return OBJECTIVES[cfg.lm.kind]
    except KeyError:
        raise ValueError(f"lm.kind={cfg.lm.kind!r}: one of {sorted(OBJECTIVES)}") from None
