"""Masking: schedules, the mask-rate -> span-starts table, span masks, sampler span counts."""
import bisect
import math
from fractions import Fraction
from math import comb

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magnet_jax.masking import (
    available_schedules,
    get_schedule,
    mask_rate_to_span_starts_lut,
    num_masked_spans_schedule,
    register_schedule,
    schedule_np,
    span_mask,
)
from magnet_jax.masking import schedules as schedules_mod
from magnet_jax.masking.spans import _torch_linspace_f32

BUILTIN = ["cosine", "linear", "square", "sqrt", "cubic"]


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", BUILTIN)
def test_schedule_endpoints_and_monotone(name):
    fn = get_schedule(name)
    # python floats, numpy and jax arrays all work, each staying in its own array module
    assert abs(float(fn(0.0)) - 1.0) < 1e-7 and abs(float(fn(1.0))) < 1e-7
    t = np.linspace(0.0, 1.0, 257)
    y = fn(t)
    assert isinstance(y, np.ndarray) and y.dtype == np.float64
    assert y[0] == pytest.approx(1.0, abs=1e-12) and y[-1] == pytest.approx(0.0, abs=1e-12)
    assert np.all(np.diff(y) < 0)
    assert np.all((y >= -1e-12) & (y <= 1 + 1e-12))
    yj = jax.jit(fn)(jnp.asarray(t, jnp.float32))
    assert isinstance(yj, jax.Array)
    np.testing.assert_allclose(np.asarray(yj), y, atol=1e-6)
    np.testing.assert_array_equal(schedule_np(name, t), y)


def test_cosine_is_the_papers():
    t = np.linspace(0, 1, 11)
    np.testing.assert_allclose(get_schedule("cosine")(t), np.cos(np.pi * t / 2), atol=1e-15)
    np.testing.assert_allclose(get_schedule("sqrt")(t), 1 - np.sqrt(t), atol=1e-15)
    np.testing.assert_allclose(get_schedule("cubic")(t), 1 - t ** 3, atol=1e-15)


def test_schedule_registry():
    assert set(BUILTIN) <= set(available_schedules())
    with pytest.raises(ValueError) as err:
        get_schedule("no-such-schedule")
    for name in BUILTIN:  # the error lists what exists
        assert name in str(err.value)

    def custom(t):
        return 1 - t ** 4

    assert get_schedule(custom) is custom  # user callables pass through
    try:
        register_schedule("test_quartic", custom)
        assert "test_quartic" in available_schedules()
        assert get_schedule("test_quartic") is custom
        with pytest.raises(ValueError, match="already registered"):
            register_schedule("test_quartic", lambda t: 1 - t)
        with pytest.raises(ValueError, match="already registered"):
            register_schedule("cosine", custom)
        register_schedule("test_quartic", get_schedule("linear"), overwrite=True)
        assert get_schedule("test_quartic") is get_schedule("linear")
    finally:
        schedules_mod._REGISTRY.pop("test_quartic", None)
    assert "test_quartic" not in available_schedules()


# ----------------------------------------------------------------------------- LUT


def _lut_loop(T, L):
    """audiocraft's loop, transcribed plainly: running float product, bisect_left."""
    u2mean = [0.0]
    v = (T - L) / float(T)
    for u in range(1, T):
        u2mean.append(1 - v)
        v *= (T - L - u) / (T - u)
    return [bisect.bisect_left(u2mean, m / float(100)) for m in range(101)]


def _ideal_rate(T, L, u):
    """Exact 1 - C(T-L, u) / C(T, u)."""
    return 1 - Fraction(comb(T - L, u), comb(T, u))


def _lut_exact(T, L):
    rates = [_ideal_rate(T, L, u) for u in range(T)]
    out = []
    for m in range(101):
        target = Fraction(m, 100)
        out.append(next((u for u, r in enumerate(rates) if r >= target), T))
    return out


LUT_CASES = [(7, 3), (10, 1), (10, 2), (13, 5), (20, 3), (23, 5), (50, 1), (60, 2), (61, 3), (64, 5), (5, 5), (1, 1)]


@pytest.mark.parametrize("T,L", LUT_CASES)
def test_lut_matches_reference_and_exact_math(T, L):
    lut = mask_rate_to_span_starts_lut(T, L)
    assert lut.dtype == np.int32 and lut.shape == (101,)
    assert lut.tolist() == _lut_loop(T, L)
    assert lut[0] == 0 and np.all(np.diff(lut) >= 0) and lut.max() <= T
    # Exact rational arithmetic agrees except at exact ties (rate(u) == m/100), where the
    # float product lands a hair below and the reference picks u + 1.
    exact = _lut_exact(T, L)
    for m in range(101):
        if lut[m] != exact[m]:
            assert lut[m] == exact[m] + 1, (m, lut[m], exact[m])
            assert abs(float(_ideal_rate(T, L, exact[m])) - m / 100) < 1e-12
        u = int(lut[m])
        if 0 < u < T:  # the defining property: u is the first count reaching m %
            assert float(_ideal_rate(T, L, u)) >= m / 100 - 1e-12
            assert float(_ideal_rate(T, L, u - 1)) < m / 100 + 1e-12


@pytest.mark.parametrize("T,L", [(100, 3), (101, 3), (500, 3), (503, 5), (750, 2), (1500, 3)])
def test_lut_matches_reference_large(T, L):
    assert mask_rate_to_span_starts_lut(T, L).tolist() == _lut_loop(T, L)


def test_lut_argument_errors():
    with pytest.raises(ValueError, match="seq_len must be >= 1, got 0"):
        mask_rate_to_span_starts_lut(0, 1)
    with pytest.raises(ValueError, match="span_len must be >= 1, got -2"):
        mask_rate_to_span_starts_lut(10, -2)
    with pytest.raises(ValueError, match="span_len=11 > seq_len=10"):
        mask_rate_to_span_starts_lut(10, 11)
    with pytest.raises(ValueError, match="seq_len must be an int"):
        mask_rate_to_span_starts_lut(10.5, 3)
    lut = mask_rate_to_span_starts_lut(20, 3)
    lut[:] = 0  # callers get a copy, not the cached table
    assert mask_rate_to_span_starts_lut(20, 3)[50] > 0


# ----------------------------------------------------------------------------- span_mask


def _runs(row):
    """(start, length) of the maximal runs of True in a 1-D bool array."""
    padded = np.concatenate([[False], row, [False]]).astype(np.int8)
    d = np.diff(padded)
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return list(zip(starts, ends - starts))


def test_span_mask_basic_properties():
    T, L, B = 64, 3, 256
    rates = jnp.linspace(0.0, 1.0, B)
    key = jax.random.PRNGKey(0)
    m = span_mask(key, rates, T, L)
    assert m.shape == (B, T) and m.dtype == jnp.bool_
    jitted = jax.jit(span_mask, static_argnums=(2, 3))
    np.testing.assert_array_equal(np.asarray(jitted(key, rates, T, L)), np.asarray(m))
    np.testing.assert_array_equal(np.asarray(span_mask(key, rates, T, L)), np.asarray(m))
    assert not np.array_equal(np.asarray(span_mask(jax.random.PRNGKey(1), rates, T, L)), np.asarray(m))
    m = np.asarray(m)
    assert np.all(m.sum(1) >= 1)  # rate 0 still masks one span (k clamped to >= 1)
    lut = mask_rate_to_span_starts_lut(T, L)
    ks = np.maximum(lut[np.round(100 * np.asarray(rates, np.float32)).astype(int)], 1)
    for row, k in zip(m, ks):
        runs = _runs(row)
        # every run is a union of whole spans, so only a run cut by the end can be shorter
        assert all(n >= L for s, n in runs if s + n < T)
        assert len(runs) <= k and row.sum() <= k * L


def test_span_mask_explicit_lut_and_jit_closure():
    T, L = 50, 5
    lut = mask_rate_to_span_starts_lut(T, L)
    rates = jnp.full((8,), 0.4)
    key = jax.random.PRNGKey(3)
    a = span_mask(key, rates, T, L)
    b = jax.jit(lambda k, r: span_mask(k, r, T, L, lut))(key, rates)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="mask_rates must have shape"):
        span_mask(key, jnp.zeros((2, 3)), T, L)
    with pytest.raises(ValueError, match="lut must have shape"):
        span_mask(key, rates, T, L, lut[:50])
    with pytest.raises(ValueError, match="span_len must be >= 1, got 0"):
        span_mask(key, rates, T, 0)


def test_token_mask_counts_are_exact():
    T, B = 101, 512
    rates = jax.random.uniform(jax.random.PRNGKey(5), (B,))
    m = np.asarray(span_mask(jax.random.PRNGKey(6), rates, T, 1))
    r32 = np.asarray(rates, np.float32)
    want = np.maximum(np.round(np.float32(T) * r32), 1).astype(int)  # round half to even, like torch
    np.testing.assert_array_equal(m.sum(1), want)


def _expected_masked_fraction(T, L, k):
    """Exact E[masked fraction] for k distinct uniform starts, spans cut at the end: frame j
    is unmasked iff none of the min(j+1, L) positions that could cover it is a start."""
    if k >= T:
        return 1.0
    unmasked = sum(Fraction(comb(T - min(j + 1, L), k), comb(T, k)) for j in range(T))
    return float(1 - unmasked / T)


RATES = (0.1, 0.3, 0.5, 0.8, 0.95)


@pytest.mark.parametrize("T", [100, 101, 500])
@pytest.mark.parametrize("L", [1, 3, 5])
def test_span_mask_mean_rate(T, L):
    """Empirical masked fraction over 4096 rows per rate vs the exact expectation of the
    audiocraft procedure (tolerance: 5 standard errors), and vs the requested rate (within
    the LUT's discretisation step + the end-truncation loss)."""
    per_rate = 4096
    rates = np.repeat(np.asarray(RATES, np.float32), per_rate)
    m = np.asarray(span_mask(jax.random.PRNGKey(T * 10 + L), jnp.asarray(rates), T, L))
    frac = m.reshape(len(RATES), per_rate, T).mean(-1)  # per-row masked fraction
    lut = mask_rate_to_span_starts_lut(T, L)
    for i, r in enumerate(RATES):
        r32 = np.float32(r)
        if L == 1:
            k = max(int(np.round(np.float32(T) * r32)), 1)
        else:
            k = max(int(lut[int(np.round(np.float32(100) * r32))]), 1)
        expect = _expected_masked_fraction(T, L, k)
        emp = frac[i].mean()
        se = frac[i].std() / math.sqrt(per_rate)
        tol = 5 * se + 1e-4
        assert abs(emp - expect) <= tol, (T, L, r, k, emp, expect, tol)

        # The test has teeth: an off-by-one dilation or k taken as the number of masked
        # frames instead of span starts would be many tolerances away.
        if L > 1:
            assert abs(_expected_masked_fraction(T, L - 1, k) - expect) > 4 * tol
            assert abs(_expected_masked_fraction(T, L + 1, k) - expect) > 4 * tol
            k_frames = max(int(round(T * r)), 1)
            if k_frames < T:
                assert abs(_expected_masked_fraction(T, L, k_frames) - expect) > 4 * tol

        # vs the requested rate: the LUT overshoots by at most one start's worth, and spans
        # cut at the end lose at most (L - 1) / T.
        if L == 1:
            slack = 0.5 / T
        else:
            step = float(_ideal_rate(T, L, k) - _ideal_rate(T, L, k - 1))
            slack = step + (L - 1) / T
        assert abs(emp - r) <= slack + tol, (T, L, r, emp, slack)


def test_span_mask_mean_rate_long_sequence_is_close():
    """T=500, L=3 (10 s at 50 Hz, MAGNeT's setup): the mean hits the requested rate to 0.006."""
    T, L, per_rate = 500, 3, 4096
    rates = np.repeat(np.asarray(RATES, np.float32), per_rate)
    m = np.asarray(span_mask(jax.random.PRNGKey(11), jnp.asarray(rates), T, L))
    for i, r in enumerate(RATES):
        assert abs(m[i * per_rate:(i + 1) * per_rate].mean() - r) < 0.006


# ----------------------------------------------------------------------------- sampler counts


def _reference_counts(steps, n, fused=True, schedule="cosine"):
    """audiocraft `_generate_stage`, transcribed without torch:
        for t in torch.linspace(0, 1, steps):          # float32
            mask_p = torch.cos(t * math.pi * 0.5)      # float32
            num = max(int((mask_p * n).item()), 1)     # float32 product, int() truncates
    torch.linspace (float32): step = 1/(steps-1); i < steps//2: step*i, else
    1 - step*(steps-1-i), the latter one fused multiply-add on CUDA."""
    f32 = np.float32
    if steps == 1:
        ts = [f32(0)]
    else:
        step = f32(1) / f32(steps - 1)
        ts = []
        for i in range(steps):
            if i < steps // 2:
                ts.append(f32(step * f32(i)))
            elif fused:
                exact = 1 - Fraction(float(step)) * (steps - 1 - i)
                ts.append(f32(float(exact)))
            else:
                ts.append(f32(f32(1) - f32(step * f32(steps - 1 - i))))
    out = []
    for t in ts:
        if schedule == "cosine":
            arg = f32(f32(t * f32(math.pi)) * f32(0.5))
            mask_p = f32(math.cos(float(arg)))
        else:
            mask_p = f32(f32(1) - t)
        out.append(max(int(float(f32(mask_p * f32(n)))), 1))
    return out


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7, 10, 13, 16, 20, 25, 40, 64])
@pytest.mark.parametrize("n", [1, 2, 7, 50, 83, 166, 250, 500, 1499])
def test_num_masked_spans_matches_reference(steps, n):
    got = num_masked_spans_schedule(steps, n)
    assert got.dtype == np.int32 and got.shape == (steps,)
    assert got.tolist() == _reference_counts(steps, n)
    assert num_masked_spans_schedule(steps, n, reference_device="cpu").tolist() == _reference_counts(
        steps, n, fused=False)
    assert num_masked_spans_schedule(steps, n, "linear").tolist() == _reference_counts(
        steps, n, schedule="linear")
    assert got[0] == max(n, 1)  # gamma(0) = 1: everything masked at the first step
    assert got[-1] == 1 or steps == 1
    assert np.all(np.diff(got) <= 0) and got.min() >= 1


def test_num_masked_spans_cuda_cpu_divergence():
    """torch's float32 linspace(0, 1, 10)[6] is 2/3 rounded differently on CUDA (fma) and CPU,
    and cos(pi/3) = 1/2 lands on either side of 0.5, so even chunk counts differ by one."""
    assert float(_torch_linspace_f32(10, fused=True)[6]) == 0.6666666865348816
    assert float(_torch_linspace_f32(10, fused=False)[6]) == 0.6666666269302368
    cuda = num_masked_spans_schedule(10, 166)
    cpu = num_masked_spans_schedule(10, 166, reference_device="cpu")
    assert cuda[6] == 82 and cpu[6] == 83
    np.testing.assert_array_equal(np.delete(cuda, 6), np.delete(cpu, 6))
    # 20 steps (stage 0 default) does not hit the tie
    np.testing.assert_array_equal(num_masked_spans_schedule(20, 166),
                                  num_masked_spans_schedule(20, 166, reference_device="cpu"))


def test_num_masked_spans_errors():
    with pytest.raises(ValueError, match="num_steps must be >= 1, got 0"):
        num_masked_spans_schedule(0, 10)
    with pytest.raises(ValueError, match="num_chunks must be >= 0, got -1"):
        num_masked_spans_schedule(5, -1)
    with pytest.raises(ValueError, match="reference_device"):
        num_masked_spans_schedule(5, 10, reference_device="tpu")
    with pytest.raises(ValueError, match="unknown masking schedule"):
        num_masked_spans_schedule(5, 10, "nope")
    assert num_masked_spans_schedule(4, 0).tolist() == [1, 1, 1, 1]
