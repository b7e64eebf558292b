"""Autoregressive sampling of MusicGen LMs: greedy codes equal audiocraft's `LMModel.generate`.

The reference is audiocraft's `LMModel` built by its own builder from a MusicGen `xp.cfg`
(causal, delay pattern, T5 conditioner on a tiny local T5), with random weights; ours is
the same checkpoint loaded through the real import path, conditioned on the same captions.
"""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from magnet_jax.convert.audiocraft_checkpoint import load_audiocraft_lm
from magnet_jax.convert.t5 import load_t5_encoder
from magnet_jax.decode.autoregressive import ARKnobs, ARSampler, ARSettings
from magnet_jax.decode.delay_pattern import from_pattern, sequence_steps, to_pattern
from magnet_jax.text.tokenizer import T5Tokenizer

from tests.reference import audiocraft_lm as harness
from tests.reference import require
from tests.reference.audiocraft_pipeline import CARD, make_musicgen_lm
from tests.t5_fixtures import make_t5

torch = require("torch")

TEXTS = ["heavy metal with distorted guitars", "rain"]
LENGTH = 24


@pytest.fixture(scope="module")
def musicgen(tmp_path_factory):
    """(audiocraft LMModel, our model, condition, condition mask) on one random checkpoint."""
    tmp = tmp_path_factory.mktemp("musicgen")
    make_t5(tmp / "t5-base", d_model=768, num_layers=1, num_heads=2, d_kv=8, d_ff=32)
    ref = make_musicgen_lm(tmp, seed=2)
    _, model = load_audiocraft_lm(tmp)
    _, t5 = load_t5_encoder(tmp / "t5-base")
    ids, mask = T5Tokenizer(tmp / "t5-base")(TEXTS)
    cond, cond_mask = model.conditioner(t5(jnp.asarray(ids), jnp.asarray(mask)), jnp.asarray(mask))
    return ref, model, cond, cond_mask


def _reference(ref, prompt=None, **kw):
    ac = harness.load_audiocraft()
    attrs = [ac.conditioners.ConditioningAttributes(text={"description": t}) for t in TEXTS]
    with torch.no_grad():
        return ref.generate(prompt=prompt, conditions=attrs, max_gen_len=LENGTH, **kw).numpy()


def test_greedy_codes_equal_audiocraft(musicgen):
    ref, model, cond, cond_mask = musicgen
    want = _reference(ref, use_sampling=False, cfg_coef=3.0)
    got = ARSampler(model.lm).generate(cond, cond_mask, jax.random.key(0), ARSettings(use_sampling=False),
                                       ARKnobs.create(cfg_coef=3.0), length=LENGTH)
    assert got.shape == want.shape == (2, 4, LENGTH)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_greedy_continuation_keeps_the_prompt_and_equals_audiocraft(musicgen):
    ref, model, cond, cond_mask = musicgen
    prompt = np.random.default_rng(0).integers(0, CARD, (2, 4, 7))
    want = _reference(ref, prompt=torch.from_numpy(prompt), use_sampling=False, cfg_coef=2.0)
    got = np.asarray(ARSampler(model.lm).generate(cond, cond_mask, jax.random.key(0), ARSettings(use_sampling=False),
                                                  ARKnobs.create(cfg_coef=2.0), length=LENGTH,
                                                  prompt=jnp.asarray(prompt)))
    np.testing.assert_array_equal(got[..., :7], prompt)
    np.testing.assert_array_equal(got, want)


def test_sampling_is_seeded_in_range_and_knobs_are_traced(musicgen):
    _, model, cond, cond_mask = musicgen
    sampler = ARSampler(model.lm)
    settings = ARSettings(top_k=10)
    a = sampler.generate(cond, cond_mask, jax.random.key(1), settings, ARKnobs.create(temperature=1.0), length=LENGTH)
    b = sampler.generate(cond, cond_mask, jax.random.key(1), settings, ARKnobs.create(temperature=1.0), length=LENGTH)
    c = sampler.generate(cond, cond_mask, jax.random.key(2), settings, ARKnobs.create(temperature=1.0), length=LENGTH)
    d = sampler.generate(cond, cond_mask, jax.random.key(1), settings, ARKnobs.create(top_p=0.5), length=LENGTH)
    np.testing.assert_array_equal(a, b)
    assert (np.asarray(a) != np.asarray(c)).any()
    assert int(jnp.min(a)) >= 0 and int(jnp.max(a)) < CARD and int(jnp.min(d)) >= 0
    assert sampler._generate_jit._cache_size() == 1  # temperature, top_p: one program


def test_delay_pattern_round_trip_matches_audiocraft():
    harness.load_audiocraft()
    patterns = importlib.import_module("audiocraft.modules.codebooks_patterns")
    codes = np.random.default_rng(1).integers(0, CARD, (2, 4, 9))
    pattern = patterns.DelayedPatternProvider(4).get_pattern(9)
    want, _, _ = pattern.build_pattern_sequence(torch.from_numpy(codes), CARD, keep_only_valid_steps=False)
    got = np.asarray(to_pattern(jnp.asarray(codes), (0, 1, 2, 3), CARD))
    assert got.shape[-1] == sequence_steps(9, (0, 1, 2, 3))
    np.testing.assert_array_equal(got, want.numpy())
    np.testing.assert_array_equal(from_pattern(jnp.asarray(got), (0, 1, 2, 3), 9), codes)


def test_a_bidirectional_lm_is_refused():
    from magnet_jax.config import LMConfig
    from magnet_jax.models.magnet_lm import MagnetLM

    lm = MagnetLM(LMConfig(n_q=4, card=16, dim=16, num_heads=2, num_layers=1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="needs a causal LM with one delay per codebook"):
        ARSampler(lm)


def test_rescorer_frame_logits_equal_audiocraft_compute_predictions(musicgen):
    from magnet_jax.decode.rescoring import frame_logits, token_probabilities

    ref, model, cond, cond_mask = musicgen
    codes = np.random.default_rng(4).integers(0, CARD, (2, 4, 16))
    ac = harness.load_audiocraft()
    attrs = [ac.conditioners.ConditioningAttributes(text={"description": t}) for t in TEXTS]
    with torch.no_grad():
        out = ref.compute_predictions(torch.from_numpy(codes), attrs)
    want, valid = out.logits.numpy(), out.mask.numpy().astype(bool)
    got = np.asarray(nnx.jit(lambda m, x: frame_logits(m, x, cond, cond_mask))(model.lm, jnp.asarray(codes)))
    # audiocraft keeps only the steps where every codebook is inside the clip (the last frames of
    # delayed codebooks are NaN there); ours predicts those too, from the same causal context.
    assert got.shape == want.shape and valid[:, 0].all() and valid.mean() > 0.8
    np.testing.assert_allclose(got[valid], want[valid], atol=1e-4, rtol=1e-4)
    p = np.asarray(token_probabilities(model.lm, jnp.asarray(codes), cond, cond_mask, stage=0))
    soft = np.exp(want[:, 0] - want[:, 0].max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    np.testing.assert_allclose(p, np.take_along_axis(soft, codes[:, 0, :, None], -1)[..., 0], rtol=1e-4, atol=1e-6)
