"""Token sampling of one decoding step, as audiocraft's `_generate_stage` samples:
softmax at a temperature floored at 0.01, then top-p (if p > 0), else top-k (if k > 0),
else the full distribution, or the argmax of the logits when not sampling.

Returns the tokens and the probability used as their confidence: the tempered softmax,
except with top-k where the reference renormalises `probs` in place, so the confidence
is the renormalised top-k probability.

No sort and no per-entry random bits (both are slow on CPU, where a [500, 2048] sort takes
~200 ms): the kept set of top-p and top-k is `probs >= threshold`, the threshold found by a
bisection over the float32 bit patterns of the probabilities (exact to the last bit), and
a token is drawn by inverse CDF from one uniform per position (exact in distribution).
The only departure from a sort: entries tied with the last kept one are all kept.
"""
from __future__ import annotations

from typing import Callable, Tuple

import jax
import jax.numpy as jnp

_MIN_TEMPERATURE = 1e-2
_ONE_BITS = 0x3F800000  # float32 1.0: probabilities lie in [0, 1], so bit patterns in [0, 2^30)
_BLOCK = 64  # the inverse-CDF draw first picks a block of this many entries, then an entry in it


def _bits(x):
    return jax.lax.bitcast_convert_type(x, jnp.int32)


def _float(bits):
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _smallest_passing(probs: jnp.ndarray, passes: Callable[[jnp.ndarray], jnp.ndarray]) -> jnp.ndarray:
    """The smallest float32 x in [0, max probs] with passes(x [..., 1]) -> bool [...] true, where
    `passes` is monotone (false ... false true ... true) and true at max probs. Bisection on
    the bit patterns (ordered as the floats for x >= 0): 30 passes over the row."""
    hi = _bits(probs.max(-1))
    lo = jnp.zeros_like(hi)

    def body(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        ok = passes(_float(mid)[..., None])
        return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

    return _float(jax.lax.fori_loop(0, 30, body, (lo, hi))[1])


def top_p_threshold(probs: jnp.ndarray, top_p) -> jnp.ndarray:
    """[..., V] -> [...]: top-p keeps entries whose preceding mass (sorted high to low) is
    <= p, i.e. exactly probs >= the smallest entry whose strictly-greater mass is <= p."""
    top_p = jnp.asarray(top_p, jnp.float32)
    return _smallest_passing(probs, lambda x: jnp.where(probs > x, probs, 0.0).sum(-1) <= top_p)


def top_k_threshold(probs: jnp.ndarray, k: int) -> jnp.ndarray:
    """[..., V] -> [...]: the k-th largest entry (probs >= it: the top k, and any ties)."""
    k = min(int(k), probs.shape[-1])
    return _smallest_passing(probs, lambda x: (probs > x).sum(-1) < k)


def inverse_cdf_draw(key: jax.Array, weights: jnp.ndarray, uniform=None) -> jnp.ndarray:
    """Index drawn with probability weights / sum (weights >= 0, some > 0 per row), [..., V]
    -> int32 [...]. One uniform per row (drawn from `key`, or given: `uniform` [...] in
    [0, 1)); the cumulative sums go block, then entry within the block, so the work is one
    pass over the row. The drawn entry always has weight > 0."""
    *lead, v = weights.shape
    nb = -(-v // _BLOCK)
    w = jnp.pad(weights, [(0, 0)] * len(lead) + [(0, nb * _BLOCK - v)]).reshape(*lead, nb, _BLOCK)
    block_cum = jnp.cumsum(w.sum(-1), axis=-1)  # [..., nb]
    # u < 1 with 23 random bits, so u * total < total: some block's cumulative sum exceeds it.
    if uniform is None:
        uniform = jax.random.uniform(key, tuple(lead), jnp.float32)
    target = uniform * block_cum[..., -1]
    block = jnp.sum(block_cum <= target[..., None], axis=-1)  # first block whose cum > target
    before = jnp.where(block > 0, jnp.take_along_axis(block_cum, jnp.maximum(block - 1, 0)[..., None], -1)[..., 0],
                       0.0)
    row = jnp.take_along_axis(w, block[..., None, None], axis=-2)[..., 0, :]  # [..., BLOCK]
    local = jnp.sum(jnp.cumsum(row, axis=-1) <= (target - before)[..., None], axis=-1)
    # rounding may leave the local target past the block's own sum: take its last positive entry
    last_positive = jnp.max(jnp.where(row > 0, jnp.arange(_BLOCK), 0), axis=-1)
    return (block * _BLOCK + jnp.minimum(local, last_positive)).astype(jnp.int32)


def sample_tokens(key: jax.Array, logits: jnp.ndarray, temperature, *, use_sampling: bool, top_k: int, top_p,
                  uniform=None) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """logits fp32 [..., V] -> (tokens int32 [...], confidence probability [...]).

    temperature and top_p may be traced; use_sampling and top_k are static. `uniform` [...]:
    the draw's uniforms instead of ones from `key` (so a position draws the same however
    the positions are batched).
    """
    logits = logits.astype(jnp.float32)
    temperature = jnp.maximum(jnp.asarray(temperature, jnp.float32), _MIN_TEMPERATURE)
    probs = jax.nn.softmax(logits / temperature, axis=-1)
    top_p = jnp.asarray(top_p, jnp.float32)
    use_top_p = top_p > 0.0
    if not use_sampling:  # the reference's argmax of the logits; the confidence is the plain softmax
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return tokens, jnp.take_along_axis(probs, tokens[..., None], axis=-1)[..., 0]
    # top-p wins over top-k in the reference; only its top-k path rewrites `probs` (renormalised).
    if top_k > 0:
        threshold = jax.lax.cond(use_top_p, top_p_threshold, lambda p, _: top_k_threshold(p, top_k), probs, top_p)
    else:
        threshold = jax.lax.cond(use_top_p, top_p_threshold, lambda p, _: jnp.zeros(p.shape[:-1], p.dtype),
                                 probs, top_p)
    kept = jnp.where(probs >= threshold[..., None], probs, 0.0)
    tokens = inverse_cdf_draw(key, kept, uniform)
    conf = jnp.take_along_axis(probs, tokens[..., None], axis=-1)[..., 0]
    if top_k > 0:
        conf = jnp.where(use_top_p, conf, conf / kept.sum(-1))
    return tokens, conf
