"""Training metrics: a JSONL file and TensorBoard event files (process 0 only)."""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

import jax
import numpy as np


class MetricsWriter:
    def __init__(self, workdir: str, *, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._file = open(self.path, "a", buffering=1)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, kind: str, values: Dict[str, float]):
        if not self.enabled:
            return
        clean = {k: _to_py(v) for k, v in values.items()}
        self._file.write(json.dumps({"step": int(step), "kind": kind, **clean}) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                if isinstance(v, list):
                    for i, x in enumerate(v):
                        if x is not None:
                            self._tb.add_scalar(f"{kind}/{k}_{i}", x, step)
                elif v is not None:
                    self._tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self):
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()


def _to_py(v):
    a = np.asarray(v)
    if a.ndim == 0:
        x = float(a)
        return None if not np.isfinite(x) else x
    return [None if not np.isfinite(x) else float(x) for x in a.reshape(-1)]


def read_metrics(path: str, kind: Optional[str] = None):
    rows = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if kind is None or row.get("kind") == kind:
                rows.append(row)
    return rows


def summarise_train_window(window) -> Dict[str, object]:
    """Reduce a list of per-step metric dicts (host numpy) to a log line: means, and per-stage
    CE averaged over the steps that trained that stage (None where none did)."""
    out: Dict[str, object] = {}
    for key in ("loss", "acc", "grad_norm", "lr", "masked_frac"):
        out[key] = float(np.mean([m[key] for m in window]))
    count = np.sum([m["stage_count"] for m in window], axis=0)
    for key in ("ce_per_stage", "acc_per_stage"):
        total = np.sum([m[key] for m in window], axis=0)
        out[key] = [float(c / n) if n else float("nan") for c, n in zip(total, count)]
    return out
