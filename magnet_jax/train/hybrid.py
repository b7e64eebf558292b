"""Hybrid-MAGNeT's training objective: an autoregressive prefix, then MAGNeT's masked stages.

One model (`lm.kind = "hybrid"`) over the clip laid out in its delay pattern (frame t of
codebook k at step t + delay_k + 1; the output at a step predicts the next step). Per
example a prefix boundary p is drawn uniformly in [0, T):
- the prefix: pattern steps <= p, i.e. frames t < p - delay_k of codebook k. Its queries attend
  causally, and every prefix token is a next-token target (all codebooks);
- after it: MAGNeT's masking of the batch's stage s (spans at the drawn mask rate on codebook
  s, every higher codebook masked, lower ones given). Its queries attend to every key (stage 0)
  or within the restricted window (stages > 0), the prefix included; the masked frames of
  codebook s are the targets.
One mixed attention mask per example, one cross-entropy over both kinds of target (reported
apart as `ce_ar` and `ce_nar`). The held-out evaluation fixes the boundary instead (train/step.py):
at 0 for the masked stages (MAGNeT's task, comparable with MAGNeT runs) and past the end for
the autoregressive part (MusicGen's teacher-forced CE). This follows audiocraft's unreleased `hybrid_magnet` solver
(AR queries below the boundary, NAR queries above it); here the spans are drawn over the whole
clip at the drawn rate and kept after the boundary.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from magnet_jax.decode.delay_pattern import to_pattern
from magnet_jax.decode.rescoring import frame_logits_of
from magnet_jax.masking import get_schedule, span_mask
from magnet_jax.nn.attention import hybrid_attention_mask
from magnet_jax.train.losses import condition_keep, masked_cross_entropy


def hybrid_inputs(codes: jnp.ndarray, boundary: jnp.ndarray, stage, span: jnp.ndarray, delays, mask_id: int):
    """codes [B, K, T], boundary [B], span bool [B, T] -> (input codes, prefix targets [B, K, T],
    masked-stage targets [B, K, T]) in frame space."""
    _, n_q, t = codes.shape
    k = jnp.arange(n_q)[None, :, None]
    frames = jnp.arange(t)[None, None, :]
    prefix = frames < boundary[:, None, None] - jnp.asarray(delays)[None, :, None]
    staged = (k == stage) & span[:, None, :] & ~prefix
    hidden = ~prefix & ((k > stage) | staged)
    return jnp.where(hidden, mask_id, codes), prefix, staged


def hybrid_draws(key, batch: int, seq_len: int, cfg, lut, condition: str = "dropout"):
    """One step's per-example randomness (as `train.objectives.stage_draws`), with each example's boundary."""
    k_boundary, k_rate, k_mask, k_cfg = jax.random.split(key, 4)
    rates = get_schedule(cfg.masking.schedule)(jax.random.uniform(k_rate, (batch,)))
    return {"boundary": jax.random.randint(k_boundary, (batch,), 0, seq_len),
            "span": span_mask(k_mask, rates, seq_len, cfg.lm.span_len, lut),
            "keep": condition_keep(condition, k_cfg, batch, cfg)}


def hybrid_loss(model, batch, key, stage, cfg, lut, condition: str = "dropout", text=None, boundary=None,
                span=None, keep=None):
    """Loss of one stage on a batch (see the module doc); `stage` may be traced. Same contract
    as `train.objectives.stage_loss`: (loss, aux with ce, acc, ce_ar, ce_nar, acc_nar, ...).
    boundary: a fixed prefix boundary (frames, an int or [B]) instead of a random one per example.
    span, keep: a given span mask bool [B, T] and caption rows bool [B] instead of drawn ones."""
    codes = batch["codes"]
    b, _, t = codes.shape
    lm_cfg = model.lm.config
    drawn = hybrid_draws(key, b, t, cfg, lut, condition)
    boundary = drawn["boundary"] if boundary is None else boundary
    span = drawn["span"] if span is None else span
    keep = drawn["keep"] if keep is None else keep
    boundary = jnp.broadcast_to(jnp.asarray(boundary, jnp.int32), (b,))
    inputs, prefix, staged = hybrid_inputs(codes, boundary, stage, span, lm_cfg.codebook_delays, lm_cfg.mask_id)
    if "padding_mask" in batch:
        valid = batch["padding_mask"].astype(bool)[:, None, :]
        prefix, staged = prefix & valid, staged & valid
    text = batch["text_ids"] if text is None else text
    cond, cond_mask = model.conditioner(text, batch["text_mask"], keep)
    pattern = to_pattern(inputs, lm_cfg.codebook_delays, lm_cfg.mask_id)
    mask = hybrid_attention_mask(boundary, pattern.shape[-1], stage, lm_cfg.subcodes_context)
    hidden = model.lm.hidden_states(pattern, cond, cond_mask, attention_mask=mask)
    logits = frame_logits_of(model.lm, hidden, t)  # [B, K, T, card]
    ce, acc, count = masked_cross_entropy(logits, codes, prefix | staged)
    ce_ar, _, n_ar = masked_cross_entropy(logits, codes, prefix)
    ce_nar, acc_nar, n_nar = masked_cross_entropy(logits, codes, staged)
    return ce, {"ce": ce, "acc": acc, "ce_ar": ce_ar, "ce_nar": ce_nar, "acc_nar": acc_nar,
                "prefix_frac": prefix.astype(jnp.float32).mean(), "masked_frac": span.astype(jnp.float32).mean(),
                "num_masked": n_nar, "num_prefix": n_ar, "num_targets": count}

