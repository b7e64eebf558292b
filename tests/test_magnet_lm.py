"""Shapes, masks and the restricted attention window of the MAGNeT LM."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from magnet_jax.config import LMConfig
from magnet_jax.models.magnet_lm import MagnetLM

TINY = LMConfig(n_q=4, card=32, dim=32, num_heads=4, num_layers=2, subcodes_context=2)


def _inputs(cfg, b=2, t=24, s=5, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    codes = jax.random.randint(k1, (b, cfg.n_q, t), 0, cfg.card + 1)
    cond = jax.random.normal(k2, (b, s, cfg.dim))
    return codes, cond


def test_logits_shapes_and_dtypes():
    model = MagnetLM(TINY, rngs=nnx.Rngs(0))
    codes, cond = _inputs(TINY)
    out = model(codes, cond, stage=0)
    assert out.shape == (2, 4, 24, 32) and out.dtype == jnp.float32
    one = model(codes, cond, stage=2, stage_logits_only=True)
    assert one.shape == (2, 24, 32)
    np.testing.assert_allclose(one, model(codes, cond, stage=2)[:, 2], rtol=1e-5, atol=1e-5)
    # A traced stage gives the same result as the static one.
    traced = nnx.jit(lambda m, s: m(codes, cond, stage=s, stage_logits_only=True))(model, jnp.int32(2))
    np.testing.assert_allclose(traced, one, rtol=1e-5, atol=1e-5)


def test_parameter_layout_and_logical_axes():
    model = MagnetLM(TINY, rngs=nnx.Rngs(0))
    _, state = nnx.split(model)
    flat = {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(state)}
    assert flat["emb"].get_value().shape == (4, 33, 32)  # card + 1 rows: the mask token
    assert flat["emb"].get_metadata()["out_sharding"] == ("codebooks", "vocab", "embed")
    assert flat["heads"].get_value().shape == (4, 32, 32)
    q = flat["transformer/layers/self_attn/query/kernel"]
    assert q.get_value().shape == (2, 32, 4, 8)
    assert q.get_metadata()["out_sharding"] == ("layers", "embed", "heads", "kv")
    assert "transformer/layers/cross_attn/query/kernel" in flat
    assert not any("bias" in k and "norm" not in k for k in flat)  # no biases in the released configs
    with_bias = dataclasses.replace(TINY, bias_attn=True, bias_ff=True, bias_proj=True, layer_scale=1e-4)
    _, state = nnx.split(MagnetLM(with_bias, rngs=nnx.Rngs(0)))
    names = {"/".join(map(str, k)) for k, _ in nnx.to_flat_state(state)}
    assert {"heads_bias", "transformer/layers/ffn/linear1/bias", "transformer/layers/layer_scale_1/scale"} <= names


def _one_layer_outputs(stage, perturb_at, t=24, seed=0):
    cfg = dataclasses.replace(TINY, num_layers=1)
    model = MagnetLM(cfg, rngs=nnx.Rngs(seed))
    codes, cond = _inputs(cfg, b=1, t=t, seed=seed)
    base = model(codes, cond, stage=stage)
    changed = codes.at[:, :, perturb_at].set((codes[:, :, perturb_at] + 1) % cfg.card)
    return np.abs(np.asarray(model(changed, cond, stage=stage) - base)).max(axis=(0, 1, 3))  # per frame


@pytest.mark.parametrize("stage", [1, 3])
def test_restricted_window_for_stages_above_zero(stage):
    ctx, p, t = TINY.subcodes_context, 11, 24
    diff = _one_layer_outputs(stage, p, t)
    inside = [q for q in range(t) if abs(q - p) <= ctx]
    outside = [q for q in range(t) if abs(q - p) > ctx]
    assert np.all(diff[outside] == 0.0), "a token outside the window changed stage>0 outputs"
    assert np.all(diff[inside] > 1e-6), "a token inside the window did not change the outputs"


def test_stage_zero_attends_everywhere():
    diff = _one_layer_outputs(0, 11)
    assert np.all(diff > 1e-6)


def test_causal_mode_and_unrestricted_context():
    cfg = dataclasses.replace(TINY, num_layers=1, causal=True)
    model = MagnetLM(cfg, rngs=nnx.Rngs(0))
    codes, cond = _inputs(cfg, b=1)
    base = model(codes, cond, stage=0)
    changed = codes.at[:, :, 10].set((codes[:, :, 10] + 1) % cfg.card)
    diff = np.abs(np.asarray(model(changed, cond, stage=0) - base)).max(axis=(0, 1, 3))
    assert np.all(diff[:10] == 0.0) and np.all(diff[10:] > 1e-6)
    # Per-call override: the bidirectional model run causally equals the causal model.
    bidir = MagnetLM(dataclasses.replace(cfg, causal=False), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(bidir(codes, cond, stage=0, causal=True), base, rtol=1e-5, atol=1e-5)
    unrestricted = dataclasses.replace(TINY, num_layers=1, subcodes_context=-1)
    m = MagnetLM(unrestricted, rngs=nnx.Rngs(0))
    assert np.all(np.abs(np.asarray(m(changed, cond, stage=2) - m(codes, cond, stage=2))).max(axis=(0, 1, 3)) > 0)


def test_precomputed_cross_kv_matches_and_condition_checks():
    model = MagnetLM(TINY, rngs=nnx.Rngs(0))
    codes, cond = _inputs(TINY)
    kv = model.cross_key_values(cond)
    np.testing.assert_allclose(model(codes, cross_kv=kv, stage=1), model(codes, cond, stage=1), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="condition"):
        model(codes, stage=1)
    with pytest.raises(ValueError, match="lm.dim"):
        model(codes, cond[..., :8], stage=1)
    with pytest.raises(ValueError, match=r"\[B, K=4, T\]"):
        model(codes[:, :3], cond, stage=1)


def test_cross_attention_mask_option():
    codes, cond = _inputs(TINY)
    mask = jnp.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], bool)
    zeroed = cond * mask[..., None]
    ref_model = MagnetLM(TINY, rngs=nnx.Rngs(0))
    # Reference semantics: padded (zeroed) keys still take part in the softmax.
    a = ref_model(codes, zeroed, mask, stage=0)
    b = ref_model(codes, zeroed[:, :2], mask[:, :2], stage=0)
    assert np.abs(np.asarray(a - b)).max() > 1e-4
    masked = MagnetLM(dataclasses.replace(TINY, cross_attention_mask=True), rngs=nnx.Rngs(0))
    a = masked(codes[:1], zeroed[:1], mask[:1], stage=0)
    b = masked(codes[:1], zeroed[:1, :2], mask[:1, :2], stage=0)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bf16_compute_keeps_fp32_params_and_logits():
    cfg = dataclasses.replace(TINY, dtype="bfloat16")
    model = MagnetLM(cfg, rngs=nnx.Rngs(0))
    codes, cond = _inputs(cfg)
    out = model(codes, cond, stage=1)
    assert out.dtype == jnp.float32 and bool(jnp.isfinite(out).all())
    assert model.emb[...].dtype == jnp.float32
    ref = MagnetLM(TINY, rngs=nnx.Rngs(0))(codes, cond, stage=1)
    # Same function, bf16 rounding only (8-bit mantissa, 2^-8 relative): on logits up to 4.3 the error
    # measured 0.024 at most and 0.005 on average (0.030 and 0.005 over 4 seeds).
    err = np.abs(np.asarray(out - ref))
    assert err.max() < 0.05 and err.mean() < 0.01, (err.max(), err.mean())


@pytest.mark.parametrize("context", [2, 9], ids=["diagonal", "banded"])  # 5 keys offset by offset; 19 banded
@pytest.mark.parametrize("t", [7, 24, 37, 64])
def test_banded_local_attention_equals_masked(t, context):
    cfg = dataclasses.replace(TINY, subcodes_context=context)
    banded = MagnetLM(cfg, rngs=nnx.Rngs(0))
    masked = MagnetLM(dataclasses.replace(cfg, banded_local_attention=False), rngs=nnx.Rngs(0))
    codes, cond = _inputs(cfg, t=t)
    for stage in (1, 3):
        np.testing.assert_allclose(banded(codes, cond, stage=stage), masked(codes, cond, stage=stage),
                                   rtol=1e-5, atol=1e-5)


def _randomised(cfg, seed=0):
    """A model with every parameter (biases, norms, layer scales included) drawn at random."""
    model = MagnetLM(cfg, rngs=nnx.Rngs(seed))
    state = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    nnx.update(model, jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]))
    return model


@pytest.mark.parametrize("variant", [
    dict(),  # the released layout: no attention biases, the null text's cross-attention is exactly 0
    dict(bias_attn=True, bias_ff=True, bias_proj=True),  # a constant null output, computed once
    dict(norm_first=False, bias_attn=True),  # post-norm: the cross-attention queries the layer input
    dict(layer_scale=0.1, cross_attention_mask=True),
], ids=["released", "biases", "post-norm", "layer-scale+mask"])
def test_guided_forward_equals_the_doubled_batch(variant):
    """decode_logits(guided=True) shares the first self-attention and skips the null rows'
    cross-attention; it must give the logits of the plain forward over [text; null text]."""
    cfg = dataclasses.replace(TINY, **variant)
    model = _randomised(cfg)
    codes, cond = _inputs(cfg, b=2, t=24, s=5)
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    cond = cond * mask[..., None]
    both_cond = jnp.concatenate([cond, jnp.zeros_like(cond)])
    both_mask = jnp.concatenate([mask, jnp.zeros_like(mask)])
    for stage in (0, 2):
        expect = model(jnp.concatenate([codes, codes]), both_cond, both_mask, stage=stage, stage_logits_only=True)
        cross = model.cross_context(cond, mask)
        assert (cross.null_out is None) == (not cfg.bias_attn)
        text, null = model.decode_logits(codes, cross, stage=stage, guided=True)
        np.testing.assert_allclose(text, expect[:2], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(null, expect[2:], rtol=1e-5, atol=1e-5)
        plain = model.decode_logits(codes, cross, stage=stage, guided=False)
        np.testing.assert_allclose(plain, expect[:2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", [
    dict(),
    dict(bias_attn=True, bias_ff=True, bias_proj=True),
    dict(norm_first=False, bias_attn=True),
    dict(layer_scale=0.1, cross_attention_mask=True),
    dict(num_layers=1),  # the one layer is also the first: its self-attention is shared under guidance
    dict(banded_local_attention=False),  # stage > 0 as a [T, T] mask
    dict(subcodes_context=-1, causal=True),
], ids=["released", "biases", "post-norm", "layer-scale+mask", "one-layer", "mask-array", "causal"])
def test_logits_at_positions_equal_the_full_forward(variant):
    """decode_prefix + decode_logits_at (the last layer and the head at some positions only)
    give decode_logits at those positions: plain, guided, and guided with the coefficient
    applied before the head."""
    cfg = dataclasses.replace(TINY, **variant)
    model = _randomised(cfg, seed=4)
    codes, cond = _inputs(cfg, b=2, t=24, s=5, seed=2)
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    cross = model.cross_context(cond * mask[..., None], mask)
    positions = jnp.array([[0, 5, 6, 7, 23, 12], [3, 2, 1, 0, 22, 11]])
    at = lambda x: jnp.take_along_axis(x, positions[..., None], axis=1)
    for stage in (0, 2):
        for guided in (False, True):
            full = model.decode_logits(codes, cross, stage=stage, guided=guided)
            prefix = model.decode_prefix(codes, cross, stage=stage, guided=guided)
            part = model.decode_logits_at(prefix, positions, cross, stage=stage, guided=guided)
            for got, want in zip(jax.tree.leaves(part), jax.tree.leaves(full)):
                np.testing.assert_allclose(got, at(want), rtol=2e-5, atol=2e-5)
        text, null = full
        mixed = model.decode_logits_at(prefix, positions, cross, stage=stage, guided=True, guidance=3.5)
        np.testing.assert_allclose(mixed, at(null + (text - null) * 3.5), rtol=1e-4, atol=1e-4)
