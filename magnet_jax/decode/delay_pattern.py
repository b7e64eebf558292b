"""MusicGen's delay pattern: codebook k of frame t sits at sequence step t + 1 + delay_k.

Step 0 holds no frame (the LM reads it as the start), so a clip of T frames is a sequence
of S = T + max(delays) + 1 steps; a step/codebook cell outside [0, T) frames holds the
special token (`card`). This is the layout of audiocraft's `DelayedPatternProvider`.
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np


def sequence_steps(length: int, delays: Sequence[int]) -> int:
    return length + max(delays) + 1


def predicting_steps(length: int, delays: Sequence[int]) -> np.ndarray:
    """int [K, T]: the step whose output predicts frame t of codebook k (the step before its cell)."""
    return np.arange(length)[None, :] + np.asarray(delays)[:, None]


def frame_of_cell(length: int, delays: Sequence[int]) -> np.ndarray:
    """int [K, S]: the frame each cell holds, or -1 where it holds the special token."""
    s = np.arange(sequence_steps(length, delays))
    t = s[None, :] - 1 - np.asarray(delays)[:, None]
    return np.where((t >= 0) & (t < length), t, -1)


def to_pattern(codes: jnp.ndarray, delays: Sequence[int], special: int) -> jnp.ndarray:
    """codes [B, K, T] -> sequence [B, K, S]."""
    frames = frame_of_cell(codes.shape[-1], delays)
    k = np.arange(len(delays))[:, None]
    cells = codes[:, k, np.maximum(frames, 0)]
    return jnp.where(jnp.asarray(frames >= 0)[None], cells, special)


def from_pattern(sequence: jnp.ndarray, delays: Sequence[int], length: int) -> jnp.ndarray:
    """sequence [B, K, S] -> codes [B, K, length]."""
    steps = np.arange(length)[None, :] + 1 + np.asarray(delays)[:, None]  # [K, T]
    return sequence[:, np.arange(len(delays))[:, None], steps]
