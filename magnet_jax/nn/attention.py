"""Multi-head attention (self and cross) and the attention masks MAGNeT needs."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from magnet_jax.nn.initializers import torch_linear_default_init
from magnet_jax.nn.linear import Dense
from magnet_jax.parallel.logical import constrain

_NEG = float(jnp.finfo(jnp.float32).min)  # finite: a fully masked row gives a mean, not NaN


def local_window_mask(length: int, context: int) -> jnp.ndarray:
    """[T, T] bool, True where |t_q - t_k| <= context (MAGNeT's stage > 0 attention)."""
    pos = jnp.arange(length)
    return jnp.abs(pos[:, None] - pos[None, :]) <= context


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
    ) -> jnp.ndarray:
        """x: [B, T, D]; source (cross) or x itself (self); mask broadcasts to [B, H, T, S], True = attend."""
        q = self.query(x)
        if kv is None:
            kv = self.key_value(x if source is None else source)
        k, v = kv
        q = constrain(q, ("batch", "length", "heads", "kv"))
        q = q * jnp.asarray(1.0 / math.sqrt(self.head_dim), q.dtype)
        scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)
        if mask is not None:
            scores = jnp.where(mask, scores, _NEG)
        weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhts,bshd->bthd", weights, v.astype(self.dtype))
        return self.out(out)
