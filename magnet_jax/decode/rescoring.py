"""Rescoring (the paper's Eq. 5): a causal (MusicGen) LM's view of MAGNeT's candidate.

At each decoding step MAGNeT samples a candidate for the masked frames as usual; the
rescorer then reads the whole candidate once, non-autoregressively (teacher-forced, its own
delay pattern and its own text condition), and the sampled tokens' probabilities are mixed,
p = w * p_MAGNeT + (1 - w) * p_rescorer, before the spans to re-mask are scored. Tokens are
still drawn from MAGNeT alone.

Choices the paper leaves open, made here:
- w weighs MAGNeT, as Eq. 5 writes it (the pseudo-code of its Fig. 4 puts w on the rescorer;
  at the default w = 0.5 the two readings agree);
- the rescorer's probabilities are its plain softmax (temperature 1, no guidance: one
  forward at batch B, conditioned on the text);
- codebooks MAGNeT has not generated yet (above the current stage) reach the rescorer as its
  special token, the one its delay pattern uses for cells that are not known.

Every frame's logits come from one causal forward, as audiocraft's
`LMModel.compute_predictions` computes them: the clip is laid out in the delay pattern, the
cell of frame t, codebook k sits at step t + 1 + delay_k and is predicted by the output at
step t + delay_k.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from magnet_jax.config import LMConfig
from magnet_jax.decode.delay_pattern import predicting_steps, to_pattern

DEFAULT_RESCORE_WEIGHT = 0.5  # the paper gives no value; Eq. 5 and its Fig. 4 agree at 0.5


def check_causal(c: LMConfig, what: str = "a rescorer") -> None:
    if not c.causal or len(c.codebook_delays) != c.n_q:
        raise ValueError(f"{what} must be a causal LM with one delay per codebook (a MusicGen checkpoint); "
                         f"this one has causal={c.causal}, codebook_delays={c.codebook_delays}"
                         + (" (a MAGNeT LM)" if not c.causal and not c.codebook_delays else ""))


def check_rescorer(magnet: LMConfig, rescorer: LMConfig) -> None:
    """The rescorer reads MAGNeT's codes: both must model the same codec's codebooks."""
    check_causal(rescorer)
    if magnet.causal:
        raise ValueError("rescoring applies to a MAGNeT (non-causal) LM; this one is causal")
    if (rescorer.n_q, rescorer.card) != (magnet.n_q, magnet.card):
        raise ValueError(f"the rescorer models {rescorer.n_q} codebooks of {rescorer.card} codes and MAGNeT "
                         f"{magnet.n_q} of {magnet.card}: they must share one codec")


def _pattern_hidden(lm, codes, condition, condition_mask, cross_kv=None):
    c = lm.config
    codes = jnp.where(codes >= c.card, c.mask_id, codes)  # not generated yet -> the special token
    return lm.hidden_states(to_pattern(codes, c.codebook_delays, c.mask_id), condition, condition_mask,
                            cross_kv=cross_kv)


def frame_logits_of(lm, hidden: jnp.ndarray, length: int) -> jnp.ndarray:
    """Pattern-step hidden states [B, S, D] -> fp32 logits [B, K, T, card] of every frame."""
    steps = predicting_steps(length, lm.config.codebook_delays)
    return jnp.stack([lm.logits(hidden[:, steps[k]], k) for k in range(lm.config.n_q)], axis=1)


def frame_logits(lm, codes: jnp.ndarray, condition, condition_mask) -> jnp.ndarray:
    """codes [B, K, T] -> fp32 logits [B, K, T, card] of each frame's token given the frames before
    (and the lower codebooks' delayed context), for a causal LM with codebook delays."""
    c = lm.config
    check_causal(c)
    if codes.ndim != 3 or codes.shape[1] != c.n_q:
        raise ValueError(f"codes must be [B, K={c.n_q}, T], got shape {codes.shape}")
    return frame_logits_of(lm, _pattern_hidden(lm, codes, condition, condition_mask), codes.shape[-1])


def token_probabilities(lm, codes: jnp.ndarray, condition, condition_mask, stage: int, *,
                        cross_kv=None) -> jnp.ndarray:
    """[B, T]: the rescorer's probability of codebook `stage`'s tokens in `codes` [B, K, T] (ids >=
    card, e.g. MAGNeT's mask id in codebooks not generated yet, are read as unknown). Only that
    codebook's head runs. `cross_kv`: the condition's keys/values, precomputed once per
    generation (`lm.cross_key_values(condition)`), instead of `condition`."""
    c = lm.config
    hidden = _pattern_hidden(lm, codes, condition, condition_mask, cross_kv)
    logits = lm.logits(hidden[:, predicting_steps(codes.shape[-1], c.codebook_delays)[stage]], stage)  # [B, T, card]
    probs = jax.nn.softmax(logits, axis=-1)
    tokens = jnp.clip(codes[:, stage], 0, c.card - 1).astype(jnp.int32)
    return jnp.take_along_axis(probs, tokens[..., None], axis=-1)[..., 0]


def mix(magnet_probs: jnp.ndarray, rescorer_probs: jnp.ndarray, weight) -> jnp.ndarray:
    """Eq. 5: w * p_MAGNeT + (1 - w) * p_rescorer."""
    w = jnp.asarray(weight, jnp.float32)
    return w * magnet_probs + (1.0 - w) * rescorer_probs
