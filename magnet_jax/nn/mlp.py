"""The transformer feed-forward block: linear -> GELU (exact, erf) -> linear."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from magnet_jax.nn.linear import Dense
from magnet_jax.parallel.logical import constrain



def gelu_erf(x):
    """torch's exact GELU formula, x / 2 * (1 + erf(x / sqrt 2)); XLA's erf is about half the
    cost of the erfc that jax.nn.gelu(approximate=False) evaluates on CPU."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(1.0 / math.sqrt(2.0), x.dtype)))


_ACTIVATIONS = {
    "gelu": gelu_erf,
    "relu": jax.nn.relu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


class FeedForward(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, activation: str, use_bias: bool, init_in, init_out,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        if activation not in _ACTIVATIONS:
            raise ValueError(f"Unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}.")
        self.activation = activation
        common = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.linear1 = Dense((dim,), (hidden,), in_axes=("embed",), out_axes=("mlp",), kernel_init=init_in, **common)
        self.linear2 = Dense((hidden,), (dim,), in_axes=("mlp",), out_axes=("embed",), kernel_init=init_out, **common)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        h = _ACTIVATIONS[self.activation](self.linear1(x))
        h = constrain(h, ("batch", "length", "mlp"))
        return self.linear2(h)
