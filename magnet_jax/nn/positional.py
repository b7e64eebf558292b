"""Sinusoidal positions exactly as audiocraft's `create_sin_embedding`:
phase = pos / max_period ** (i / (half - 1)), embedding = [cos(phase), sin(phase)]."""
from __future__ import annotations

import jax.numpy as jnp


def sin_embedding(positions: jnp.ndarray, dim: int, max_period: float = 10_000.0) -> jnp.ndarray:
    """positions: [..., T] integers -> [..., T, dim] float32."""
    if dim % 2:
        raise ValueError(f"sinusoidal embedding needs an even dim, got {dim}")
    half = dim // 2
    adim = jnp.arange(half, dtype=jnp.float32)
    phase = positions.astype(jnp.float32)[..., None] / (jnp.float32(max_period) ** (adim / (half - 1)))
    return jnp.concatenate([jnp.cos(phase), jnp.sin(phase)], axis=-1)
