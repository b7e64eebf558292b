"""Which spans to re-mask: rank-based selection (exactly k per row, ties to the lower index)
and the reference's least-probable overlapping-span search, both jittable and batched."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def rank_descending(scores: jnp.ndarray) -> jnp.ndarray:
    """Rank of each entry along the last axis, highest score first; ties keep index order."""
    order = jnp.argsort(-scores, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True)


def top_k_mask(scores: jnp.ndarray, k) -> jnp.ndarray:
    """Bool mask of the k highest scores per row (k may be traced): by rank, never by a
    threshold, so ties at the cut cannot change how many are picked."""
    return rank_descending(scores) < k


def dilate_starts(starts: jnp.ndarray, span_len: int) -> jnp.ndarray:
    """[..., S] span-start flags (S = T - L + 1 starts) -> [..., T] frames covered by a span."""
    pad = [(0, 0)] * (starts.ndim - 1) + [(span_len - 1, span_len - 1)]
    padded = jnp.pad(starts.astype(jnp.int32), pad)
    c = jnp.cumsum(padded, axis=-1)
    t = starts.shape[-1] + span_len - 1
    # frame j is covered iff a start lies in [j - L + 1, j]
    window = c[..., span_len - 1:span_len - 1 + t] - jnp.pad(c, pad[:-1] + [(1, 0)])[..., :t]
    return window > 0


def window_sums(x: jnp.ndarray, width: int) -> jnp.ndarray:
    """[..., T] -> [..., T - width + 1] sums of every window of `width` (torch's unfold + sum),
    added left to right: a cumulative-sum difference would lose the small scores next to
    the -1e4 sentinels."""
    n = x.shape[-1] - width + 1
    total = x[..., :n]
    for i in range(1, width):
        total = total + x[..., i:i + n]
    return total


def least_probable_spans_mask(token_scores: jnp.ndarray, num_masked, span_len: int) -> jnp.ndarray:
    """audiocraft's `_least_probable_span_masking` for a batch: token_scores [B, T] (-log p,
    or the never-remask sentinel), num_masked a scalar -> bool [B, T].

    Overlapping spans are ranked by their summed score; a binary search over u (how many
    of the least probable spans to take) drives the number of covered frames towards
    num_masked, with the reference's bounds, its round-half-to-even midpoint and its
    "keep the last evaluated mask" exit. The host loop becomes a bounded while_loop over
    the batch with per-row activity flags.
    """
    b, t = token_scores.shape
    span_scores = window_sums(token_scores.astype(jnp.float32), span_len)
    rank = rank_descending(span_scores)
    target = jnp.maximum(jnp.asarray(num_masked, jnp.int32), span_len)
    lo = jnp.full((b,), target // span_len, jnp.int32)
    hi = jnp.full((b,), target - span_len + 1, jnp.int32)

    def midpoint(lo, hi):
        return jnp.round(0.5 * (lo + hi).astype(jnp.float32)).astype(jnp.int32)  # half to even, as python

    def build(u):
        return dilate_starts(rank < u[:, None], span_len)

    mid = midpoint(lo, hi)
    mask = build(mid)

    def active(lo, hi, mid):
        return (mid > lo) & (mid < hi)

    def cond(carry):
        lo, hi, mid, _ = carry
        return jnp.any(active(lo, hi, mid))

    def body(carry):
        lo, hi, mid, mask = carry
        run = active(lo, hi, mid)
        new = build(mid)
        over = new.sum(-1) > target
        mask = jnp.where(run[:, None], new, mask)
        hi = jnp.where(run & over, mid, hi)
        lo = jnp.where(run & ~over, mid, lo)
        mid = jnp.where(run, midpoint(lo, hi), mid)
        return lo, hi, mid, mask

    return jax.lax.while_loop(cond, body, (lo, hi, mid, mask))[3]
