"""lm.attention_impl: the cuDNN path (jax.nn.dot_product_attention) and the Pallas TPU splash kernel
give the einsum path's numbers where they run on CPU (splash in Pallas' interpreter), and the splash
kernel compiles for a TPU slice (Mosaic custom calls in the program)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from magnet_jax import aot
from magnet_jax.config import LMConfig
from magnet_jax.config_io import load_config
from magnet_jax.models.magnet_lm import MagnetLM
from magnet_jax.parallel.logical import axis_rules
from magnet_jax.parallel.mesh import make_mesh, tree_shardings

BASE = LMConfig(n_q=4, card=32, dim=32, num_heads=4, num_layers=2, subcodes_context=3)
CODES = jnp.asarray(np.random.default_rng(0).integers(0, 33, (2, 4, 30)), jnp.int32)
COND = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 32)), jnp.float32)


def _pair(impl, **changes):
    """The einsum model and one with `impl`, same weights."""
    ref = MagnetLM(dataclasses.replace(BASE, **changes), rngs=nnx.Rngs(0))
    other = MagnetLM(dataclasses.replace(BASE, attention_impl=impl, **changes), rngs=nnx.Rngs(0))
    nnx.update(other, nnx.state(ref, nnx.Param))
    return ref, other


def _loss(model, stage):
    logits = model(CODES, COND, stage=stage)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0] ** 2)


@pytest.mark.parametrize("impl", ["cudnn", "splash"])
def test_kernels_give_the_einsum_logits_and_gradients(impl):
    ref, other = _pair(impl)
    for stage in (0, 2):  # full attention, then the local window of stages > 0 (static stage)
        np.testing.assert_allclose(other(CODES, COND, stage=stage), ref(CODES, COND, stage=stage), atol=2e-5)
    # Training's traced stage (a cond between the two patterns), forward and backward.
    grad = nnx.jit(nnx.value_and_grad(_loss))
    for stage in (0, 3):
        (la, ga), (lb, gb) = grad(ref, jnp.int32(stage)), grad(other, jnp.int32(stage))
        np.testing.assert_allclose(lb, la, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
            np.testing.assert_allclose(b, a, atol=1e-5)


@pytest.mark.parametrize("impl", ["cudnn", "splash"])
def test_causal_attention_and_the_sampler_prefix(impl):
    ref, other = _pair(impl, causal=True)
    np.testing.assert_allclose(other(CODES, COND, stage=1), ref(CODES, COND, stage=1), atol=2e-5)
    ref, other = _pair(impl)
    cross_ref, cross_other = ref.cross_context(COND, jnp.ones((2, 5), bool)), other.cross_context(
        COND, jnp.ones((2, 5), bool))
    for stage in (0, 1):  # the guided forward, its last layer at some positions only (the einsum fallback)
        pa = ref.decode_prefix(CODES, cross_ref, stage=stage, guided=True)
        pb = other.decode_prefix(CODES, cross_other, stage=stage, guided=True)
        positions = jnp.asarray([[0, 5, 29], [1, 2, 3]])
        np.testing.assert_allclose(other.decode_logits_at(pb, positions, cross_other, stage=stage, guided=True,
                                                          guidance=3.0),
                                   ref.decode_logits_at(pa, positions, cross_ref, stage=stage, guided=True,
                                                        guidance=3.0), atol=2e-5)


def test_splash_runs_per_shard_under_a_mesh():
    """Batch over 'data', heads over 'tensor': the kernel runs in a shard_map on each device's part."""
    cfg = load_config("configs/tiny.py", ["mesh.data=2", "mesh.tensor=2", "mesh.fsdp=1"])
    mesh = make_mesh(cfg.mesh, jax.devices()[:4])
    ref, other = _pair("splash")
    params = nnx.state(ref, nnx.Param)
    with jax.set_mesh(mesh), axis_rules(cfg.mesh.rules):
        params = jax.device_put(params, tree_shardings(params, mesh, cfg.mesh.rules))
        graph = nnx.graphdef(other)
        fn = jax.jit(lambda p, s: nnx.merge(graph, p)(CODES, COND, stage=s))
        got = fn(params, jnp.int32(2))
        assert "manual_computation" in fn.lower(params, jnp.int32(2)).as_text()  # shard_map
    np.testing.assert_allclose(got, ref(CODES, COND, stage=2), atol=2e-5)


def test_splash_train_step_compiles_for_a_tpu_slice():
    cfg = load_config("configs/tiny.py", ["lm.attention_impl=splash", "mesh.data=2", "mesh.tensor=2"])
    report = aot.compile_train_step_for(cfg, "v5e:2x2")
    assert report["fits"] and report["attention"] == "splash"
    # Mosaic kernels, forward and backward, for full and local attention (not the interpreter).
    assert report["pallas_kernels"] >= 4


def test_unknown_attention_impl_is_refused():
    with pytest.raises(ValueError, match="lm.attention_impl='flash': one of xla, cudnn, splash"):
        load_config("configs/tiny.py", ["lm.attention_impl=flash"])
