"""Hybrid-MAGNeT: the mixed mask and inputs, the all-prefix forward equal to the causal LM's,
decoding (autoregressive prefix, then MAGNeT's stages) in one program, and a short run that
learns both parts on the synthetic data."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from magnet_jax.config import LMConfig
from magnet_jax.config_io import load_config
from magnet_jax.decode.autoregressive import ARKnobs, ARSampler, ARSettings
from magnet_jax.decode.delay_pattern import to_pattern
from magnet_jax.decode.hybrid import HybridSampler, HybridSettings
from magnet_jax.decode.rescoring import frame_logits, frame_logits_of
from magnet_jax.decode.settings import DecodeKnobs, SamplerSettings
from magnet_jax.models.magnet_lm import MagnetLM
from magnet_jax.nn.attention import hybrid_attention_mask
from magnet_jax.train.hybrid import hybrid_inputs

CFG = LMConfig(n_q=4, card=32, dim=32, num_heads=4, num_layers=2, subcodes_context=2, kind="hybrid",
               codebook_delays=(0, 1, 2, 3))


@pytest.fixture(scope="module")
def lm():
    return MagnetLM(CFG, rngs=nnx.Rngs(0))


def _condition(b=2, s=5):
    return jax.random.normal(jax.random.key(1), (b, s, CFG.dim)), jnp.ones((b, s), bool)


def test_mixed_mask_and_inputs_follow_their_definition():
    boundary, steps = np.array([0, 4, 9]), 9
    for stage in (0, 2):
        got = np.asarray(hybrid_attention_mask(jnp.asarray(boundary), steps, stage, 2))[:, 0]
        for b, p in enumerate(boundary):
            for q in range(steps):
                for k in range(steps):
                    want = k <= q if q < p else (stage == 0 or abs(q - k) <= 2)
                    assert got[b, q, k] == want, (b, q, k, stage)
    codes = np.arange(2 * 4 * 8).reshape(2, 4, 8) % 30
    span = np.zeros((2, 8), bool)
    span[:, 5:7] = True
    inputs, prefix, staged = map(np.asarray, hybrid_inputs(jnp.asarray(codes), jnp.asarray([4, 0]), 1,
                                                           jnp.asarray(span), (0, 1, 2, 3), 32))
    for b, p in enumerate([4, 0]):
        for k in range(4):
            for t in range(8):
                pre = t < p - k
                assert prefix[b, k, t] == pre
                assert staged[b, k, t] == (not pre and k == 1 and span[b, t])
                hidden = not pre and (k > 1 or (k == 1 and span[b, t]))
                assert inputs[b, k, t] == (32 if hidden else codes[b, k, t]), (b, k, t)


def test_an_all_prefix_forward_is_the_causal_lm(lm):
    """Every query before the boundary: the hybrid model is exactly a causal LM over the pattern."""
    twin = MagnetLM(dataclasses.replace(CFG, causal=True, kind="magnet"), rngs=nnx.Rngs(1))
    nnx.update(twin, nnx.state(lm, nnx.Param))
    cond, mask = _condition()
    codes = jax.random.randint(jax.random.key(2), (2, 4, 12), 0, CFG.card)
    pattern = to_pattern(codes, CFG.codebook_delays, CFG.mask_id)
    steps = pattern.shape[-1]
    all_prefix = hybrid_attention_mask(jnp.full((2,), steps), steps, 1, CFG.subcodes_context)
    got = frame_logits_of(lm, lm.hidden_states(pattern, cond, mask, attention_mask=all_prefix), 12)
    np.testing.assert_allclose(np.asarray(got), np.asarray(frame_logits(twin, codes, cond, mask)), rtol=1e-5,
                               atol=1e-5)


def test_decoding_keeps_the_autoregressive_prefix_and_fills_the_rest(lm):
    cond, mask = _condition()
    settings = HybridSettings(prefix_frames=9, magnet=SamplerSettings(decoding_steps=(4, 2, 2, 2), query_buckets=1),
                              ar=ARSettings(use_sampling=False))
    sampler = HybridSampler(lm)
    codes = np.asarray(sampler.generate(cond, mask, jax.random.key(3), settings, length=30))
    assert codes.shape == (2, 4, 30) and not (codes == CFG.mask_id).any()
    np.testing.assert_array_equal(np.asarray(sampler.generate(cond, mask, jax.random.key(3), settings, length=30)),
                                  codes)
    ar = np.asarray(ARSampler(lm).generate(cond, mask, jax.random.key(0), ARSettings(use_sampling=False),
                                           ARKnobs.create(), length=9))
    for k in range(4):  # the staggered prefix: frames t < 9 - delay_k are the autoregressive sampler's
        np.testing.assert_array_equal(codes[:, k, :9 - k], ar[:, k, :9 - k])
    other = np.asarray(sampler.generate(cond, mask, jax.random.key(4), settings, DecodeKnobs.create(), length=30))
    assert (other[:, :, 9:] != codes[:, :, 9:]).any()  # the parallel part is sampled with the key
    with pytest.raises(ValueError, match="must be shorter than the clip"):
        sampler.generate(cond, mask, jax.random.key(3), dataclasses.replace(settings, prefix_frames=30), length=30)
    with pytest.raises(ValueError, match="lm.kind='hybrid'"):
        HybridSampler(MagnetLM(dataclasses.replace(CFG, kind="magnet", codebook_delays=()), rngs=nnx.Rngs(0)))


def test_a_short_hybrid_run_learns_both_parts(tmp_path):
    from magnet_jax.train.samples import sample_synthetic_captions
    from magnet_jax.train.trainer import train

    cfg = load_config("configs/quickstart.py", [
        f"train.workdir={tmp_path / 'hybrid'}", "train.num_steps=160", "train.eval_every=160", "train.log_every=40",
        "train.checkpoint_every=160", "optim.warmup_steps=30", "lm.kind=hybrid", "lm.codebook_delays=(0,1,2,3)",
        "decode.decoding_steps=(8,4,4,4)", "decode.query_buckets=2"])  # fewer steps and branches: compiles faster
    result = train(cfg, progress=False)
    uni = np.mean(result.baselines["unigram_nats"])
    ev = result.last_eval
    assert np.mean(ev["ce_per_stage"]) < uni - 1.0, (ev, uni)  # the masked stages
    assert np.mean(ev["ce_prefix"]) < uni - 1.0, (ev, uni)  # the autoregressive prefix
    codes, agreement = sample_synthetic_captions(cfg, result.graphdef, result.state.params, result.data,
                                                 ["slow jazz with piano", "fast rock with bass"])
    assert codes.shape[:2] == (2, 4) and agreement[1:].mean() > 0.1, agreement  # chance: 1/128


def test_held_out_evaluation_fixes_the_boundaries():
    """The autoregressive part is scored over the whole clip (nothing random left: any key gives the
    same CE) and equals the teacher-forced CE of the causal twin; the stages are scored with no prefix."""
    from magnet_jax.models.magnet_model import MagnetModel
    from magnet_jax.train.hybrid import hybrid_loss
    from magnet_jax.train.step import make_eval_step

    cfg = load_config("configs/tiny.py", ["lm.kind=hybrid", "lm.codebook_delays=(0,1,2,3)"])
    model = MagnetModel(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    t = cfg.data.num_frames
    batch = {"codes": jax.random.randint(jax.random.key(1), (2, 4, t), 0, cfg.lm.card),
             "text_ids": jax.random.randint(jax.random.key(2), (2, 6), 1, cfg.conditioner.vocab_size),
             "text_mask": jnp.ones((2, 6), jnp.int32)}
    evaluate = jax.jit(make_eval_step(cfg, graphdef))
    a, b = evaluate(params, batch, jax.random.key(3)), evaluate(params, batch, jax.random.key(4))
    np.testing.assert_allclose(np.asarray(a["ce_prefix"]), np.asarray(b["ce_prefix"]), rtol=1e-6)
    from magnet_jax.masking import mask_rate_to_span_starts_lut

    lut = mask_rate_to_span_starts_lut(t, cfg.lm.span_len)
    _, aux = hybrid_loss(model, batch, jax.random.fold_in(jax.random.key(3), 2), 2, cfg, lut, condition="text",
                         boundary=0)
    np.testing.assert_allclose(float(a["ce_per_stage"][2]), float(aux["ce_nar"]), rtol=1e-5)
