"""One decoding step of one stage (codebook), as a pure function, and its host-side tables.

Mirrors audiocraft's `MagnetLMModel._generate_stage`: re-mask the lowest-confidence spans
(how many: a host table), run the LM once (batch doubled for classifier-free guidance),
guide, sample into the masked frames only, and score the new spans.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from magnet_jax.decode.sampling import sample_tokens
from magnet_jax.decode.selection import least_probable_spans_mask, top_k_mask
from magnet_jax.decode.settings import DecodeKnobs, SamplerSettings
from magnet_jax.masking import decoding_mask_rates, num_masked_spans_schedule

NEVER_REMASK = -1e4  # the reference's score for frames that stay fixed (prompt, unmasked)


@dataclasses.dataclass(frozen=True)
class StageTables:
    """Static per-step tables of one stage, computed on the host exactly as the reference."""

    num_masked: np.ndarray  # int32 [steps]: spans (or tokens) re-masked at each step
    mask_rate: np.ndarray  # float32 [steps]: gamma(t_i), also the CFG interpolation weight
    temp_ratio: np.ndarray  # float32 [steps]: (steps - 1 - i) / steps, the linear annealing
    units: int  # chunks (chunked) or tokens
    prompt_units: int

    @classmethod
    def build(cls, settings: SamplerSettings, steps: int, length: int, prompt_len: int) -> "StageTables":
        if settings.chunked:
            units, prompt_units = length // settings.span_len, prompt_len // settings.span_len
        else:
            units, prompt_units = length, prompt_len
        num = num_masked_spans_schedule(steps, units - prompt_units, settings.schedule)
        rate = decoding_mask_rates(steps, settings.schedule)
        ratio = np.array([(steps - 1 - i) / steps for i in range(steps)], np.float32)
        return cls(num, rate, ratio, units, prompt_units)


@struct.dataclass
class StageState:
    codes: jnp.ndarray  # [B, K, T] int32, mask id where not generated yet
    scores: jnp.ndarray  # [B, units] float32 (higher = less confident = re-masked first)


def initial_stage_state(codes: jnp.ndarray, tables: StageTables) -> StageState:
    b = codes.shape[0]
    scores = jnp.zeros((b, tables.units), jnp.float32).at[:, :tables.prompt_units].set(NEVER_REMASK)
    return StageState(codes=codes, scores=scores)


def decode_step(logits_fn, state: StageState, i, key, knobs: DecodeKnobs, *, stage: int, tables: StageTables,
                settings: SamplerSettings, mask_id: int, prompt: Optional[jnp.ndarray]) -> StageState:
    """One step. `logits_fn(codes [B, K, T])` runs the LM for `stage`: logits [B, T, card], or
    under CFG the pair (text, null text). `i` may be traced."""
    codes = state.codes
    b, _, t = codes.shape
    num = jnp.asarray(tables.num_masked)[i]
    rate = jnp.asarray(tables.mask_rate)[i]
    seq = codes[:, stage]
    if settings.least_probable_spans:
        remask = least_probable_spans_mask(state.scores, num, settings.span_len)
        unit_mask = None
    else:
        unit_mask = top_k_mask(state.scores, num)
        remask = jnp.repeat(unit_mask, settings.span_len, axis=-1) if settings.chunked else unit_mask
    seq = jnp.where(remask, mask_id, seq)
    if prompt is not None and prompt.shape[-1]:
        seq = seq.at[:, :prompt.shape[-1]].set(prompt[:, stage])
    codes = codes.at[:, stage].set(seq)

    logits = logits_fn(codes)
    if settings.cfg:
        cond, uncond = logits
        coef = rate * knobs.max_cfg_coef + (1.0 - rate) * knobs.min_cfg_coef
        logits = uncond + (cond - uncond) * coef
    temperature = knobs.temperature * jnp.asarray(tables.temp_ratio)[i] if settings.anneal_temperature \
        else knobs.temperature
    tokens, conf = sample_tokens(key, logits, temperature, use_sampling=settings.use_sampling,
                                 top_k=settings.top_k, top_p=knobs.top_p)
    was_masked = seq == mask_id
    seq = jnp.where(was_masked, tokens, seq)
    codes = codes.at[:, stage].set(seq)

    if settings.chunked:
        per_chunk = conf.reshape(b, tables.units, settings.span_len)
        if settings.span_scoring == "max":
            scores = 1.0 - per_chunk.max(-1)
        else:
            scores = (-jnp.log(per_chunk)).sum(-1)
        scores = jnp.where(unit_mask, scores, NEVER_REMASK)
    else:
        scores = jnp.where(was_masked, -jnp.log(conf), NEVER_REMASK)
    return StageState(codes=codes, scores=scores.astype(jnp.float32))


def step_key(key: jax.Array, stage: int, i) -> jax.Array:
    """The key of step i of a stage: both drivers derive it the same way."""
    return jax.random.fold_in(jax.random.fold_in(key, stage), i)
