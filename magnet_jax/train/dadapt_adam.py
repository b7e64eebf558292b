"""D-Adaptation Adam as audiocraft's `DAdaptAdam` runs it (MAGNeT's recipe: lr 1 with a
cosine schedule): no bias correction, decoupled weight decay, and no update while the
scheduled lr is 0 (warmup starts there). optax's `contrib.dadapt_adamw` divides 0 by 0 at
that first step and turns the whole state into NaN, hence this transformation.

The step size is `d * lr(step)`, where d grows from d0 towards an estimate of the distance
to the solution: d_hat = (sum(s^2 / denom) / (1 - b2) - gsq_weighted) / |s|_1.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class DAdaptAdamState(NamedTuple):
    count: jnp.ndarray
    d: jnp.ndarray
    gsq_weighted: jnp.ndarray
    exp_avg: Any
    exp_avg_sq: Any
    s: Any


def _tree_sum(tree) -> jnp.ndarray:
    return sum((jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(tree)), jnp.zeros((), jnp.float32))


def dadapt_adam(learning_rate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                d0: float = 1e-6, growth_rate: float = float("inf")) -> optax.GradientTransformation:
    schedule = learning_rate if callable(learning_rate) else (lambda _: learning_rate)

    def init(params):
        zeros = lambda: jax.tree.map(jnp.zeros_like, params)
        f32 = lambda x: jnp.asarray(x, jnp.float32)
        return DAdaptAdamState(jnp.zeros((), jnp.int32), f32(d0), f32(0.0), zeros(), zeros(), zeros())

    def update(grads, state: DAdaptAdamState, params=None):
        if params is None:
            raise ValueError("dadapt_adam needs the params (weight decay and its update rule)")
        lr = jnp.asarray(schedule(state.count), jnp.float32)
        active = lr > 0
        dlr = state.d * lr
        pick = lambda new, old: jax.tree.map(lambda n, o: jnp.where(active, n, o), new, old)
        exp_avg = pick(jax.tree.map(lambda m, g: b1 * m + dlr * (1 - b1) * g, state.exp_avg, grads), state.exp_avg)
        exp_avg_sq = pick(jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.exp_avg_sq, grads),
                          state.exp_avg_sq)
        s = pick(jax.tree.map(lambda s_, g: b2 * s_ + dlr * (1 - b2) * g, state.s, grads), state.s)
        denom = jax.tree.map(lambda v: jnp.sqrt(v) + eps, exp_avg_sq)
        zero = jnp.zeros((), jnp.float32)
        g_sq = jnp.where(active, _tree_sum(jax.tree.map(lambda g, q: g * g / q, grads, denom)), zero)
        sksq = jnp.where(active, _tree_sum(jax.tree.map(lambda s_, q: s_ * s_ / q, s, denom)), zero)
        sk_l1 = jnp.where(active, _tree_sum(jax.tree.map(jnp.abs, s)), zero)
        stepping = sk_l1 > 0  # the reference returns before touching d or the params otherwise
        gsq_weighted = b2 * state.gsq_weighted + g_sq * dlr * dlr * (1 - b2)
        d_hat = (sksq / (1 - b2) - gsq_weighted) / jnp.where(stepping, sk_l1, 1.0)
        d = jnp.where(stepping, jnp.maximum(state.d, jnp.minimum(d_hat, state.d * growth_rate)), state.d)
        gsq_weighted = jnp.where(stepping, gsq_weighted, state.gsq_weighted)
        decay = weight_decay * dlr
        updates = jax.tree.map(
            lambda m, q, p: jnp.where(stepping, -m / q - decay * p, jnp.zeros_like(p)), exp_avg, denom, params)
        new_state = DAdaptAdamState(optax.safe_increment(state.count), d, gsq_weighted, exp_avg, exp_avg_sq, s)
        return updates, new_state

    return optax.GradientTransformation(init, update)
