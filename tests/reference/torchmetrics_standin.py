"""A stand-in for `torchmetrics.Metric`, the base class of audiocraft's `KLDivergenceMetric`.

torchmetrics is not a dependency here, and importing it costs seconds the PaSST tests do not have. The
KL metric uses only `add_state(name, default, dist_reduce_fx)` and plain attribute arithmetic on the
states (`self.kld_pq_sum += ...`), then reads them in `compute()`; `update`/`compute` are called directly,
never through torchmetrics' wrapped forward, syncing or reset. This class provides exactly that: each
state starts as a copy of its default tensor (what torchmetrics does on one process).
"""
from __future__ import annotations

import types

import torch


class Metric(torch.nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self._defaults = {}
        self._reductions = {}

    def add_state(self, name: str, default, dist_reduce_fx=None, persistent: bool = False) -> None:
        if not isinstance(default, torch.Tensor):
            raise NotImplementedError("the torchmetrics stand-in keeps tensor states only")
        self._defaults[name] = default.detach().clone()
        self._reductions[name] = dist_reduce_fx
        setattr(self, name, default.detach().clone())

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def reset(self) -> None:
        for name, default in self._defaults.items():
            setattr(self, name, default.clone())


def modules() -> dict:
    root = types.ModuleType("torchmetrics")
    root.__doc__ = "stand-in (tests/reference/torchmetrics_standin.py), not the real torchmetrics"
    root.Metric = Metric
    return {"torchmetrics": root}
