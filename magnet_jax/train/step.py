"""The pure train step `(state, batch, key) -> (state, metrics)` and the held-out eval step.

Each step draws ONE codebook stage for the whole batch and takes the loss of `cfg.lm.kind`'s
objective (train/objectives.py) on it.
"""
from __future__ import annotations

from typing import Dict

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from magnet_jax.config import Config
from magnet_jax.masking import mask_rate_to_span_starts_lut
from magnet_jax.train.objectives import objective_for
from magnet_jax.train.state import TrainState


def encode_text(text_encoder, frozen, batch):
    """The frozen text encoder's hidden states (no gradient), or None to use the ids directly."""
    if text_encoder is None:
        return None
    return jax.lax.stop_gradient(text_encoder(frozen, batch["text_ids"], batch["text_mask"]))


def make_train_step(cfg: Config, graphdef, tx, lr_schedule, text_encoder=None):
    """The pure step `(state, batch, key, frozen) -> (state, metrics)`; jit it with shardings
    (see `setup.compile_train_step`). text_encoder: `(frozen, ids, mask) -> hidden`, a
    frozen encoder (T5) whose parameters `frozen` are passed beside the state, not trained."""
    lut = mask_rate_to_span_starts_lut(cfg.data.num_frames, cfg.lm.span_len)
    n_q = cfg.lm.n_q
    objective = objective_for(cfg)
    ema_decay, ema_every = cfg.optim.ema_decay, max(cfg.optim.ema_every, 1)

    accum = cfg.train.grad_accum_steps

    def train_step(state: TrainState, batch: Dict[str, jax.Array], key: jax.Array, frozen=None):
        k_stage, k_loss = jax.random.split(key)
        stage = jax.random.randint(k_stage, (), 0, n_q)
        text = encode_text(text_encoder, frozen, batch)

        def loss_fn(params, batch=batch, text=text, **given):
            model = nnx.merge(graphdef, params)
            return objective.loss(model, batch, k_loss, stage, cfg, lut, text=text, **given)

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
    lut = mask_rate_to_span_starts_lut(cfg.data.num_frames, cfg.lm.span_len)
    objective, hybrid = objective_for(cfg), cfg.lm.kind == "hybrid"

    def eval_step(params, batch, key, frozen=None):
        model = nnx.merge(graphdef, params)
        text = encode_text(text_encoder, frozen, batch)
        out = {"ce_per_stage": [], "acc_per_stage": [], "ce_per_stage_null_text": []}
        # Hybrid-MAGNeT: the masked stages with no prefix (MAGNeT's task), the autoregressive part
        # over the whole clip (every query before the boundary).
        fixed = dict(boundary=0) if hybrid else {}
        for stage in range(cfg.lm.n_q):
            k = jax.random.fold_in(key, stage)
            _, aux = objective.loss(model, batch, k, stage, cfg, lut, condition="text", text=text, **fixed)
            _, null = objective.loss(model, batch, k, stage, cfg, lut, condition="null", text=text, **fixed)
            out["ce_per_stage"].append(aux.get("ce_nar", aux["ce"]))
            out["acc_per_stage"].append(aux.get("acc_nar", aux["acc"]))
            out["ce_per_stage_null_text"].append(null.get("ce_nar", null["ce"]))
        if hybrid:
            _, aux = objective.loss(model, batch, key, 0, cfg, lut, condition="text", text=text,
                               boundary=batch["codes"].shape[-1] + max(cfg.lm.codebook_delays))
            out["ce_prefix"] = [aux["ce_ar"]]
        return {k: jnp.stack(v) for k, v in out.items()}

    return eval_step
