"""Weight initialisation as audiocraft's LM (`get_init_fn`): std = 1/sqrt(fan_in),
optionally divided by sqrt(2 * depth); 'gaussian' is a normal truncated at 3 std,
'uniform' has the same std."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def lm_init(method: str, fan_in: int, depth_scale=1.0):
    """Returns `init(key, shape, dtype)`; `depth_scale` may be a traced scalar (vmapped layers)."""
    std = 1.0 / math.sqrt(fan_in)
    if method == "gaussian":

        def init(key, shape, dtype=jnp.float32):
            return (jax.random.truncated_normal(key, -3.0, 3.0, shape, jnp.float32) * std * depth_scale).astype(dtype)

    elif method == "uniform":
        bound = math.sqrt(3.0) * std

        def init(key, shape, dtype=jnp.float32):
            return (jax.random.uniform(key, shape, jnp.float32, -bound, bound) * depth_scale).astype(dtype)

    else:
        raise ValueError(f"Unknown weight_init {method!r}; use 'gaussian' or 'uniform'.")
    return init


def torch_linear_default_init(fan_in: int):
    """torch.nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)); audiocraft's packed
    attention in-projection keeps it, since its LM init never visits that weight."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)

    return init


def depth_scale(depthwise_init, layer_index, num_layers):
    """1/sqrt(2 * depth) for audiocraft's 'current' (depth = index + 1) or 'global' rule."""
    if depthwise_init is None:
        return jnp.ones_like(layer_index, dtype=jnp.float32)
    if depthwise_init == "current":
        depth = layer_index.astype(jnp.float32) + 1.0
    elif depthwise_init == "global":
        depth = jnp.full_like(layer_index, num_layers, dtype=jnp.float32)
    else:
        raise ValueError(f"Unknown depthwise_init {depthwise_init!r}; use None, 'current' or 'global'.")
    return 1.0 / jnp.sqrt(2.0 * depth)
