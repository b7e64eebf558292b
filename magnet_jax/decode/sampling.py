"""Token sampling of one decoding step, as audiocraft's `_generate_stage` samples:
softmax at a temperature floored at 0.01, then top-p (if p > 0), else top-k (if k > 0),
else the full distribution, or the argmax of the logits when not sampling.

Returns the tokens and the probability used as their confidence: the tempered softmax,
except with top-k where the reference renormalises `probs` in place, so the confidence
is the renormalised top-k probability.
"""
from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp

_MIN_TEMPERATURE = 1e-2


def _top_p_keep(probs: jnp.ndarray, top_p) -> jnp.ndarray:
    """Keep tokens whose preceding cumulative mass (sorted high to low) is <= p."""
    order = jnp.argsort(-probs, axis=-1, stable=True)
    sorted_p = jnp.take_along_axis(probs, order, axis=-1)
    before = jnp.cumsum(sorted_p, axis=-1) - sorted_p
    keep_sorted = before <= top_p
    inverse = jnp.argsort(order, axis=-1)
    return jnp.take_along_axis(keep_sorted, inverse, axis=-1)


def _top_k_keep(probs: jnp.ndarray, k: int) -> jnp.ndarray:
    kth = jax.lax.top_k(probs, k)[0][..., -1:]
    return probs >= kth


def sample_tokens(key: jax.Array, logits: jnp.ndarray, temperature, *, use_sampling: bool, top_k: int, top_p
                  ) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """logits fp32 [..., V] -> (tokens int32 [...], confidence probability [...]).

    temperature and top_p may be traced; use_sampling and top_k are static.
    """
    logits = logits.astype(jnp.float32)
    temperature = jnp.maximum(jnp.asarray(temperature, jnp.float32), _MIN_TEMPERATURE)
    probs = jax.nn.softmax(logits / temperature, axis=-1)
    top_p = jnp.asarray(top_p, jnp.float32)
    use_top_p = top_p > 0.0
    if top_k > 0:
        keep_k = _top_k_keep(probs, top_k)
        renorm_k = jnp.where(keep_k, probs, 0.0)
        renorm_k = renorm_k / renorm_k.sum(-1, keepdims=True)
        # top-p wins over top-k in the reference; only the top-k path rewrites `probs`.
        conf_probs = jnp.where(use_top_p, probs, renorm_k)
        keep = jnp.where(use_top_p, _top_p_keep(probs, top_p), keep_k)
    else:
        conf_probs = probs
        keep = jnp.where(use_top_p, _top_p_keep(probs, top_p), True)
    if use_sampling:
        filtered = jnp.where(keep, probs, 0.0)
        tokens = jax.random.categorical(key, jnp.log(filtered), axis=-1)
    else:
        tokens = jnp.argmax(logits, axis=-1)
    tokens = tokens.astype(jnp.int32)
    conf = jnp.take_along_axis(conf_probs, tokens[..., None], axis=-1)[..., 0]
    return tokens, conf
