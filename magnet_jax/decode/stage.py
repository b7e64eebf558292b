"""One decoding step of one stage (codebook), as a pure function, and its host-side tables.

Mirrors audiocraft's `MagnetLMModel._generate_stage`: re-mask the lowest-confidence spans
(how many: a host table), run the LM once (batch doubled for classifier-free guidance),
guide, sample into the masked frames only, and score the new spans. The reference computes
the last layer, the head and the sampling at every position; here they run only at the
positions whose sample or confidence is used, at the smallest of a few static sizes that
holds them (the keys still see every frame).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from magnet_jax.decode.rescoring import mix
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


    @classmethod
    def concatenate(cls, stages) -> "StageTables":
        """Several stages' tables end to end (stages of the same sequence: same units)."""
        return cls(np.concatenate([t.num_masked for t in stages]), np.concatenate([t.mask_rate for t in stages]),
                   np.concatenate([t.temp_ratio for t in stages]), stages[0].units, stages[0].prompt_units)


@struct.dataclass
class StageState:
    codes: jnp.ndarray  # [B, K, T] int32, mask id where not generated yet
    scores: jnp.ndarray  # [B, units] float32 (higher = less confident = re-masked first)


def initial_stage_state(codes: jnp.ndarray, tables: StageTables) -> StageState:
    b = codes.shape[0]
    scores = jnp.zeros((b, tables.units), jnp.float32).at[:, :tables.prompt_units].set(NEVER_REMASK)
    return StageState(codes=codes, scores=scores)


@dataclasses.dataclass(frozen=True)
class StepModel:
    """The LM forward of one stage, split as `MagnetLM.decode_prefix` / `decode_logits_at`:
    prefix(codes [B, K, T]) -> what every position needs; logits_at(prefix, positions [B, C],
    guidance) -> logits [B, C, card] there (guided by the coefficient `guidance` under CFG,
    else None)."""

    prefix: Callable
    logits_at: Callable


def query_sizes(length: int, buckets: int) -> list:
    """The static numbers of positions a step may compute: `buckets` sizes up to `length`,
    evenly spaced, multiples of 8 (each one a compiled branch)."""
    sizes = {min(length, -(-(length * k // buckets) // 8) * 8) for k in range(1, buckets + 1)}
    return sorted(sizes | {length})


def decode_step(model: StepModel, state: StageState, i, key, knobs: DecodeKnobs, *, stage, tables: StageTables,
                settings: SamplerSettings, mask_id: int, prompt: Optional[jnp.ndarray],
                rescore: Optional[Callable] = None) -> StageState:
    """One step. `model` runs the LM for `stage` (see StepModel). `i` (the index into `tables`) and
    `stage` may be traced.

    rescore(codes [B, K, T]) -> [B, T]: a rescorer's probability of codebook `stage`'s tokens
    in the candidate (decode/rescoring.py); mixed into the confidence by Eq. 5 with weight
    `knobs.rescore_weight` before the spans are scored."""
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
    was_masked = seq == mask_id
    # Where this step's samples or confidences are used: the masked frames, and with chunked
    # scoring every frame of a re-masked chunk (one may be a prompt frame).
    needed = (was_masked | remask) if settings.chunked else was_masked

    prefix = model.prefix(codes)
    temperature = knobs.temperature * jnp.asarray(tables.temp_ratio)[i] if settings.anneal_temperature \
        else knobs.temperature
    uniform = jax.random.uniform(key, (b, t), jnp.float32)
    order = jnp.argsort(~needed, axis=-1, stable=True).astype(jnp.int32)  # each row's needed positions first
    rows = jnp.arange(b)[:, None]
    coef = rate * knobs.max_cfg_coef + (1.0 - rate) * knobs.min_cfg_coef  # classifier-free guidance

    def sample_first(size):
        def run():
            positions = order[:, :size]
            logits = model.logits_at(prefix, positions, coef if settings.cfg else None)
            tok, cf = sample_tokens(key, logits, temperature, use_sampling=settings.use_sampling,
                                    top_k=settings.top_k, top_p=knobs.top_p,
                                    uniform=jnp.take_along_axis(uniform, positions, axis=1))
            return (jnp.zeros((b, t), jnp.int32).at[rows, positions].set(tok),
                    jnp.ones((b, t), jnp.float32).at[rows, positions].set(cf))
        return run

    sizes = query_sizes(t, settings.query_buckets)
    count = needed.sum(-1).max()
    branch = jnp.searchsorted(jnp.asarray(sizes), count)  # the smallest size that holds them all
    tokens, conf = jax.lax.switch(branch, [sample_first(n) for n in sizes])
    seq = jnp.where(was_masked, tokens, seq)
    codes = codes.at[:, stage].set(seq)
    steps = len(tables.num_masked)
    if rescore is not None and steps > 1:  # the last step's scores are never used: no rescoring there
        conf = jax.lax.cond(i < steps - 1,
                            lambda c: jnp.where(needed, mix(c, rescore(codes), knobs.rescore_weight), c),
                            lambda c: c, conf)

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
