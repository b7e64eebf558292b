"""The config-independent held-out evaluation (eval/token_metrics.py)."""
import dataclasses
import math

import jax
import numpy as np
import pytest

from magnet_jax.config_io import load_config
from magnet_jax.data.host_batches import to_global
from magnet_jax.eval import token_metrics as tm
from magnet_jax.masking import mask_rate_to_span_starts_lut
from magnet_jax.parallel.logical import axis_rules
from magnet_jax.parallel.mesh import make_mesh
from magnet_jax.train.optimizer import make_optimizer
from magnet_jax.train.setup import make_data_source
from magnet_jax.train.state import build_train_state

SMALL = tm.Protocol(examples=12)


def _evaluate(cfg, params_of=None, protocol=SMALL):
    """(summary, params) of `cfg`'s model (random init, or `params_of`) under `protocol`."""
    mesh = make_mesh(cfg.mesh, devices=jax.devices()[:1])
    rules, g = cfg.mesh.rules, cfg.train.global_batch_size
    tx, _ = make_optimizer(cfg.optim, cfg.train.num_steps)
    with jax.set_mesh(mesh), axis_rules(rules):
        graphdef, state, _ = build_train_state(cfg, tx, mesh, rules)
        params = state.params if params_of is None else params_of
        host, n = tm.protocol_batches(make_data_source(cfg), g, protocol)
        batches = [to_global(b, mesh, rules, g) for b in host]
        fn = jax.jit(tm.make_protocol_eval_step(cfg, graphdef, protocol))
        summary = tm.evaluate(fn, params, batches, n, protocol=protocol)
        # Which frames were scored: [K, R] masked frames over the whole held-out set.
        summary["count"] = np.sum([np.asarray(fn(params, b)["count"]) for b in batches], axis=0)
        return summary, params


def test_numbers_do_not_depend_on_the_training_config():
    base = load_config("configs/tiny.py")
    first, params = _evaluate(base)
    other = dataclasses.replace(
        base, masking=dataclasses.replace(base.masking, schedule="linear"),
        lm=dataclasses.replace(base.lm, span_len=1),
        train=dataclasses.replace(base.train, seed=7, eval_batches=5, global_batch_size=5),
        optim=dataclasses.replace(base.optim, lr=1.0, optimizer="dadam"))
    second, _ = _evaluate(other, params_of=params)
    assert first["examples"] == second["examples"] == SMALL.examples
    # Batches of 8 and of 5 (one padding row): the same masked frames, the same losses.
    for k in ("ce", "acc", "ce_cosine_per_stage"):
        np.testing.assert_allclose(first[k], second[k], rtol=2e-6, atol=1e-7)
    assert np.isfinite(first["ce_cosine"]) and abs(first["ce_cosine"] - math.log(64)) < 1.0  # random init
    assert np.shape(first["ce"]) == (4, 5)


def test_a_rows_mask_depends_on_its_example_only():
    lut = mask_rate_to_span_starts_lut(30, 3)
    ids = np.arange(6, dtype=np.int32)
    full = np.asarray(tm.protocol_span_masks(SMALL, 2, 1, ids, 30, lut))
    part = np.asarray(tm.protocol_span_masks(SMALL, 2, 1, np.array([4, -1, 1], np.int32), 30, lut))
    np.testing.assert_array_equal(part[0], full[4])
    np.testing.assert_array_equal(part[2], full[1])
    assert not part[1].any()  # padding: scored nowhere
    other_cell = np.asarray(tm.protocol_span_masks(SMALL, 1, 1, ids, 30, lut))
    assert (other_cell != full).any()  # each (stage, rate) draws its own masks


def test_protocol_masks_hit_their_rates():
    lut = mask_rate_to_span_starts_lut(100, 3)
    ids = np.arange(400, dtype=np.int32)
    for r, rate in enumerate(SMALL.mask_rates):
        frac = np.asarray(tm.protocol_span_masks(SMALL, 0, r, ids, 100, lut)).mean()
        assert abs(frac - rate) < 0.03, (rate, frac)


def test_cosine_bin_weights_are_the_schedules_rate_distribution():
    w = tm.cosine_bin_weights(SMALL.mask_rates)
    assert w.sum() == pytest.approx(1.0)
    rates = np.cos(np.pi / 2 * (np.arange(200_000) + 0.5) / 200_000)  # t uniform on [0, 1]
    hist = np.histogram(rates, bins=[0, 0.2, 0.4, 0.6, 0.8, 1.0])[0] / rates.size
    np.testing.assert_allclose(w, hist, atol=1e-4)
    assert w[-1] > 0.4  # the cosine schedule spends most of its time at high mask rates


def test_summary_weights_the_table():
    ce = np.arange(20, dtype=float).reshape(4, 5)
    s = tm.summarise({"ce_sum": ce * 3, "correct": np.full((4, 5), 1.5), "count": np.full((4, 5), 3.0)}, SMALL)
    w = tm.cosine_bin_weights(SMALL.mask_rates)
    np.testing.assert_allclose(s["ce_cosine_per_stage"], ce @ w)
    assert s["ce_cosine"] == pytest.approx((ce @ w).mean()) and s["acc_cosine"] == pytest.approx(0.5)
    assert "rate 0.9" in tm.format_summary(s)


@pytest.mark.parametrize("bad", [dict(mask_rates=(0.5, 0.3)), dict(mask_rates=(0.0, 0.5)), dict(span_len=0)])
def test_bad_protocols_are_refused(bad):
    with pytest.raises(ValueError, match="protocol"):
        tm.Protocol(**bad)


def test_hybrid_magnet_is_scored_on_magnets_task():
    """A Hybrid-MAGNeT model: boundary 0 (no prefix), the same table as a MAGNeT model's."""
    protocol = tm.Protocol(examples=8)
    cfg = load_config("configs/tiny.py", ["lm.kind=hybrid", "lm.codebook_delays=(0,1,2,3)"])
    summary, _ = _evaluate(cfg, protocol=protocol)
    magnet, _ = _evaluate(load_config("configs/tiny.py"), protocol=protocol)
    assert np.shape(summary["ce"]) == (4, 5) and np.isfinite(summary["ce_cosine"])
    # The same task: as many frames of the same held-out examples scored in every cell (an
    # autoregressive prefix, a boundary other than 0, would take frames away from the masked task).
    np.testing.assert_array_equal(summary["count"], magnet["count"])
    assert summary["examples"] == magnet["examples"] == 8 and magnet["count"].min() > 0
    assert abs(summary["ce_cosine"] - math.log(64)) < 1.0  # random init, as MAGNeT's
