"""Audio longer than the trained segment: windows of `window` frames, each continuing the
tail of the previous one (its last `overlap` frames are the next window's frozen prompt).

Every window after the first has the same shapes (window length, overlap prompt), so the
whole piece needs two compiled programs whatever its length.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from magnet_jax.decode.sampler import MagnetSampler, output_length
from magnet_jax.decode.settings import DecodeKnobs, SamplerSettings


def generate_long(sampler: MagnetSampler, condition, condition_mask, key, settings: SamplerSettings,
                  knobs: Optional[DecodeKnobs] = None, *, total_length: int, window: int, overlap: int,
                  prompt: Optional[jnp.ndarray] = None,
                  on_window: Optional[Callable[[int, jnp.ndarray], None]] = None,
                  progress: Optional[Callable[[int, int], None]] = None, rescore_condition=None) -> jnp.ndarray:
    """codes [B, K, total_length].

    window: frames per generation (at most what the model was trained on); overlap: frames
    of context carried into the next window (0 < overlap < window). `prompt` optionally
    continues given audio codes. `on_window(i, codes_so_far)` is called after each window,
    `progress(done, total)` after every decoding step of every window. `rescore_condition`: the
    rescorer's text condition, for a sampler with a rescorer.
    """
    step = output_length(settings, window)
    if step != window:
        raise ValueError(f"window={window} must be a multiple of span_len={settings.span_len} "
                         f"(the sampler would trim it to {step})")
    if not 0 < overlap < window:
        raise ValueError(f"overlap must be in (0, window={window}), got {overlap}")
    if prompt is not None and prompt.shape[-1] >= window:
        raise ValueError(f"the prompt ({prompt.shape[-1]} frames) must be shorter than the window ({window})")
    windows = 1 + -(-max(0, total_length - window) // (window - overlap))

    def window_progress(index):
        if progress is None:
            return None
        return lambda done, total: progress(index * total + done, windows * total)

    codes = sampler.generate(condition, condition_mask, jax.random.fold_in(key, 0), settings, knobs,
                             length=window, prompt=prompt, progress=window_progress(0), rescore_condition=rescore_condition)
    index = 0
    if on_window is not None:
        on_window(index, codes)
    while codes.shape[-1] < total_length:
        index += 1
        tail = codes[..., -overlap:]
        new = sampler.generate(condition, condition_mask, jax.random.fold_in(key, index), settings, knobs,
                               length=window, prompt=tail, progress=window_progress(index),
                               rescore_condition=rescore_condition)
        codes = jnp.concatenate([codes, new[..., overlap:]], axis=-1)
        if on_window is not None:
            on_window(index, codes)
    return codes[..., :total_length]
