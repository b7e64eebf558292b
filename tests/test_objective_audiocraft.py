"""MAGNeT's training objective against audiocraft's `MagnetSolver` itself (its `run_step`, masks
and LUT), installed as the README's test command does: ablations compare variations of this
objective, so the baseline must be audiocraft's."""
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from magnet_jax.config import Config, LMConfig, MaskingConfig
from magnet_jax.convert.audiocraft_lm import load_into, lm_params_from_audiocraft
from magnet_jax.masking import mask_rate_to_span_starts_lut, span_mask
from magnet_jax.models.magnet_lm import MagnetLM
from magnet_jax.train.objectives import build_inputs, stage_loss
from tests.reference import audiocraft_lm as ref_lm
from tests.reference import require
from tests.reference.audiocraft_solver import make_solver

T = 24
CFG = LMConfig(n_q=4, card=32, dim=32, num_heads=4, num_layers=2, subcodes_context=3, span_len=3)


class _TextIsTheCondition:
    """stage_loss's model call, with the batch's `text` already the projected condition."""

    def __init__(self, lm):
        self.lm = lm

    def __call__(self, codes, text, text_mask, *, stage, keep, stage_logits_only):
        return self.lm(codes, text, text_mask, stage=stage, stage_logits_only=stage_logits_only)


@pytest.fixture(scope="module")
def setup():
    torch = require("torch")
    jax.config.update("jax_default_matmul_precision", "highest")
    rng = np.random.default_rng(0)
    cond = rng.normal(size=(3, 5, CFG.dim)).astype(np.float32)
    cond_mask = np.ones((3, 5), bool)
    ref = ref_lm.build_reference_magnet(CFG, cond, cond_mask, seq_len=T, seed=0)
    params, rest = lm_params_from_audiocraft(ref.state_dict_numpy(), CFG)
    assert rest == {}
    lm = MagnetLM(CFG, rngs=nnx.Rngs(0))
    load_into(lm, params)
    provider = ref.model.condition_provider
    condition_tensors = provider(provider.tokenize(ref.attributes([0, 1, 2])))
    codes = rng.integers(0, CFG.card, (3, CFG.n_q, T)).astype(np.int64)
    padding = np.ones((3, T), bool)
    padding[2, 19:] = False  # a clip shorter than the segment
    return torch, ref, lm, cond, cond_mask, condition_tensors, codes, padding


@pytest.mark.parametrize("seed", [0, 1, 2, 5])  # run_step draws stages 3, 1, 0, 2
def test_loss_equals_magnet_solver_run_step(setup, seed):
    """audiocraft draws the stage and the masks in its own run_step; we feed its mask into ours."""
    torch, ref, lm, cond, cond_mask, condition_tensors, codes, padding = setup
    padding_t = torch.from_numpy(np.repeat(padding[:, None, :], CFG.n_q, axis=1))
    solver = make_solver(CFG.span_len, T, ref.model, (condition_tensors, torch.from_numpy(codes), padding_t))
    seen = {}
    get_mask, ce_fn = solver._get_mask, solver._compute_cross_entropy_magnet

    def record_mask(*args):
        seen["span"] = get_mask(*args)
        return seen["span"]

    def record_ce(logits, targets, mask, stage):
        seen["logits"], seen["mask"], seen["stage"] = logits, mask, int(stage)
        return ce_fn(logits, targets, mask, stage)

    solver._get_mask, solver._compute_cross_entropy_magnet = record_mask, record_ce
    random.seed(seed)
    torch.manual_seed(seed)
    with ref._call():
        metrics = solver.run_step(0, None, {})
    stage, span = seen["stage"], seen["span"].numpy()

    cfg = Config(lm=CFG, masking=MaskingConfig())
    batch = {"codes": jnp.asarray(codes, jnp.int32), "text_ids": jnp.asarray(cond), "text_mask": jnp.asarray(cond_mask),
             "padding_mask": jnp.asarray(padding)}
    ce, aux = stage_loss(_TextIsTheCondition(lm), batch, jax.random.key(0), stage, cfg, None, condition="text",
                         span=jnp.asarray(span))
    np.testing.assert_allclose(float(ce), float(metrics["ce"]), rtol=2e-5)
    # The tokens behind the mean: the same targets, each with the same loss.
    loss_mask = seen["mask"].numpy()[:, stage]
    assert int(aux["num_masked"]) == loss_mask.sum() > 0
    ref_tok = torch.nn.functional.cross_entropy(seen["logits"][:, stage].reshape(-1, CFG.card),
                                                torch.from_numpy(codes[:, stage]).reshape(-1),
                                                reduction="none").reshape(3, T).numpy()
    inputs, _ = build_inputs(batch["codes"], stage, jnp.asarray(span), CFG.mask_id)
    logits = np.asarray(lm(inputs, cond, cond_mask, stage=stage))[:, stage]
    ours_tok = jax.nn.logsumexp(logits, -1) - np.take_along_axis(logits, codes[:, stage, :, None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(ours_tok)[loss_mask], ref_tok[loss_mask], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("span_len,seq_len", [(3, 24), (3, 500), (10, 150), (1, 40)])
def test_span_count_table_is_the_solvers(span_len, seq_len):
    solver = make_solver(span_len, seq_len)
    if span_len > 1:
        np.testing.assert_array_equal(mask_rate_to_span_starts_lut(seq_len, span_len),
                                      solver._calc_mean_maskrate_to_u_LUT(seq_len))
    else:  # token masking uses no table: both mask exactly max(round(T * rate), 1) tokens per row
        torch = require("torch")
        rates = np.array([0.0, 0.012, 0.3, 0.5, 0.7625, 0.99, 1.0], np.float32)
        theirs = solver._get_mask(torch.from_numpy(rates), len(rates), seq_len, "cpu").numpy()
        ours = np.asarray(span_mask(jax.random.key(0), rates, seq_len, span_len))
        np.testing.assert_array_equal(ours.sum(1), theirs.sum(1))
        assert theirs.sum(1).tolist() == [1, 1, 12, 20, 30, 40, 40]


@pytest.mark.parametrize("span_len", [1, 3])
def test_span_mask_statistics_match_the_solvers(span_len):
    """Over many draws: the masked fraction (mean and spread) at each rate, and how masked
    frames group into runs, as audiocraft's `_get_mask` draws them."""
    torch = require("torch")
    seq_len, draws = 100, 3000
    solver = make_solver(span_len, seq_len)
    torch.manual_seed(0)
    lut = mask_rate_to_span_starts_lut(seq_len, span_len)
    for i, rate in enumerate([0.05, 0.3, 0.6, 0.95]):
        rates = np.full(draws, rate, np.float32)
        theirs = solver._get_mask(torch.from_numpy(rates), draws, seq_len, "cpu").numpy()
        ours = np.asarray(span_mask(jax.random.key(i), rates, seq_len, span_len, lut))
        f_t, f_o = theirs.mean(1), ours.mean(1)
        assert abs(f_o.mean() - f_t.mean()) < 0.01 and abs(f_o.std() - f_t.std()) < 0.01, (rate, f_o.mean(), f_t.mean())
        assert abs(f_o.mean() - rate) < 0.04
        runs_t, runs_o = _run_starts(theirs).sum(1).mean(), _run_starts(ours).sum(1).mean()
        assert abs(runs_o - runs_t) < 0.03 * max(runs_t, 1), (rate, runs_o, runs_t)


def _run_starts(mask):
    return mask & ~np.pad(mask, ((0, 0), (1, 0)))[:, :-1]
