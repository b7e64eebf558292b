"""Rescoring (the paper's Eq. 5): MAGNeT's sampler with a MusicGen LM mixing into the confidence.

The rescorer is audiocraft's own MusicGen `LMModel` (its builder, random weights, a tiny T5)
loaded through our import; the transcription scores the candidate with audiocraft's
`compute_predictions` on that very model.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from magnet_jax.config import LMConfig
from magnet_jax.convert.audiocraft_checkpoint import load_audiocraft_lm
from magnet_jax.convert.t5 import load_t5_encoder
from magnet_jax.decode.sampler import MagnetSampler
from magnet_jax.decode.settings import DecodeKnobs, SamplerSettings
from magnet_jax.models.magnet_lm import MagnetLM
from magnet_jax.text.tokenizer import T5Tokenizer

from tests.reference import audiocraft_lm as harness
from tests.reference import magnet_decoding as ref
from tests.reference import require
from tests.reference.audiocraft_pipeline import CARD, make_musicgen_lm
from tests.t5_fixtures import make_t5

torch = require("torch")

TEXTS = ["heavy metal with distorted guitars", "rain"]
MAGNET = LMConfig(n_q=4, card=CARD, dim=32, num_heads=4, num_layers=2, subcodes_context=3)
STEPS = (6, 3, 3, 2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(MAGNeT LM, its condition and mask, audiocraft MusicGen LMModel, our MusicGen LM, its condition, mask)."""
    tmp = tmp_path_factory.mktemp("rescorer")
    make_t5(tmp / "t5-base", d_model=768, num_layers=1, num_heads=2, d_kv=8, d_ff=32)
    ac_lm = make_musicgen_lm(tmp, seed=5, scale=0.5)
    _, musicgen = load_audiocraft_lm(tmp)
    _, t5 = load_t5_encoder(tmp / "t5-base")
    ids, mask = T5Tokenizer(tmp / "t5-base")(TEXTS)
    r_cond, r_mask = musicgen.conditioner(t5(jnp.asarray(ids), jnp.asarray(mask)), jnp.asarray(mask))
    cond = jax.random.normal(jax.random.key(1), (2, 5, MAGNET.dim))
    cond_mask = jnp.ones((2, 5), bool).at[0, 3:].set(False)
    return MagnetLM(MAGNET, rngs=nnx.Rngs(3)), cond * cond_mask[..., None], cond_mask, ac_lm, musicgen.lm, r_cond, r_mask


def test_weight_one_gives_plain_magnet_codes_and_the_weight_is_traced(setup):
    lm, cond, mask, _, rescorer, r_cond, r_mask = setup
    settings = SamplerSettings(decoding_steps=STEPS, use_sampling=True, query_buckets=2)  # 2: compiles faster
    plain = MagnetSampler(lm).generate(cond, mask, jax.random.key(4), settings, DecodeKnobs.create(), length=30)
    sampler = MagnetSampler(lm, rescorer=rescorer)
    run = lambda w: np.asarray(sampler.generate(cond, mask, jax.random.key(4), settings,
                                                DecodeKnobs.create(rescore_weight=w), length=30,
                                                rescore_condition=(r_cond, r_mask)))
    np.testing.assert_array_equal(run(1.0), plain)
    rescored = run(0.2)
    assert (rescored != np.asarray(plain)).any()  # the rescorer does change what gets re-masked
    assert sampler._generate_jit._cache_size() == 1  # w is traced: one program
    *_, (_, _, last) = sampler.generate_stepwise(cond, mask, jax.random.key(4), settings,
                                                 DecodeKnobs.create(rescore_weight=0.2), length=30,
                                                 rescore_condition=(r_cond, r_mask))
    np.testing.assert_array_equal(np.asarray(last), rescored)  # the step-by-step driver rescores alike


def _audiocraft_rescorer(ac_lm):
    """rescore_fn of the transcription: audiocraft's compute_predictions over the candidate (not yet
    generated codebooks hold MAGNeT's mask id, which is MusicGen's special token, card)."""
    ac = harness.load_audiocraft()
    attrs = [ac.conditioners.ConditioningAttributes(text={"description": t}) for t in TEXTS]

    def rescore(codes, stage):
        with torch.no_grad():
            out = ac_lm.compute_predictions(torch.from_numpy(np.asarray(codes, np.int64)), attrs,
                                            keep_only_valid_steps=False)
        logits = out.logits[:, stage].numpy()  # [B, T, card]
        assert np.isfinite(logits).all()
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        return np.take_along_axis(probs, codes[:, stage, :, None], -1)[..., 0]

    return rescore


CASES = [
    dict(span_arrangement="nonoverlap", span_scoring="max", cfg=True, prompt=0, query_buckets=8),
    dict(span_arrangement="nonoverlap", span_scoring="prod", cfg=False, prompt=6, query_buckets=1),
    dict(span_arrangement="stride1", span_scoring="max", cfg=True, prompt=4, query_buckets=2),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_greedy_rescored_codes_equal_the_numpy_transcription(setup, case):
    lm, cond, mask, ac_lm, rescorer, r_cond, r_mask = setup
    plen, weight = case["prompt"], 0.4
    prompt = jax.random.randint(jax.random.key(7), (2, 4, plen), 0, CARD) if plen else None
    settings = SamplerSettings(decoding_steps=STEPS, span_len=3, span_scoring=case["span_scoring"],
                               span_arrangement=case["span_arrangement"], use_sampling=False, cfg=case["cfg"],
                               query_buckets=case["query_buckets"])
    knobs = DecodeKnobs.create(temperature=3.0, top_p=0.0, rescore_weight=weight)
    got = MagnetSampler(lm, rescorer=rescorer).generate(cond, mask, jax.random.key(0), settings, knobs, length=30,
                                                        prompt=prompt, rescore_condition=(r_cond, r_mask))
    m_cond, m_mask = (jnp.concatenate([cond, jnp.zeros_like(cond)]), jnp.concatenate([mask, jnp.zeros_like(mask)])) \
        if case["cfg"] else (cond, mask)
    fwd = nnx.jit(lambda m, c, s: m(c, m_cond, m_mask, stage=s, stage_logits_only=True), static_argnums=2)
    common = dict(batch=2, n_q=4, length=30, mask_id=MAGNET.mask_id, span_len=3, decoding_steps=STEPS,
                  prompt=None if prompt is None else np.asarray(prompt), cfg=case["cfg"],
                  scoring=case["span_scoring"], arrangement=case["span_arrangement"])
    logits_fn = lambda codes, stage: fwd(lm, jnp.asarray(codes, jnp.int32), stage)
    want = ref.generate_greedy(logits_fn, rescore_fn=_audiocraft_rescorer(ac_lm), rescore_weight=weight, **common)
    np.testing.assert_array_equal(np.asarray(got), want)
    assert (want != ref.generate_greedy(logits_fn, **common)).any()  # the case does exercise the rescorer


def test_mismatched_or_wrong_models_are_clear_errors(setup):
    lm, cond, mask, _, rescorer, r_cond, r_mask = setup
    causal = dict(causal=True, codebook_delays=(0, 1, 2, 3), subcodes_context=-1, dim=16, num_heads=2, num_layers=1)
    for cfg, match in [
        (LMConfig(n_q=4, card=CARD * 2, **causal), f"4 codebooks of {CARD * 2} codes and MAGNeT 4 of {CARD}"),
        (LMConfig(n_q=3, card=CARD, **{**causal, "codebook_delays": (0, 1, 2)}), "3 codebooks"),
        (MAGNET, "must be a causal LM .*a MAGNeT LM"),
    ]:
        with pytest.raises(ValueError, match=match):
            MagnetSampler(lm, rescorer=MagnetLM(cfg, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="applies to a MAGNeT"):
        MagnetSampler(rescorer, rescorer=rescorer)
    settings = SamplerSettings(decoding_steps=STEPS)
    with pytest.raises(ValueError, match="pass rescore_condition"):
        MagnetSampler(lm, rescorer=rescorer).generate(cond, mask, jax.random.key(0), settings, length=30)
    with pytest.raises(ValueError, match="has no rescorer"):
        MagnetSampler(lm).generate(cond, mask, jax.random.key(0), settings, length=30,
                                   rescore_condition=(r_cond, r_mask))
    with pytest.raises(ValueError, match="rescorer's condition must be"):
        MagnetSampler(lm, rescorer=rescorer).generate(cond, mask, jax.random.key(0), settings, length=30,
                                                      rescore_condition=(cond[..., :16], mask))
    with pytest.raises(ValueError, match=r"rescore_weight must be in \[0, 1\]"):
        DecodeKnobs.create(rescore_weight=1.5)
