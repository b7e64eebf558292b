"""Multi-head attention (self and cross) and the attention masks MAGNeT needs."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from magnet_jax.nn.attention_kernels import KernelMask, kernel_attention
from magnet_jax.nn.initializers import torch_linear_default_init
from magnet_jax.nn.linear import Dense
from magnet_jax.parallel.logical import constrain

_NEG = float(jnp.finfo(jnp.float32).min)  # finite: a fully masked row gives a mean, not NaN
_DIAGONAL_MAX_KEYS = 16  # local windows of up to this many keys are computed offset by offset


def local_window_mask(length: int, context: int) -> jnp.ndarray:
    """[T, T] bool, True where |t_q - t_k| <= context (MAGNeT's stage > 0 attention)."""
    pos = jnp.arange(length)
    return jnp.abs(pos[:, None] - pos[None, :]) <= context


def hybrid_attention_mask(boundary: jnp.ndarray, steps: int, stage, context: int) -> jnp.ndarray:
    """Hybrid-MAGNeT's mixed mask, bool [B, 1, S, S] over delay-pattern steps: queries before
    `boundary` [B] attend causally, the others to every key (stage 0) or to |q - k| <= context
    (stage > 0; context -1: all)."""
    q = jnp.arange(steps)[:, None]
    k = jnp.arange(steps)[None, :]
    window = (jnp.abs(q - k) <= context) if context >= 0 else jnp.ones((steps, steps), bool)
    parallel = window | (jnp.asarray(stage) == 0)
    prefix_query = q[None] < jnp.asarray(boundary)[:, None, None]  # [B, S, 1]
    return jnp.where(prefix_query, (k <= q)[None], parallel[None])[:, None]


@dataclasses.dataclass(frozen=True)
class LocalWindow:
    """Self-attention limited to |t_q - t_k| <= context, computed block-banded: each block of
    queries meets only its own and the two neighbouring key blocks, so the cost grows as
    T * 3 * block instead of T^2 (stages > 0 at long T)."""

    context: int

    @property
    def block(self) -> int:
        return max(16, self.context)


def banded_attention(q, k, v, window: LocalWindow, dtype):
    """q, k, v [B, T, H, Dh] (q already scaled) -> [B, T, H, Dh]; the softmax of each query is
    over exactly the keys a [T, T] local mask would keep."""
    b, t, h, d = q.shape
    blk = window.block
    nb = -(-t // blk)
    pad = nb * blk - t
    qb = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, nb, blk, h, d)
    kp = jnp.pad(k, ((0, 0), (blk, pad + blk), (0, 0), (0, 0))).reshape(b, nb + 2, blk, h, d)
    vp = jnp.pad(v, ((0, 0), (blk, pad + blk), (0, 0), (0, 0))).reshape(b, nb + 2, blk, h, d)
    # keys of query block i: blocks i-1, i, i+1 (block 0 of kp is padding)
    kb = jnp.concatenate([kp[:, :-2], kp[:, 1:-1], kp[:, 2:]], axis=2)  # [B, nb, 3blk, H, Dh]
    vb = jnp.concatenate([vp[:, :-2], vp[:, 1:-1], vp[:, 2:]], axis=2)
    q_pos = jnp.arange(nb)[:, None] * blk + jnp.arange(blk)[None, :]  # [nb, blk]
    k_pos = jnp.arange(nb)[:, None] * blk - blk + jnp.arange(3 * blk)[None, :]  # [nb, 3blk]
    allowed = (jnp.abs(q_pos[:, :, None] - k_pos[:, None, :]) <= window.context) & (k_pos >= 0)[:, None, :] \
        & (k_pos < t)[:, None, :]
    scores = jnp.einsum("bnqhd,bnkhd->bnhqk", qb, kb, preferred_element_type=jnp.float32)
    scores = jnp.where(allowed[None, :, None], scores, _NEG)
    weights = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.einsum("bnhqk,bnkhd->bnqhd", weights, vb.astype(dtype))
    return out.reshape(b, nb * blk, h, d)[:, :t]


def diagonal_attention(q, k, v, window: LocalWindow, dtype):
    """The same local attention for short windows, one key offset at a time: the scores of
    query t and key t + j for each j in [-context, context] (products summed over the head
    dimension), a softmax over those 2 * context + 1 offsets, the values mixed likewise. No
    key block is copied and no score outside the window is computed (1.6x faster than the
    banded form on CPU for MAGNeT's 11 keys)."""
    t, c = q.shape[1], window.context
    pad = ((0, 0), (c, c), (0, 0), (0, 0))
    kp, vp = jnp.pad(k, pad), jnp.pad(v.astype(dtype), pad)
    offsets = range(2 * c + 1)
    scores = jnp.stack([jnp.einsum("bthd,bthd->bth", q, kp[:, j:j + t], preferred_element_type=jnp.float32)
                        for j in offsets], axis=-1)  # [B, T, H, 2c + 1]
    key_pos = jnp.arange(t)[:, None] + jnp.arange(2 * c + 1)[None, :] - c
    scores = jnp.where(((key_pos >= 0) & (key_pos < t))[None, :, None, :], scores, _NEG)
    weights = jax.nn.softmax(scores, axis=-1).astype(dtype)
    return sum(weights[..., j, None] * vp[:, j:j + t] for j in offsets)


def local_attention(q, k, v, window: LocalWindow, dtype):
    """Short windows (MAGNeT's context of 5: 11 keys) offset by offset, longer ones banded."""
    if 2 * window.context + 1 <= _DIAGONAL_MAX_KEYS:
        return diagonal_attention(q, k, v, window, dtype)
    return banded_attention(q, k, v, window, dtype)


def gathered_local_attention(q, k, v, positions, window: LocalWindow, dtype):
    """Local attention for a subset of queries: q [B, C, H, Dh] (scaled) of the queries at
    `positions` [B, C] of a sequence whose keys and values k, v [B, T, H, Dh] are all given.
    Each query gathers its own 2 * context + 1 keys."""
    t, c = k.shape[1], window.context
    key_pos = positions[..., None] + jnp.arange(-c, c + 1)  # [B, C, W]
    valid = (key_pos >= 0) & (key_pos < t)
    rows = jax.vmap(lambda x, i: x[i])  # [T, H, Dh], [C, W] -> [C, W, H, Dh]
    index = jnp.clip(key_pos, 0, t - 1)
    kw, vw = rows(k, index), rows(v.astype(dtype), index)
    scores = jnp.einsum("bchd,bcwhd->bchw", q, kw, preferred_element_type=jnp.float32)
    scores = jnp.where(valid[:, :, None, :], scores, _NEG)
    weights = jax.nn.softmax(scores, axis=-1).astype(dtype)
    return jnp.einsum("bchw,bcwhd->bchd", weights, vw)


def causal_mask(length: int) -> jnp.ndarray:
    pos = jnp.arange(length)
    return pos[:, None] >= pos[None, :]


class MultiHeadAttention(nnx.Module):
    """Separate q/k/v kernels `[embed, heads, kv]` (audiocraft packs them in one `in_proj`;
    conversion splits it), output kernel `[heads, kv, embed]`."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        use_bias: bool,
        out_init,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads, self.head_dim, self.dtype = num_heads, dim // num_heads, dtype
        hd = (num_heads, self.head_dim)
        common = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        in_init = torch_linear_default_init(dim)
        self.query = Dense((dim,), hd, in_axes=("embed",), out_axes=("heads", "kv"), kernel_init=in_init, **common)
        self.key = Dense((dim,), hd, in_axes=("embed",), out_axes=("heads", "kv"), kernel_init=in_init, **common)
        self.value = Dense((dim,), hd, in_axes=("embed",), out_axes=("heads", "kv"), kernel_init=in_init, **common)
        self.out = Dense(hd, (dim,), in_axes=("heads", "kv"), out_axes=("embed",), kernel_init=out_init, **common)

    def key_value(self, source: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
        """Keys and values `[B, S, H, Dh]` of a source; cross-attention computes them once per call."""
        return self.key(source), self.value(source)

    def __call__(
        self,
        x: jnp.ndarray,
        source: Optional[jnp.ndarray] = None,
        *,
        kv: Optional[Tuple[jnp.ndarray, jnp.ndarray]] = None,
        mask: Optional[jnp.ndarray] = None,
        positions: Optional[jnp.ndarray] = None,
    ) -> jnp.ndarray:
        """x: [B, T, D]; source (cross) or x itself (self); mask broadcasts to [B, H, T, S], True =
        attend, or is a LocalWindow (banded self-attention), or a KernelMask (a fused kernel).

        positions [B, C]: x holds only these query positions of the sequence whose keys and
        values `kv` are given; `mask` is then the whole sequence's self-attention mask ([T, T],
        a LocalWindow, or None)."""
        q = self.query(x)
        if kv is None:
            kv = self.key_value(x if source is None else source)
        k, v = kv
        q = constrain(q, ("batch", "length", "heads", "kv"))
        q = q * jnp.asarray(1.0 / math.sqrt(self.head_dim), q.dtype)
        if isinstance(mask, KernelMask):
            if positions is None:
                return self.out(kernel_attention(q, k, v, mask, self.dtype))
            mask = mask.fallback  # some queries only (the sampler's last layer): the einsum path
        if isinstance(mask, LocalWindow):
            if positions is not None:
                return self.out(gathered_local_attention(q, k, v, positions, mask, self.dtype))
            return self.out(local_attention(q, k, v, mask, self.dtype))
        if positions is not None and mask is not None:
            if mask.ndim != 2:
                raise ValueError(f"with positions, the mask must be the [T, T] self-attention mask, got {mask.shape}")
            mask = mask[positions][:, None]  # the queries' rows: [B, 1, C, T]
        scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)
        if mask is not None:
            scores = jnp.where(mask, scores, _NEG)
        weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhts,bshd->bthd", weights, v.astype(self.dtype))
        return self.out(out)
