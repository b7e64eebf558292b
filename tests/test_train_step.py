"""The pure train step: objective, determinism, and equality across DP / FSDP / TP meshes."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from magnet_jax.config import MeshConfig
from magnet_jax.config_io import load_config
from magnet_jax.data.host_batches import check_batch_sizes, to_global
from magnet_jax.parallel.logical import axis_rules
from magnet_jax.parallel.mesh import make_mesh
from magnet_jax.train.losses import masked_cross_entropy
from magnet_jax.train.objectives import build_inputs
from magnet_jax.train.optimizer import make_optimizer
from magnet_jax.train.setup import compile_train_step, make_data_source, memory_summary
from magnet_jax.train.state import build_train_state


def small_cfg(**mesh):
    cfg = load_config("configs/tiny.py")
    # Dimensions divisible by 4 so tensor parallelism really splits heads, mlp and vocab.
    lm = dataclasses.replace(cfg.lm, dim=32, num_heads=4, card=64)
    return dataclasses.replace(cfg, lm=lm, mesh=dataclasses.replace(MeshConfig(), **mesh))


def run_steps(cfg, num_devices, steps=3):
    """Trains `steps` steps; returns the logged losses and gradient norms (the norm sees a gradient off
    by a constant factor, which AdamW's update hardly shows), the final state and the mesh."""
    mesh = make_mesh(cfg.mesh, devices=jax.devices()[:num_devices])
    rules = cfg.mesh.rules
    data = make_data_source(cfg)
    tx, schedule = make_optimizer(cfg.optim, cfg.train.num_steps)
    g = cfg.train.global_batch_size
    logged = {"loss": [], "grad_norm": []}
    with jax.set_mesh(mesh), axis_rules(rules):
        graphdef, state, shardings = build_train_state(cfg, tx, mesh, rules)
        first = to_global(data.batch(0, g), mesh, rules, g)
        step_fn = compile_train_step(cfg, graphdef, tx, schedule, shardings, first, mesh, rules)
        key = jax.random.key(cfg.train.seed)
        for i in range(steps):
            batch = to_global(data.batch(i, g), mesh, rules, g)
            state, metrics = step_fn(state, batch, jax.random.fold_in(key, i))
            for name, values in logged.items():
                values.append(float(metrics[name]))
    return logged, state, mesh


@pytest.fixture(scope="module")
def single_device():
    """The one-device run every mesh is compared with (trained once for the module)."""
    return run_steps(small_cfg(data=1), 1)


def test_build_inputs_masks_chosen_stage_and_hides_higher_ones():
    codes = jnp.arange(2 * 4 * 6).reshape(2, 4, 6) % 7
    span = jnp.array([[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 0]], bool)
    inputs, loss_mask = build_inputs(codes, jnp.int32(1), span, mask_id=99)
    np.testing.assert_array_equal(inputs[:, 0], codes[:, 0])  # lower stage given
    np.testing.assert_array_equal(inputs[:, 1], jnp.where(span, 99, codes[:, 1]))
    assert bool((inputs[:, 2:] == 99).all())  # higher stages fully masked
    np.testing.assert_array_equal(loss_mask, span)


def test_masked_cross_entropy_counts_only_masked_positions():
    logits = jnp.log(jnp.array([[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]]))
    targets = jnp.array([[0, 1, 0]])
    ce, acc, n = masked_cross_entropy(logits, targets, jnp.array([[True, False, True]]))
    np.testing.assert_allclose(ce, -(np.log(0.5) + np.log(0.2)) / 2, rtol=1e-6)
    assert float(n) == 2 and float(acc) == pytest.approx(0.5)  # position 0 right (tie -> 0), position 2 wrong


def test_same_seed_same_loss_and_loss_falls():
    cfg = small_cfg(data=1)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, warmup_steps=2))
    a, _, _ = run_steps(cfg, 1, steps=12)
    b, _, _ = run_steps(cfg, 1, steps=3)
    assert a["loss"][:3] == b["loss"] and a["grad_norm"][:3] == b["grad_norm"]  # bitwise: same seed
    assert np.mean(a["loss"][-4:]) < np.mean(a["loss"][:2]) - 0.1


@pytest.mark.parametrize(
    "mesh, devices",
    [(dict(data=8), 8), (dict(data=1, fsdp=8), 8), (dict(data=2, fsdp=2, tensor=2), 8), (dict(data=2, tensor=4), 8)],
    ids=["dp8", "fsdp8", "dp2-fsdp2-tp2", "dp2-tp4"],
)
def test_multi_device_matches_single_device(single_device, mesh, devices, capfd):
    ref, ref_state, _ = single_device
    got, state, m = run_steps(small_cfg(**mesh), devices)
    # The shardings agree along the step: XLA never falls back to replicate-then-slice.
    assert "Involuntary full rematerialization" not in capfd.readouterr().err
    for name in ("loss", "grad_norm"):
        np.testing.assert_allclose(got[name], ref[name], rtol=2e-5, atol=2e-5, err_msg=name)
    ref_leaves = jax.tree.leaves(ref_state.params)
    for x, y in zip(jax.tree.leaves(state.params), ref_leaves):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)
    # The parameters really are sharded as the rules say.
    q = state.params["lm"]["transformer"]["layers"]["self_attn"]["query"]["kernel"].get_value()
    ffn = state.params["lm"]["transformer"]["layers"]["ffn"]["linear1"]["kernel"].get_value()
    fsdp, tp = m.shape["fsdp"], m.shape["tensor"]
    shard = q.addressable_shards[0].data.shape
    assert shard == (q.shape[0], q.shape[1] // fsdp, q.shape[2] // tp, q.shape[3])
    assert ffn.addressable_shards[0].data.shape == (ffn.shape[0], ffn.shape[1] // fsdp, ffn.shape[2] // tp)
    mu = state.opt_state[1][0].mu["lm"]["transformer"]["layers"]["ffn"]["linear1"]["kernel"].get_value()
    assert mu.sharding == ffn.sharding  # optimizer moments follow their parameters


def test_per_device_memory_falls_with_fsdp():
    """Compiled per-device argument bytes (params + optimizer state + batch) shrink ~N-fold."""
    cfg = dataclasses.replace(small_cfg(), lm=dataclasses.replace(small_cfg().lm, dim=64, card=64))
    sizes = {}
    for n in (1, 8):
        c = dataclasses.replace(cfg, mesh=MeshConfig(data=1, fsdp=n))
        mesh = make_mesh(c.mesh, devices=jax.devices()[:n])
        tx, schedule = make_optimizer(c.optim, c.train.num_steps)
        g = c.train.global_batch_size
        with jax.set_mesh(mesh), axis_rules(c.mesh.rules):
            graphdef, state, sh = build_train_state(c, tx, mesh, c.mesh.rules)
            batch = to_global(make_data_source(c).batch(0, g), mesh, c.mesh.rules, g)
            step = compile_train_step(c, graphdef, tx, schedule, sh, batch, mesh, c.mesh.rules)
            compiled = step.lower(state, batch, jax.random.key(0)).compile()
            stats = compiled.memory_analysis()
            sizes[n] = stats.argument_size_in_bytes
            line = memory_summary(stats)  # what the trainer logs: one line, not the stats dump
            assert "\n" not in line and "CompiledMemoryStats" not in line
            assert f"arguments {stats.argument_size_in_bytes / 2**20:.1f} MB" in line
    assert sizes[8] < sizes[1] / 4, sizes


@pytest.mark.parametrize("optimizer", ["adamw", "dadam"])
def test_optimizers_train_and_ema_follows_every_n_steps(optimizer):
    cfg = small_cfg(data=1)
    optim = dataclasses.replace(cfg.optim, optimizer=optimizer, lr=3e-3 if optimizer == "adamw" else 1.0,
                                warmup_steps=2, ema_decay=0.5, ema_every=2)
    cfg = dataclasses.replace(cfg, optim=optim)
    mesh = make_mesh(cfg.mesh, devices=jax.devices()[:1])
    data, (tx, schedule) = make_data_source(cfg), make_optimizer(cfg.optim, cfg.train.num_steps)
    g = cfg.train.global_batch_size
    with jax.set_mesh(mesh), axis_rules(cfg.mesh.rules):
        graphdef, state, shardings = build_train_state(cfg, tx, mesh, cfg.mesh.rules)
        step = compile_train_step(cfg, graphdef, tx, schedule, shardings, to_global(data.batch(0, g), mesh,
                                  cfg.mesh.rules, g), mesh, cfg.mesh.rules)
        leaf = lambda tree: np.asarray(tree["lm"]["heads"].get_value())
        losses, ema_prev = [], leaf(state.ema_params)
        for i in range(10):
            params_before = leaf(state.params)
            state, m = step(state, to_global(data.batch(i, g), mesh, cfg.mesh.rules, g), jax.random.key(i))
            losses.append(float(m["loss"]))
            ema, params = leaf(state.ema_params), leaf(state.params)
            if (i + 1) % 2:  # EMA untouched between its updates
                np.testing.assert_array_equal(ema, ema_prev)
            else:
                np.testing.assert_allclose(ema, 0.5 * ema_prev + 0.5 * params, rtol=1e-6, atol=1e-7)
            assert np.array_equal(params, params_before) == (i == 0)  # warmup starts at lr 0
            ema_prev = ema
    assert np.mean(losses[-3:]) < np.mean(losses[:2]), losses


def test_remat_policies_change_memory_not_numbers():
    """Each named policy gives the loss and gradient of no remat; keeping less from the forward pass
    needs less temporary memory (what `magnet-jax compile` reports)."""
    base = small_cfg(data=1)
    base = dataclasses.replace(base, lm=dataclasses.replace(base.lm, dim=64, num_layers=3),
                               train=dataclasses.replace(base.train, global_batch_size=16))
    mesh = make_mesh(base.mesh, devices=jax.devices()[:1])
    tx, schedule = make_optimizer(base.optim, base.train.num_steps)
    g, rules = base.train.global_batch_size, base.mesh.rules
    temps, out = {}, {}
    with jax.set_mesh(mesh), axis_rules(rules):
        batch = to_global(make_data_source(base).batch(0, g), mesh, rules, g)
        for policy in ("off", "nothing_saveable", "dots_saveable", "offload_dots_with_no_batch_dims"):
            lm = dataclasses.replace(base.lm, remat=policy != "off",
                                     remat_policy="nothing_saveable" if policy == "off" else policy)
            cfg = dataclasses.replace(base, lm=lm)
            graphdef, state, sh = build_train_state(cfg, tx, mesh, rules)
            compiled = compile_train_step(cfg, graphdef, tx, schedule, sh, batch, mesh, rules).lower(
                state, batch, jax.random.key(0)).compile()
            temps[policy] = compiled.memory_analysis().temp_size_in_bytes
            _, metrics = compiled(state, batch, jax.random.key(0))
            out[policy] = (float(metrics["loss"]), float(metrics["grad_norm"]))
    for policy in ("nothing_saveable", "dots_saveable", "offload_dots_with_no_batch_dims"):
        np.testing.assert_allclose(out[policy], out["off"], rtol=1e-5)
    assert temps["nothing_saveable"] < temps["dots_saveable"] <= temps["off"], temps
    with pytest.raises(ValueError, match="lm.remat_policy='dots'.*nothing_saveable"):
        dataclasses.replace(base, lm=dataclasses.replace(base.lm, remat_policy="dots"))


@pytest.mark.parametrize("kind", ["magnet", "hybrid"])
def test_gradient_accumulation_equals_the_large_batch(kind):
    """train.grad_accum_steps=4: the same masks, loss and update as one step on the whole batch."""
    base = small_cfg(data=2)
    if kind == "hybrid":
        base = dataclasses.replace(base, lm=dataclasses.replace(base.lm, kind="hybrid", codebook_delays=(0, 1, 2, 3)))
    accum = dataclasses.replace(base, train=dataclasses.replace(base.train, grad_accum_steps=4))
    ref, ref_state, _ = run_steps(base, 2, steps=2)
    got, state, _ = run_steps(accum, 2, steps=2)
    for name in ("loss", "grad_norm"):  # the norm: accumulated gradients are averaged, not summed
        np.testing.assert_allclose(got[name], ref[name], rtol=2e-5, err_msg=name)
    for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
    bad = dataclasses.replace(base, train=dataclasses.replace(base.train, grad_accum_steps=3))
    with pytest.raises(ValueError, match="grad_accum_steps=3 does not divide the per-device batch 4"):
        check_batch_sizes(bad, make_mesh(bad.mesh, devices=jax.devices()[:2]), bad.mesh.rules)
