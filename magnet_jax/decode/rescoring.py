"""A causal (MusicGen) LM's view of a whole clip, the rescorer of the paper's Eq. 5.

MAGNeT's rescoring runs an autoregressive LM once, non-autoregressively, over a decoding
step's candidate and mixes the sampled tokens' probabilities under both models. This module
gives the rescorer's side: every frame's logits in one causal forward, as audiocraft's
`LMModel.compute_predictions` computes them (the clip laid out in the delay pattern; the cell
of frame t, codebook k sits at step t + 1 + delay_k and is predicted by the output at step
t + delay_k).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from magnet_jax.decode.delay_pattern import to_pattern


def frame_logits(lm, codes: jnp.ndarray, condition, condition_mask) -> jnp.ndarray:
    """codes [B, K, T] -> fp32 logits [B, K, T, card] of each frame's token given the frames before
    (and the lower codebooks' delayed context), for a causal LM with codebook delays."""
    c = lm.config
    if not c.causal or len(c.codebook_delays) != c.n_q:
        raise ValueError("a rescorer must be a causal LM with one delay per codebook (a MusicGen checkpoint); "
                         f"this one has causal={c.causal}, codebook_delays={c.codebook_delays}")
    if codes.ndim != 3 or codes.shape[1] != c.n_q:
        raise ValueError(f"codes must be [B, K={c.n_q}, T], got shape {codes.shape}")
    delays = np.asarray(c.codebook_delays)
    logits = lm(to_pattern(codes, c.codebook_delays, c.mask_id), condition, condition_mask)  # [B, K, S, card]
    steps = np.arange(codes.shape[-1])[None, :] + delays[:, None]  # [K, T]
    return logits[:, np.arange(c.n_q)[:, None], steps]


def token_probabilities(lm, codes: jnp.ndarray, condition, condition_mask, stage: int) -> jnp.ndarray:
    """[B, T]: the rescorer's probability of codebook `stage`'s tokens in `codes`."""
    probs = jax.nn.softmax(frame_logits(lm, codes, condition, condition_mask)[:, stage], axis=-1)
    return jnp.take_along_axis(probs, codes[:, stage, :, None].astype(jnp.int32), axis=-1)[..., 0]
