"""The T5 encoder (Hugging Face's `T5EncoderModel` architecture) in Flax NNX.

Pre-norm blocks with T5's scale-only RMS norm, unscaled attention (the scale is folded into
the weights at training), one relative position bias computed from bucketed offsets in the
first block and shared by all blocks, and a ReLU (t5 v1.0) or gated-GELU (v1.1 / flan)
feed-forward. Norms and softmax run in fp32 whatever the compute dtype.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from magnet_jax.config_io import dataclass_from_dict
from magnet_jax.parallel.logical import constrain


@dataclasses.dataclass(frozen=True)
class T5Config:
    vocab_size: int = 32128
    d_model: int = 768
    d_kv: int = 64
    d_ff: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"  # 'relu' | 'gated-gelu' | 'gated-<act>'

    @classmethod
    def from_hf_dict(cls, d: Dict[str, Any]) -> "T5Config":
        return dataclass_from_dict(cls, d, ignore_unknown=True)

    @property
    def gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        act = self.feed_forward_proj.split("-")[-1]
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else act

    def check_feeds(self, output_dim: int, where: str = "") -> None:
        """The conditioner projects this encoder's hidden states: its input width must be d_model."""
        if self.d_model != output_dim:
            raise ValueError(f"the T5 encoder{where} has width {self.d_model} but conditioner.output_dim={output_dim}; "
                             f"set conditioner.output_dim={self.d_model}, or give the T5 the LM was trained with")


_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
}


def relative_position_buckets(q_len: int, k_len: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional buckets [q_len, k_len] of the offset k - q: half the buckets per sign, exact
    up to half of those, logarithmic beyond, saturating at max_distance."""
    rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
    half = num_buckets // 2
    bucket = (rel > 0).astype(np.int64) * half
    n = np.abs(rel)
    exact = half // 2
    with np.errstate(divide="ignore"):
        large = exact + (np.log(np.maximum(n, 1) / exact) / math.log(max_distance / exact)
                         * (half - exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    return (bucket + np.where(n < exact, n, large)).astype(np.int32)


def _dense(rngs, n_in, n_out, param_dtype, axes):
    """A kernel with the LM's logical axis names, so the frozen encoder shards by the same rules
    (over fsdp/tensor on a pod; replicated under pure data parallelism)."""
    return nnx.Param(jax.random.normal(rngs.params(), (n_in, n_out), param_dtype) * (n_in ** -0.5),
                     out_sharding=axes, eager_sharding=False)


class T5Norm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, param_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class T5Block(nnx.Module):
    def __init__(self, cfg: T5Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        inner = cfg.num_heads * cfg.d_kv
        self.cfg, self.dtype = cfg, dtype
        self.attn_norm = T5Norm(cfg.d_model, cfg.layer_norm_epsilon, param_dtype=param_dtype)
        self.q = _dense(rngs, cfg.d_model, inner, param_dtype, ("embed", "heads"))
        self.k = _dense(rngs, cfg.d_model, inner, param_dtype, ("embed", "heads"))
        self.v = _dense(rngs, cfg.d_model, inner, param_dtype, ("embed", "heads"))
        self.o = _dense(rngs, inner, cfg.d_model, param_dtype, ("heads", "embed"))
        self.ff_norm = T5Norm(cfg.d_model, cfg.layer_norm_epsilon, param_dtype=param_dtype)
        self.wi_0 = _dense(rngs, cfg.d_model, cfg.d_ff, param_dtype, ("embed", "mlp"))
        self.wi_1 = _dense(rngs, cfg.d_model, cfg.d_ff, param_dtype, ("embed", "mlp")) if cfg.gated else None
        self.wo = _dense(rngs, cfg.d_ff, cfg.d_model, param_dtype, ("mlp", "embed"))

    def __call__(self, x, bias):
        """x [B, S, D]; bias [B or 1, H, S, S] fp32 (positions + padding)."""
        c, dt = self.cfg, self.dtype
        b, s, _ = x.shape
        h = self.attn_norm(x).astype(dt)
        heads = lambda w: (h @ w[...].astype(dt)).reshape(b, s, c.num_heads, c.d_kv)
        q, k, v = heads(self.q), heads(self.k), heads(self.v)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) + bias
        probs = jax.nn.softmax(scores, axis=-1).astype(dt)
        attn = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, s, -1)
        x = x + (attn @ self.o[...].astype(dt)).astype(x.dtype)
        h = self.ff_norm(x).astype(dt)
        act = _ACTIVATIONS[c.activation]
        ff = act(h @ self.wi_0[...].astype(dt))
        if self.wi_1 is not None:
            ff = ff * (h @ self.wi_1[...].astype(dt))
        return x + (ff @ self.wo[...].astype(dt)).astype(x.dtype)


class T5Encoder(nnx.Module):
    def __init__(self, config: T5Config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        if config.activation not in _ACTIVATIONS:
            raise ValueError(f"T5 feed_forward_proj={config.feed_forward_proj!r}: activation {config.activation!r} "
                             f"is not one of {sorted(_ACTIVATIONS)}")
        self.config, self.dtype = config, dtype
        self.embed = nnx.Param(jax.random.normal(rngs.params(), (config.vocab_size, config.d_model), param_dtype),
                               out_sharding=("vocab", "embed"), eager_sharding=False)
        self.relative_bias = nnx.Param(
            jax.random.normal(rngs.params(), (config.relative_attention_num_buckets, config.num_heads), param_dtype))
        self.blocks = nnx.List([T5Block(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                                for _ in range(config.num_layers)])
        self.final_norm = T5Norm(config.d_model, config.layer_norm_epsilon, param_dtype=param_dtype)

    def __call__(self, input_ids: jnp.ndarray, attention_mask: jnp.ndarray) -> jnp.ndarray:
        """input_ids, attention_mask [B, S] -> hidden float32 [B, S, d_model]."""
        c = self.config
        s = input_ids.shape[1]
        buckets = relative_position_buckets(s, s, c.relative_attention_num_buckets, c.relative_attention_max_distance)
        pos = jnp.transpose(self.relative_bias[...].astype(jnp.float32)[buckets], (2, 0, 1))[None]  # [1, H, S, S]
        pad = jnp.where(attention_mask.astype(bool), 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :]
        bias = pos + pad
        # The table whole for the lookup (as the LM's; it may be sharded at rest).
        table = constrain(self.embed[...], (None, None))
        x = constrain(table[input_ids].astype(self.dtype), ("batch", "length", "embed"))
        for block in self.blocks:
            x = constrain(block(x, bias), ("batch", "length", "embed"))
        return self.final_norm(x).astype(jnp.float32)
