"""The PNG of the loss curves a training run leaves behind."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from magnet_jax.train.metrics import read_metrics


def plot_loss_curves(metrics_path: str, out_png: str, *, baselines: Optional[Dict[str, object]] = None,
                     title: str = "MAGNeT training") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = read_metrics(metrics_path, "train")
    evals = read_metrics(metrics_path, "eval")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if train:
        steps = np.array([r["step"] for r in train])
        per_stage = np.array([[np.nan if v is None else v for v in r["ce_per_stage"]] for r in train], float)
        for k in range(per_stage.shape[1]):
            ok = np.isfinite(per_stage[:, k])
            ax.plot(steps[ok], per_stage[ok, k], color=colors[k % len(colors)], alpha=0.8, label=f"stage {k}")
        ax.plot(steps, [r["loss"] for r in train], color="k", lw=0.8, alpha=0.5, label="all stages")
    ax.set_title("train cross-entropy on masked frames")
    ax2 = axes[1]
    if evals:
        steps = np.array([r["step"] for r in evals])
        per_stage = np.array([[np.nan if v is None else v for v in r["ce_per_stage"]] for r in evals], float)
        for k in range(per_stage.shape[1]):
            ax2.plot(steps, per_stage[:, k], marker="o", ms=3, color=colors[k % len(colors)], label=f"stage {k}")
    ax2.set_title("held-out cross-entropy per stage")
    for a in axes:
        if baselines:
            uni = baselines.get("unigram_nats")
            if uni is not None:
                a.axhline(float(np.mean(uni)), color="gray", ls="--", lw=1, label="unigram baseline")
            floor = baselines.get("floor_nats")
            if floor is not None:
                a.axhline(float(floor), color="gray", ls=":", lw=1, label="noise floor")
        a.set_xlabel("step")
        a.set_ylabel("nats")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
