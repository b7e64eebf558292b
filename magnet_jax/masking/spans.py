"""Span masks for MAGNeT training and the sampler's per-step span counts.

Training (audiocraft `MagnetSolver`): a row with mask rate r gets u = LUT[round(100 r)] span
starts drawn uniformly without replacement, and each start masks itself and the next L-1
frames, so the expected masked fraction is about r. Spans may overlap/merge, which is why
the table is needed at all (u starts cover fewer than u*L frames).

Sampling (audiocraft `MagnetLMModel._generate_stage`): the number of spans kept masked at
each decoding step of a stage, reproduced bit for bit in float32 like torch does it.
"""
from __future__ import annotations

import functools
import math
import operator

import jax
import jax.numpy as jnp
import numpy as np

from magnet_jax.masking.schedules import Schedule, cosine, get_schedule

NUM_PERCENTS = 101  # LUT entries: mask percentages 0, 1, ..., 100


def _as_int(name: str, value) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int, got {value!r}") from None


def _check_lengths(seq_len, span_len):
    seq_len, span_len = _as_int("seq_len", seq_len), _as_int("span_len", span_len)
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if span_len < 1:
        raise ValueError(f"span_len must be >= 1, got {span_len}")
    if span_len > seq_len:
        raise ValueError(f"span_len must be <= seq_len, got span_len={span_len} > seq_len={seq_len}")
    return seq_len, span_len


@functools.lru_cache(maxsize=64)
def _lut_tuple(seq_len: int, span_len: int) -> tuple:
    t, l = seq_len, span_len
    u = np.arange(t - 1)
    # Mean mask rate with u starts is 1 - C(T-L, u) / C(T, u) (ignoring truncation at the
    # end); the ratio is built as a running product of (T-L-j)/(T-j), in float64 and in the
    # same order as audiocraft, so the searchsorted ties break identically.
    ratios = (t - l - u) / (t - u)
    u2mean = np.concatenate([[0.0], 1.0 - np.cumprod(ratios)])  # index u = 0 .. T-1
    targets = np.arange(NUM_PERCENTS) / 100.0
    return tuple(int(x) for x in np.searchsorted(u2mean, targets, side="left"))


def mask_rate_to_span_starts_lut(seq_len: int, span_len: int) -> np.ndarray:
    """int32 [101]: entry m is the number u of span starts whose expected masked fraction is
    about m/100 (the smallest u with 1 - C(T-L,u)/C(T,u) >= m/100, capped at T).

    Same numbers as audiocraft's `MagnetSolver._calc_mean_maskrate_to_u_LUT`. For span_len == 1
    this is the same formula (u = ceil(T m / 100) up to float rounding); note `span_mask` does
    not use the table for span_len == 1 but masks round(T * rate) tokens, like audiocraft's
    `_non_spans_mask`.
    """
    seq_len, span_len = _check_lengths(seq_len, span_len)
    return np.asarray(_lut_tuple(seq_len, span_len), dtype=np.int32)


def span_mask(key, mask_rates, seq_len: int, span_len: int, lut=None) -> jax.Array:
    """Random span mask, bool [B, T] (True = masked), one mask rate per row.

    span_len > 1: k = max(lut[round(100 rate)], 1) span starts per row, a uniformly random
    k-subset of the positions; each start masks itself and the next span_len - 1 frames
    (cut at the end of the sequence). span_len == 1: exactly max(round(T rate), 1) random
    tokens per row. seq_len / span_len must be static under jit; `lut` defaults to
    `mask_rate_to_span_starts_lut(seq_len, span_len)`.
    """
    seq_len, span_len = _check_lengths(seq_len, span_len)
    rates = jnp.asarray(mask_rates, dtype=jnp.float32)  # float32 like the reference
    if rates.ndim != 1:
        raise ValueError(f"mask_rates must have shape [B], got shape {rates.shape}")
    b = rates.shape[0]

    if span_len == 1:
        k = jnp.maximum(jnp.round(seq_len * rates), 1.0)
    else:
        if lut is None:
            lut = mask_rate_to_span_starts_lut(seq_len, span_len)
        lut = jnp.asarray(lut, dtype=jnp.int32)
        if lut.shape != (NUM_PERCENTS,):
            raise ValueError(f"lut must have shape ({NUM_PERCENTS},), got {lut.shape}")
        percent = jnp.clip(jnp.round(100.0 * rates), 0, NUM_PERCENTS - 1).astype(jnp.int32)
        k = jnp.maximum(lut[percent], 1)
    k = jnp.minimum(k, seq_len).astype(jnp.int32)

    # argsort of iid noise is a uniform random permutation; its first k entries pick k
    # distinct positions, i.e. exactly k starts per row.
    perm = jnp.argsort(jax.random.uniform(key, (b, seq_len)), axis=-1)
    starts = perm < k[:, None]
    if span_len == 1:
        return starts

    # Frame j is masked iff a start lies in (j - L, j]: a windowed count via cumsum.
    c = jnp.cumsum(starts.astype(jnp.int32), axis=-1)
    c_prev = jnp.pad(c, ((0, 0), (span_len, 0)))[:, :seq_len]
    return (c - c_prev) > 0


def _torch_linspace_f32(num_steps: int, fused: bool) -> np.ndarray:
    """torch.linspace(0, 1, num_steps) in float32, element by element as torch's kernels do:
    first half start + step*i, second half end - step*(n-1-i). `fused`: the CUDA kernel, where
    nvcc contracts end - step*k into one fma (a single rounding)."""
    if num_steps == 1:
        return np.zeros(1, np.float32)  # torch fills with `start`
    f32 = np.float32
    step = f32(1.0) / f32(num_steps - 1)
    half = num_steps // 2
    out = np.empty(num_steps, np.float32)
    for i in range(num_steps):
        if i < half:
            out[i] = step * f32(i)
        elif fused:
            out[i] = f32(1.0 - float(step) * (num_steps - 1 - i))  # exact in float64, one rounding
        else:
            out[i] = f32(1.0) - step * f32(num_steps - 1 - i)
    return out


def decoding_mask_rates(num_steps: int, schedule: "str | Schedule" = "cosine",
                        reference_device: str = "cuda") -> np.ndarray:
    """float32 [num_steps]: the sampler's mask rate gamma(t_i) at each step of a stage, as the
    reference computes it (t from torch's float32 linspace; see num_masked_spans_schedule).
    It also sets the classifier-free-guidance coefficient of each step."""
    if reference_device not in ("cuda", "cpu"):
        raise ValueError(f"reference_device must be 'cuda' or 'cpu', got {reference_device!r}")
    t = _torch_linspace_f32(num_steps, fused=reference_device == "cuda")
    fn = get_schedule(schedule)
    if fn is cosine:
        # (t * pi) rounds to float32 first (torch casts the python scalar to the tensor's
        # float32), * 0.5 is exact; numpy's float32 cos is not correctly rounded, so go
        # through float64.
        arg = (t * np.float32(math.pi)) * np.float32(0.5)
        return np.array([math.cos(float(a)) for a in arg], dtype=np.float64).astype(np.float32)
    return np.asarray(fn(t), dtype=np.float32)


def num_masked_spans_schedule(num_steps: int, num_chunks: int, schedule: "str | Schedule" = "cosine",
                              reference_device: str = "cuda") -> np.ndarray:
    """int32 [num_steps]: spans kept masked at each decoding step of one stage.

    audiocraft: for t in torch.linspace(0, 1, steps) (float32): mask_p = cos(t * pi * 0.5)
    (float32), num_masked = max(int(mask_p * num_chunks), 1) with the product in float32 and
    int() truncating. torch's linspace kernel computes the second half as end - step * k; when
    the compiler contracts that into one fused multiply-add (CUDA; also the x86 CPU wheel of
    torch 2.13, checked against torch in tests/test_sampler.py) t is one ulp off the unfused
    value at some steps, which flips a count by one, e.g. at t = 2/3 (cos = 1/2) with
    num_steps = 10 and an even num_chunks. 'cuda' (the default) reproduces the fused kernel,
    'cpu' an unfused scalar one. cos is taken correctly rounded to float32. Other schedules
    are evaluated in float32 on the same t.
    """
    num_steps, num_chunks = _as_int("num_steps", num_steps), _as_int("num_chunks", num_chunks)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if num_chunks < 0:
        raise ValueError(f"num_chunks must be >= 0, got {num_chunks}")
    if reference_device not in ("cuda", "cpu"):
        raise ValueError(f"reference_device must be 'cuda' or 'cpu', got {reference_device!r}")

    mask_p = decoding_mask_rates(num_steps, schedule, reference_device)
    prod = mask_p * np.float32(num_chunks)  # float32 product
    counts = np.trunc(prod.astype(np.float64))
    return np.maximum(counts, 1).astype(np.int32)
