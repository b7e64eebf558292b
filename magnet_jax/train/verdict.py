"""Did a run on the synthetic data learn? A verdict from the data's known structure.

The synthetic data (data/synthetic.py) has two rules a model can learn:
- stages k > 0: each token is a fixed permutation of the stage k - 1 token at its frame;
- stage 0: the caption's motif, repeated at the caption's tempo from a random phase.

Each is scored as the fraction of the way the held-out CE went from the unigram baseline (a
model that learned nothing) down to the noise floor of the same batches (the Bayes-optimal
predictor: nothing can do better). The permutation is one lookup and is learned early; the
motifs must be memorised, so stage 0 only has to show that the caption is used. Samples must
follow the permutation rule far above chance (random codes follow it in 1 / card of frames).
How far below the data's own rate they stay depends on the decoding settings: under the music
defaults (guidance 10, temperature 3) they drift from the rule where stage 0 misses the
caption's motif, so the check asks for learning, not for the data's rate.
"""
from __future__ import annotations

import dataclasses
from typing import List, Sequence

# Thresholds: fractions of the unigram -> floor gap, and a multiple of the random codes' rate.
PERMUTATION_PROGRESS = 0.5
CAPTION_PROGRESS = 0.2
SAMPLE_OVER_CHANCE = 10.0


@dataclasses.dataclass
class Verdict:
    learned: bool
    lines: List[str]

    def __str__(self) -> str:
        return "\n".join(self.lines)


def _progress(ce: float, unigram: float, floor: float) -> float:
    return (unigram - ce) / max(unigram - floor, 1e-9)


def _nums(xs: Sequence[float], fmt: str = "{:.2f}") -> str:
    return " ".join(fmt.format(x) for x in xs)


def synthetic_verdict(ce: Sequence[float], ce_null_text: Sequence[float], unigram: Sequence[float],
                      floor: Sequence[float], agreement: Sequence[float], random_agreement: Sequence[float],
                      noise: float) -> Verdict:
    """ce, ce_null_text: held-out CE per stage with and without the caption; unigram, floor: per
    stage baselines of those batches; agreement, random_agreement: per stage fraction of frames
    following the rules in the samples and in random codes (SyntheticMusicTokens.structure_agreement)."""
    checks = []  # (passed, text)
    k = len(ce)
    if k > 1:
        stages = range(1, k)
        prog = [_progress(ce[s], unigram[s], floor[s]) for s in stages]
        checks.append((min(prog) >= PERMUTATION_PROGRESS,
                       f"stages 1-{k - 1} (each a fixed permutation of the stage before): held-out CE "
                       f"{_nums([ce[s] for s in stages])} nats, from the unigram baseline "
                       f"{_nums([unigram[s] for s in stages])} to the noise floor {_nums([floor[s] for s in stages])}: "
                       f"{_nums([100 * p for p in prog], '{:.0f}%')} of the way (needed: "
                       f"{PERMUTATION_PROGRESS:.0%})"))
        rates = list(agreement[1:])
        need = [SAMPLE_OVER_CHANCE * r for r in random_agreement[1:]]
        checks.append((all(r >= n for r, n in zip(rates, need)),
                       f"samples follow the permutation rule in {_nums(rates)} of frames (needed: "
                       f"{SAMPLE_OVER_CHANCE:.0f}x random codes, {_nums(need)}; the data {1.0 - noise:.2f})"))
    caption_gain = (ce_null_text[0] - ce[0]) / max(unigram[0] - floor[0], 1e-9)
    checks.append((caption_gain >= CAPTION_PROGRESS,
                   f"stage 0 (the caption's motif): the caption lowers the held-out CE from {ce_null_text[0]:.2f} "
                   f"to {ce[0]:.2f} nats, {caption_gain:.0%} of the way from the unigram baseline {unigram[0]:.2f} to "
                   f"the floor {floor[0]:.2f} (needed: {CAPTION_PROGRESS:.0%})"))
    learned = all(ok for ok, _ in checks)
    head = (f"verdict: learned ({len(checks)} of {len(checks)} checks passed; thresholds from the data's known rules)"
            if learned else
            f"verdict: NOT learned ({sum(ok for ok, _ in checks)} of {len(checks)} checks passed): train longer "
            f"(--config.train.num_steps) or check optim.lr")
    lines = [head] + [f"  [{'pass' if ok else 'FAIL'}] {text}" for ok, text in checks]
    lines.append(f"  [info] samples match their caption's motif in {agreement[0]:.2f} of frames (the data "
                 f"{1.0 - noise:.2f}, random codes {random_agreement[0]:.3f}): memorising the motifs takes longer runs")
    return Verdict(learned, lines)
