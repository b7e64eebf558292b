"""The quickstart's verdict: learned or not, from the synthetic data's known rules."""
import pytest

from magnet_jax.cli import main
from magnet_jax.train import verdict as V

# Baselines of the quickstart's held-out batches (card 128, noise 0.1).
UNIGRAM = [4.780, 4.793, 4.805, 4.814]
FLOOR = [0.823, 0.759, 0.829, 0.832]
CHANCE = [0.022, 0.009, 0.008, 0.008]


def test_a_trained_quickstart_is_learned():
    # Measured after the full 1000-step quickstart (2026-12-01).
    v = V.synthetic_verdict([3.356, 0.791, 0.940, 0.931], [4.799, 0.790, 0.940, 0.931], UNIGRAM, FLOOR,
                            [0.13, 0.29, 0.53, 0.60], CHANCE, noise=0.1)
    assert v.learned, str(v)
    assert str(v).startswith("verdict: learned (3 of 3 checks passed")
    assert "FAIL" not in str(v) and "[info] samples match their caption's motif in 0.13" in str(v)


def test_an_untrained_run_is_not_learned_and_says_what_failed():
    # Measured after 120 steps of the quickstart.
    v = V.synthetic_verdict([5.026, 3.204, 2.717, 2.397], [5.166, 3.097, 2.623, 2.303], UNIGRAM, FLOOR,
                            [0.03, 0.02, 0.01, 0.01], CHANCE, noise=0.1)
    assert not v.learned
    assert str(v).startswith("verdict: NOT learned (0 of 3 checks passed)")
    assert str(v).count("[FAIL]") == 3 and "39% 53% 61% of the way (needed: 50%)" in str(v)


@pytest.mark.parametrize("which", ["permutation", "samples", "caption"])
def test_each_check_alone_decides(which):
    """Every check sits exactly at its threshold, then one falls just below it."""
    ce = [u - (u - f) * V.PERMUTATION_PROGRESS for u, f in zip(UNIGRAM, FLOOR)]
    gap0 = UNIGRAM[0] - FLOOR[0]
    ce[0] = UNIGRAM[0] - V.CAPTION_PROGRESS * gap0
    null = [UNIGRAM[0]] + ce[1:]
    agree = [0.1] + [V.SAMPLE_OVER_CHANCE * c for c in CHANCE[1:]]
    args = lambda: (ce, null, UNIGRAM, FLOOR, agree, CHANCE)
    assert V.synthetic_verdict(*args(), noise=0.1).learned
    if which == "permutation":
        ce[2] += 0.01
    elif which == "samples":
        agree[3] -= 0.001
    else:
        ce[0] += 0.01
    v = V.synthetic_verdict(*args(), noise=0.1)
    assert not v.learned and str(v).count("[FAIL]") == 1


def test_smoke_test_exits_nonzero_when_the_run_did_not_learn(tmp_path, capsys):
    rc = main(["train", "--config", "configs/tiny.py", f"--config.train.workdir={tmp_path / 'run'}",
               "--config.train.smoke_test=True", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "verdict: NOT learned" in out and "[FAIL] stages 1-3" in out

