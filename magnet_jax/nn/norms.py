"""LayerNorm with scale and bias, statistics in fp32 (torch.nn.LayerNorm semantics)."""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx


class LayerNorm(nnx.Module):
    def __init__(self, dim: int, *, eps: float = 1e-5, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        del rngs
        self.eps, self.dtype = eps, dtype
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=("embed",), eager_sharding=False)
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype), out_sharding=("embed",), eager_sharding=False)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jnp.reciprocal(jnp.sqrt(var + self.eps))
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)
