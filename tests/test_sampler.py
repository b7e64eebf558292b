"""The compiled MAGNeT sampler against a numpy transcription of audiocraft's decoding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from magnet_jax.config import LMConfig, MeshConfig
from magnet_jax.decode.sampler import MagnetSampler
from magnet_jax.decode.selection import least_probable_spans_mask
from magnet_jax.decode.settings import DecodeKnobs, SamplerSettings
from magnet_jax.decode.stage import StageTables, query_sizes
from magnet_jax.models.magnet_lm import MagnetLM
from magnet_jax.parallel.mesh import make_mesh
from tests.reference import magnet_decoding as ref
from tests.reference import require

CFG = LMConfig(n_q=4, card=32, dim=32, num_heads=4, num_layers=2, subcodes_context=3)
STEPS = (6, 3, 3, 2)


@pytest.fixture(scope="module")
def lm():
    return MagnetLM(CFG, rngs=nnx.Rngs(3))


@pytest.fixture(scope="module")
def sampler(lm):
    return MagnetSampler(lm)


def _condition(b=2, s=5, seed=1):
    cond = jax.random.normal(jax.random.key(seed), (b, s, CFG.dim))
    mask = jnp.ones((b, s), bool).at[0, 3:].set(False)
    return cond * mask[..., None], mask


def _ref_logits_fn(lm, cond, mask, cfg):
    if cfg:
        cond = jnp.concatenate([cond, jnp.zeros_like(cond)])
        mask = jnp.concatenate([mask, jnp.zeros_like(mask)])
    fwd = nnx.jit(lambda m, c, s: m(c, cond, mask, stage=s, stage_logits_only=True), static_argnums=2)
    return lambda codes, stage: fwd(lm, jnp.asarray(codes, jnp.int32), stage)


def test_span_counts_equal_reference_formula():
    """Every count of every step, for step counts 1..64 and 1..600 spans to generate (torch's
    own float32 linspace and cos, as the reference computes them)."""
    require("torch")
    for steps in list(range(1, 65)):
        schedule = ref.step_schedule(steps)
        rates = np.array([float(mask_p) for _, mask_p in schedule], np.float32)
        for n in range(1, 601):
            expected = [max(int((mask_p * n).item()), 1) for _, mask_p in schedule]
            tables = StageTables.build(SamplerSettings(decoding_steps=(steps,)), steps, 3 * n, 0)
            assert tables.num_masked.tolist() == expected, (steps, n)
        # the guidance weights agree to the ulp (torch's vectorised cos is not correctly rounded)
        np.testing.assert_allclose(tables.mask_rate, rates, rtol=2e-7, atol=0)


# Every pair of values of two settings appears in some case (arrangement x scoring x CFG x prompt,
# length a multiple of span_len or not): each case compiles its own sampler, about 20 s.
CASES = [
    dict(span_arrangement="nonoverlap", span_scoring="max", cfg=True, prompt=0, length=30),
    dict(span_arrangement="nonoverlap", span_scoring="prod", cfg=False, prompt=6, length=30),
    dict(span_arrangement="nonoverlap", span_scoring="max", cfg=True, prompt=7, length=31),
    dict(span_arrangement="stride1", span_scoring="max", cfg=False, prompt=5, length=30),
    dict(span_arrangement="stride1", span_scoring="prod", cfg=True, prompt=4, length=31),
    dict(span_arrangement="stride1", span_scoring="prod", cfg=False, prompt=0, length=31),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_greedy_equals_reference_transcription(lm, sampler, case):
    require("torch")
    cond, mask = _condition()
    length, plen = case["length"], case["prompt"]
    prompt = None
    if plen:
        prompt = jax.random.randint(jax.random.key(7), (2, CFG.n_q, plen), 0, CFG.card)
    settings = SamplerSettings(decoding_steps=STEPS, span_len=3, span_scoring=case["span_scoring"],
                               span_arrangement=case["span_arrangement"], use_sampling=False, cfg=case["cfg"])
    knobs = DecodeKnobs.create(temperature=3.0, max_cfg_coef=10.0, min_cfg_coef=1.0, top_p=0.0)
    got = sampler.generate(cond, mask, jax.random.key(0), settings, knobs, length=length, prompt=prompt)
    counts = []
    expect = ref.generate_greedy(
        _ref_logits_fn(lm, cond, mask, case["cfg"]), batch=2, n_q=CFG.n_q, length=length, mask_id=CFG.mask_id,
        span_len=3, decoding_steps=STEPS, prompt=None if prompt is None else np.asarray(prompt), cfg=case["cfg"],
        scoring=case["span_scoring"], arrangement=case["span_arrangement"], counts_log=counts)
    np.testing.assert_array_equal(np.asarray(got), expect)
    assert not (np.asarray(got) == CFG.mask_id).any()
    if prompt is not None:
        np.testing.assert_array_equal(np.asarray(got)[..., :plen], np.asarray(prompt))
    expected_len = (length // 3) * 3 if case["span_arrangement"] == "nonoverlap" else length
    assert got.shape == (2, CFG.n_q, expected_len)


def test_stepwise_driver_equals_compiled_driver(sampler):
    cond, mask = _condition()
    settings = SamplerSettings(decoding_steps=STEPS, use_sampling=True)
    knobs = DecodeKnobs.create(temperature=2.0, top_p=0.9)
    key = jax.random.key(11)
    fused = sampler.generate(cond, mask, key, settings, knobs, length=30)
    seen = []
    for stage, step, codes in sampler.generate_stepwise(cond, mask, key, settings, knobs, length=30,
                                                        progress=lambda i, n: seen.append((i, n))):
        if step == STEPS[stage] - 1:  # streaming: stage k is complete once its last step has run
            assert not (np.asarray(codes)[:, :stage + 1] == CFG.mask_id).any()
    np.testing.assert_array_equal(np.asarray(codes), np.asarray(fused))
    assert seen == [(i + 1, sum(STEPS)) for i in range(sum(STEPS))]


def test_progress_comes_from_inside_the_one_program(sampler):
    """A progress listener changes neither the codes nor the dispatch: one call of the fused
    program, every step reported from inside it."""
    cond, mask = _condition()
    settings = SamplerSettings(decoding_steps=STEPS, use_sampling=True)
    knobs = DecodeKnobs.create(temperature=2.0, top_p=0.9)
    key = jax.random.key(12)
    plain = sampler.generate(cond, mask, key, settings, knobs, length=30)
    seen = []
    steps_before = sampler._step_jit._cache_size()
    reported = sampler.generate(cond, mask, key, settings, knobs, length=30, progress=lambda i, n: seen.append((i, n)))
    np.testing.assert_array_equal(np.asarray(reported), np.asarray(plain))
    assert sorted(seen) == [(i + 1, sum(STEPS)) for i in range(sum(STEPS))]
    assert sampler._step_jit._cache_size() == steps_before  # no step-wise dispatch


def test_sampling_same_seed_same_codes_different_seed_differs(sampler):
    cond, mask = _condition()
    settings = SamplerSettings(decoding_steps=STEPS, top_k=5)
    a = sampler.generate(cond, mask, jax.random.key(1), settings, length=30)
    b = sampler.generate(cond, mask, jax.random.key(1), settings, length=30)
    c = sampler.generate(cond, mask, jax.random.key(2), settings, length=30)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (np.asarray(a) != np.asarray(c)).any()


def test_traced_knobs_do_not_recompile(sampler):
    cond, mask = _condition()
    settings = SamplerSettings(decoding_steps=(2, 1, 1, 1))
    before = sampler._generate_jit._cache_size()
    for temp, cfg_max, top_p in [(3.0, 10.0, 0.9), (1.0, 3.0, 0.5), (0.5, 1.0, 0.0)]:
        sampler.generate(cond, mask, jax.random.key(0), settings,
                         DecodeKnobs.create(temperature=temp, max_cfg_coef=cfg_max, top_p=top_p), length=30)
    assert sampler._generate_jit._cache_size() == before + 1


def test_least_probable_spans_equals_reference_search():
    rng = np.random.default_rng(0)
    for trial in range(30):
        t = int(rng.choice([12, 25, 37]))  # few shapes: few compilations
        scores = rng.exponential(size=(3, t)).astype(np.float32)
        scores[:, : int(rng.integers(0, t // 2))] = -1e4  # fixed frames, as after a step
        target = int(rng.integers(1, t))
        got = np.asarray(least_probable_spans_mask(jnp.asarray(scores), target, 3))
        for b in range(3):
            np.testing.assert_array_equal(got[b], ref.least_probable_spans(scores[b], target, 3), err_msg=f"{trial}")


def test_batch_sharded_over_mesh_equals_single_device(lm):
    cond, mask = _condition(b=3)
    settings = SamplerSettings(decoding_steps=STEPS, use_sampling=False)
    single = MagnetSampler(lm).generate(cond, mask, jax.random.key(0), settings, length=30)
    mesh = make_mesh(MeshConfig(data=4, fsdp=1, tensor=2), devices=jax.devices()[:8])
    sharded = MagnetSampler(lm, mesh=mesh, rules=MeshConfig().rules)
    got = sharded.generate(cond, mask, jax.random.key(0), settings, length=30)  # batch 3 padded to 4
    np.testing.assert_array_equal(np.asarray(got), np.asarray(single))


def test_bad_inputs_are_clear_errors(sampler):
    cond, mask = _condition()
    settings = SamplerSettings(decoding_steps=STEPS)
    with pytest.raises(ValueError, match="one step count per codebook"):
        sampler.generate(cond, mask, jax.random.key(0), SamplerSettings(decoding_steps=(2, 2)), length=30)
    with pytest.raises(ValueError, match="shorter than length"):
        sampler.generate(cond, mask, jax.random.key(0), settings, length=30,
                         prompt=jnp.zeros((2, 4, 30), jnp.int32))
    with pytest.raises(ValueError, match=r"\[B, S, 32\]"):
        sampler.generate(cond[..., :8], mask, jax.random.key(0), settings, length=30)
    with pytest.raises(ValueError, match="span_arrangement"):
        SamplerSettings(span_arrangement="overlap")
    with pytest.raises(ValueError, match="at most 1000 steps per codebook"):
        SamplerSettings(decoding_steps=(1_000_000, 1, 1, 1))
    for bad, match in [(dict(temperature=-0.5), "temperature"), (dict(top_p=1.01), "top_p"),
                       (dict(min_cfg_coef=float("inf")), "finite")]:
        with pytest.raises(ValueError, match=match):
            DecodeKnobs.create(**bad)
    # traced knobs are not checked (and not refused) at trace time
    jax.jit(lambda t: DecodeKnobs.create(temperature=t).temperature)(jnp.float32(1.0))


def test_long_form_generation_continues_windows(sampler):
    from magnet_jax.decode.long_form import generate_long

    cond, mask = _condition()
    settings = SamplerSettings(decoding_steps=(3, 2, 2, 2), use_sampling=False)
    key = jax.random.key(4)
    before = sampler._generate_jit._cache_size()
    windows = []
    seen = []
    codes = generate_long(sampler, cond, mask, key, settings, total_length=75, window=30, overlap=9,
                          on_window=lambda i, c: windows.append(np.asarray(c)), progress=lambda i, n: seen.append((i, n)))
    assert sorted(seen) == [(i + 1, 4 * 9) for i in range(4 * 9)]  # 4 windows of 9 steps, counted as one run
    assert sampler._generate_jit._cache_size() - before <= 2  # one program per window shape
    assert codes.shape == (2, CFG.n_q, 75) and not (np.asarray(codes) == CFG.mask_id).any()
    first = sampler.generate(cond, mask, jax.random.fold_in(key, 0), settings, length=30)
    np.testing.assert_array_equal(np.asarray(codes)[..., :30], np.asarray(first))
    # Window 1 continues the last 9 frames of window 0 (they are its frozen prompt).
    second = sampler.generate(cond, mask, jax.random.fold_in(key, 1), settings, length=30,
                              prompt=jnp.asarray(windows[0][..., -9:]))
    np.testing.assert_array_equal(np.asarray(codes)[..., 21:51], np.asarray(second))
    assert [w.shape[-1] for w in windows] == [30, 51, 72, 93]
    with pytest.raises(ValueError, match="multiple of span_len"):
        generate_long(sampler, cond, mask, key, settings, total_length=75, window=31, overlap=9)


def test_query_sizes_cover_the_sequence():
    assert query_sizes(498, 8) == [64, 128, 192, 256, 312, 376, 440, 498]
    assert query_sizes(30, 4) == [8, 16, 24, 30]
    assert query_sizes(5, 4) == [5] and query_sizes(498, 1) == [498]


@pytest.mark.parametrize("arrangement,prompt", [("nonoverlap", 0), ("nonoverlap", 7), ("stride1", 4)])
def test_masked_frames_only_gives_the_codes_of_every_frame(sampler, arrangement, prompt):
    """Running the last layer, head and sampling only at a step's masked frames (the default)
    samples the codes of running them at every frame (query_buckets=1), seed for seed."""
    cond, mask = _condition()
    knobs = DecodeKnobs.create(temperature=2.0, top_p=0.9)
    p = jax.random.randint(jax.random.key(8), (2, CFG.n_q, prompt), 0, CFG.card) if prompt else None
    codes = [sampler.generate(cond, mask, jax.random.key(5), SamplerSettings(
        decoding_steps=STEPS, span_arrangement=arrangement, query_buckets=n), knobs, length=31, prompt=p)
        for n in (1, 4)]
    np.testing.assert_array_equal(np.asarray(codes[0]), np.asarray(codes[1]))
