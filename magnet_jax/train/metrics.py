"""Training metrics: a JSONL file and TensorBoard event files (process 0 only)."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Tuple

import jax
import numpy as np

from magnet_jax.atomic_files import write_text_atomically


class MetricsWriter:
    """Appends rows to `metrics.jsonl`. Opened for a run that starts at `start_step`, it first sets
    aside the rows past that step (a resumed run writes them again) and a torn last line (a write
    cut by a crash), into `metrics.dropped.jsonl`, so the file reads as one clean run."""

    def __init__(self, workdir: str, *, tensorboard: bool = True, start_step: int = 0):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self.dropped = drop_rows_after(self.path, start_step)
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


def _parse_lines(path: str) -> Tuple[List[dict], List[str]]:
    """(rows, lines that are not rows). Only the last line may be torn (a write cut by a crash);
    a bad line before it means the file was damaged otherwise, and is an error naming it."""
    with open(path) as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    rows, bad = [], []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError as e:
            if i + 1 < len(lines):
                raise ValueError(f"{path} line {i + 1} is not a metrics row ({e}); fix or remove that line") from None
            bad.append(line)
    return rows, bad


def read_metrics(path: str, kind: Optional[str] = None):
    rows, _ = _parse_lines(path)
    return [r for r in rows if kind is None or r.get("kind") == kind]


def drop_rows_after(path: str, step: int) -> int:
    """Moves the rows past `step` (and a torn last line) of `path` to `metrics.dropped.jsonl`
    beside it, keeping everything else in order; returns how many lines moved."""
    if not os.path.isfile(path):
        return 0
    rows, torn = _parse_lines(path)
    keep = [r for r in rows if r.get("step", 0) <= step]
    moved = [json.dumps(r) for r in rows if r.get("step", 0) > step] + torn
    if not moved:
        return 0
    with open(os.path.join(os.path.dirname(path), "metrics.dropped.jsonl"), "a") as f:
        f.write("".join(line + "\n" for line in moved))
    write_text_atomically(path, "".join(json.dumps(r) + "\n" for r in keep))  # the old file or the clean one
    return len(moved)


def summarise_train_window(window) -> Dict[str, object]:
    """Reduce a list of per-step metric dicts (host numpy) to a log line: means, and per-stage
    CE averaged over the steps that trained that stage (None where none did)."""
    out: Dict[str, object] = {}
    for key in ("loss", "acc", "grad_norm", "lr", "masked_frac"):
        out[key] = float(np.mean([m[key] for m in window]))
    if "ce_ar" in window[0]:  # Hybrid-MAGNeT: the autoregressive prefix's CE
        out["ce_prefix"] = float(np.mean([m["ce_ar"] for m in window]))
    count = np.sum([m["stage_count"] for m in window], axis=0)
    for key in ("ce_per_stage", "acc_per_stage"):
        total = np.sum([m[key] for m in window], axis=0)
        out[key] = [float(c / n) if n else float("nan") for c, n in zip(total, count)]
    return out
