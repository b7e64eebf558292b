"""MAGNeT's training objective and the pure train step `(state, batch, key) -> (state, metrics)`.

Each step draws ONE codebook stage for the whole batch, a mask rate per example from the
schedule, masks that stage with spans, replaces every higher stage by the mask id, keeps
the lower stages, and takes the cross-entropy on the masked frames of that stage only.
"""
from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from magnet_jax.config import Config
from magnet_jax.masking import get_schedule, mask_rate_to_span_starts_lut, span_mask
from magnet_jax.train.hybrid import hybrid_loss
from magnet_jax.train.losses import condition_keep, masked_cross_entropy
from magnet_jax.train.state import TrainState


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
    return {"span": span_mask(k_mask, rates, seq_len, cfg.masking.span_len, lut),
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


stage_loss.draws = stage_draws


def encode_text(text_encoder, frozen, batch):
    """The frozen text encoder's hidden states (no gradient), or None to use the ids directly."""
    if text_encoder is None:
        return None
    return jax.lax.stop_gradient(text_encoder(frozen, batch["text_ids"], batch["text_mask"]))


def objective_of(cfg: Config):
    """MAGNeT's `stage_loss`, or Hybrid-MAGNeT's (`lm.kind = "hybrid"`, train/hybrid.py)."""
    if cfg.lm.kind == "hybrid":
        return hybrid_loss
    return stage_loss


def make_train_step(cfg: Config, graphdef, tx, lr_schedule, text_encoder=None):
    """The pure step `(state, batch, key, frozen) -> (state, metrics)`; jit it with shardings
    (see `trainer.compile_train_step`). text_encoder: `(frozen, ids, mask) -> hidden`, a
    frozen encoder (T5) whose parameters `frozen` are passed beside the state, not trained."""
    lut = mask_rate_to_span_starts_lut(cfg.data.num_frames, cfg.masking.span_len)
    n_q = cfg.lm.n_q
    objective = objective_of(cfg)
    ema_decay, ema_every = cfg.optim.ema_decay, max(cfg.optim.ema_every, 1)

    accum = cfg.train.grad_accum_steps

    def train_step(state: TrainState, batch: Dict[str, jax.Array], key: jax.Array, frozen=None):
        k_stage, k_loss = jax.random.split(key)
        stage = jax.random.randint(k_stage, (), 0, n_q)
        text = encode_text(text_encoder, frozen, batch)

        def loss_fn(params, batch=batch, text=text, **given):
            model = nnx.merge(graphdef, params)
            return objective(model, batch, k_loss, stage, cfg, lut, text=text, **given)

        if accum == 1:
            (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        else:
            loss, aux, grads = _accumulate(loss_fn, state.params, batch, text, k_loss, accum, objective, cfg, lut)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        step = state.step + 1
        ema = state.ema_params
        if ema is not None:
            do = (step % ema_every) == 0
            ema = jax.tree.map(lambda e, p: jnp.where(do, ema_decay * e + (1 - ema_decay) * p, e), ema, params)
        onehot = jax.nn.one_hot(stage, n_q)
        # Hybrid-MAGNeT: the per-stage numbers are those of the masked stage (its prefix CE is ce_ar).
        metrics = dict(aux, loss=loss, stage=stage, grad_norm=grad_norm, lr=lr_schedule(state.step),
                       ce_per_stage=onehot * aux.get("ce_nar", loss), acc_per_stage=onehot * aux.get("acc_nar", aux["acc"]),
                       stage_count=onehot)
        return TrainState(step=step, params=params, opt_state=opt_state, ema_params=ema), metrics

    return train_step


def _accumulate(loss_fn, params, batch, text, key, accum: int, objective, cfg: Config, lut):
    """The large batch's loss, aux and gradient, in `accum` micro-batches (lax.scan): the per-example
    masks are drawn for the whole batch first, and the micro-batches' token-mean losses are weighted
    by their target counts, so the result is the large batch's token mean (up to float rounding)."""
    b, _, t = batch["codes"].shape
    if b % accum:
        raise ValueError(f"train.grad_accum_steps={accum} does not divide the batch of {b} examples")
    drawn = objective.draws(key, b, t, cfg, lut, "dropout")
    # Micro-batch i is rows i, i + accum, ...: each device's block of rows holds a share of every one.
    split = lambda x: jnp.swapaxes(x.reshape((b // accum, accum) + x.shape[1:]), 0, 1)
    micro = jax.tree.map(split, (batch, text, drawn))

    def body(carry, xs):
        mb, mtext, mdrawn = xs
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, mb, mtext, **mdrawn)
        n = aux.get("num_targets", aux["num_masked"])
        sums = jax.tree.map(lambda c, x: c + n * x, carry, (grads, loss, aux))
        return sums, n

    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
        lambda: jax.value_and_grad(loss_fn, has_aux=True)(params, *jax.tree.map(lambda x: x[0], micro[:2]),
                                                          **jax.tree.map(lambda x: x[0], micro[2]))))
    (grads, loss, aux), counts = jax.lax.scan(body, (zeros[1], zeros[0][0], zeros[0][1]), micro)
    total = jnp.maximum(counts.sum(), 1.0)
    grads, loss, aux = jax.tree.map(lambda x: x / total, (grads, loss, aux))
    return loss, aux, grads


def make_eval_step(cfg: Config, graphdef, text_encoder=None):
    """Per-stage CE and accuracy `[K]` on a batch with fixed masking (key), with the text
    condition and with the null condition (the gap is what the caption is worth)."""
    lut = mask_rate_to_span_starts_lut(cfg.data.num_frames, cfg.masking.span_len)
    objective, hybrid = objective_of(cfg), cfg.lm.kind == "hybrid"

    def eval_step(params, batch, key, frozen=None):
        model = nnx.merge(graphdef, params)
        text = encode_text(text_encoder, frozen, batch)
        out = {"ce_per_stage": [], "acc_per_stage": [], "ce_per_stage_null_text": []}
        # Hybrid-MAGNeT: the masked stages with no prefix (MAGNeT's task), the autoregressive part
        # over the whole clip (every query before the boundary).
        fixed = dict(boundary=0) if hybrid else {}
        for stage in range(cfg.lm.n_q):
            k = jax.random.fold_in(key, stage)
            _, aux = objective(model, batch, k, stage, cfg, lut, condition="text", text=text, **fixed)
            _, null = objective(model, batch, k, stage, cfg, lut, condition="null", text=text, **fixed)
            out["ce_per_stage"].append(aux.get("ce_nar", aux["ce"]))
            out["acc_per_stage"].append(aux.get("acc_nar", aux["acc"]))
            out["ce_per_stage_null_text"].append(null.get("ce_nar", null["ce"]))
        if hybrid:
            _, aux = objective(model, batch, key, 0, cfg, lut, condition="text", text=text,
                               boundary=batch["codes"].shape[-1] + max(cfg.lm.codebook_delays))
            out["ce_prefix"] = [aux["ce_ar"]]
        return {k: jnp.stack(v) for k, v in out.items()}

    return eval_step
