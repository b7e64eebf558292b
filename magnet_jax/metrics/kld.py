"""The KL-divergence metric as audiocraft 1.3.0 computes it (audiocraft/metrics/kld.py,
`KLDivergenceMetric` + `PasstKLDivergenceMetric`), in numpy on top of the Flax PaSST.

audiocraft's protocol, followed here:
1. Each clip (generated and reference alike, [C, T] with its real length `size` and `sample_rate`) is cut
   to `size`, mixed to mono, resampled to 32 kHz and split into consecutive segments of the model's
   window (10, 20 or 30 s), without padding; segments of 0.15 s (4800 samples) or less are dropped
   (`magnet_jax.metrics.passt.passt_segments`).
2. Each segment gets its own label distribution: the softmax (not a sigmoid) over PaSST's 527 AudioSet
   logits. A clip's segments are NOT pooled: every segment is one row, so a 25 s clip scored with the
   10 s model counts as 3 comparisons (audiocraft's `.mean(dim=0)` is over a batch of one).
3. Per row, KL(target || pred) = sum_c target_c (log target_c - log(pred_c + 1e-6)), torch's
   `kl_div((pred + eps).log(), target, reduction='none').sum(-1)` (a zero target term counts 0).
   "kld" / "kld_pq" is that (generated audio's probabilities as `pred`), "kld_qp" the reverse
   (reference as `pred`), "kld_both" their sum.
4. Sums of the per-row values over all updates are divided by the number of rows.

Departures: resampling is soxr rather than julius (see passt_segments), and the per-row KL and the
running sums are float64 where audiocraft's are float32.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from magnet_jax.metrics.passt import PaSST, passt_label_probs

EPSILON = 1e-6


def kl_divergence(pred_probs: np.ndarray, target_probs: np.ndarray, epsilon: float = EPSILON) -> np.ndarray:
    """[B, num_classes] x 2 -> [B]: sum_c target (log target - log(pred + epsilon)), 0 where target is 0."""
    p = np.asarray(pred_probs, np.float64)
    q = np.asarray(target_probs, np.float64)
    if p.shape != q.shape:
        raise ValueError(f"pred_probs {p.shape} and target_probs {q.shape} differ in shape")
    with np.errstate(divide="ignore", invalid="ignore"):
        q_log_q = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
    return (q_log_q - q * np.log(p + epsilon)).sum(-1)


class KLDivergence:
    """Running KL sums, `KLDivergenceMetric.update` / `compute` from label probabilities."""

    def __init__(self, epsilon: float = EPSILON):
        self.epsilon = epsilon
        self.kld_pq_sum = 0.0
        self.kld_qp_sum = 0.0
        self.weight = 0

    def update_probs(self, preds_probs: Optional[np.ndarray], targets_probs: Optional[np.ndarray]) -> None:
        """preds_probs (generated) and targets_probs (reference), [rows, num_classes]; None (no segment
        long enough, audiocraft's empty batch) adds nothing."""
        if preds_probs is None or targets_probs is None:
            return
        preds_probs, targets_probs = np.asarray(preds_probs), np.asarray(targets_probs)
        if preds_probs.shape != targets_probs.shape:
            raise ValueError(f"generated {preds_probs.shape} and reference {targets_probs.shape} label "
                             "distributions differ in shape")
        pq = kl_divergence(preds_probs, targets_probs, self.epsilon)
        if np.isnan(pq).any():
            raise FloatingPointError("kld_scores contains NaN value(s)")
        self.kld_pq_sum += float(pq.sum())
        self.kld_qp_sum += float(kl_divergence(targets_probs, preds_probs, self.epsilon).sum())
        self.weight += pq.shape[0]

    def compute(self) -> Dict[str, float]:
        if self.weight <= 0:
            raise ValueError("Unable to compute with total number of comparisons <= 0")
        pq, qp = self.kld_pq_sum / self.weight, self.kld_qp_sum / self.weight
        return {"kld": pq, "kld_pq": pq, "kld_qp": qp, "kld_both": pq + qp}


def label_distribution(model: PaSST, x: Sequence[np.ndarray], sizes: Sequence[int],
                       sample_rates: Sequence[int]) -> Optional[np.ndarray]:
    """`PasstKLDivergenceMetric._get_label_distribution`: x [B, C, T] (or a list of [C, T]) -> the
    segments' softmax rows of all clips stacked, [rows, num_classes], or None when there are none."""
    rows = []
    for wav, size, sr in zip(x, sizes, sample_rates):
        wav = np.asarray(wav)[..., :int(size)]
        rows.append(passt_label_probs(model, wav, int(sr)))
    rows = [r for r in rows if r.shape[0]]
    return np.concatenate(rows, axis=0) if rows else None


class PasstKLDivergence(KLDivergence):
    """`PasstKLDivergenceMetric` on audio: `update(preds, targets, sizes, sample_rates)` with generated
    and reference audio [B, C, T] as numpy, then `compute()`."""

    def __init__(self, model: PaSST, epsilon: float = EPSILON):
        super().__init__(epsilon)
        self.model = model

    def update(self, preds, targets, sizes, sample_rates) -> None:
        preds, targets = np.asarray(preds), np.asarray(targets)
        if preds.shape != targets.shape:
            raise ValueError(f"generated {preds.shape} and reference {targets.shape} audio differ in shape")
        if preds.shape[0] == 0:
            raise ValueError("Cannot update the loss with empty tensors")
        self.update_probs(label_distribution(self.model, preds, sizes, sample_rates),
                          label_distribution(self.model, targets, sizes, sample_rates))


def passt_kld(model: PaSST, preds, targets, sizes, sample_rates) -> Dict[str, float]:
    """One-shot metric over a batch: {'kld', 'kld_pq', 'kld_qp', 'kld_both'}."""
    metric = PasstKLDivergence(model)
    metric.update(preds, targets, sizes, sample_rates)
    return metric.compute()
