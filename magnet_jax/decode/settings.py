"""Decoding settings: static ones (shape the compiled program) and traced knobs (don't)."""
from __future__ import annotations

import dataclasses
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from magnet_jax.config import DecodeConfig
from magnet_jax.masking import available_schedules

# Each decoding step is one LM forward; the released models use at most 60 per codebook.
# Beyond this a generation runs for hours (about 6 s a step for magnet_small on 2 CPU cores).
MAX_STEPS_PER_CODEBOOK = 1000


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """Static: changing any of these compiles a new program."""

    decoding_steps: Tuple[int, ...] = (20, 10, 10, 10)
    span_len: int = 3
    span_scoring: str = "max"  # 'max' | 'prod'
    span_arrangement: str = "nonoverlap"  # 'nonoverlap' | 'stride1'
    use_sampling: bool = True
    top_k: int = 0
    anneal_temperature: bool = True
    schedule: str = "cosine"
    cfg: bool = True  # classifier-free guidance: one forward at doubled batch (text | null text)
    # The last layer, the head and the sampling run only where a step samples (its masked
    # frames): at the smallest of this many sizes (a compiled branch each) that holds them.
    # 1: every position at every step (as the reference computes).
    query_buckets: int = 8

    def __post_init__(self):
        if not self.decoding_steps or any(int(s) < 1 for s in self.decoding_steps):
            raise ValueError(f"decoding_steps must be positive step counts per stage, got {self.decoding_steps}")
        if max(int(s) for s in self.decoding_steps) > MAX_STEPS_PER_CODEBOOK:
            raise ValueError(f"decoding_steps {tuple(self.decoding_steps)}: at most {MAX_STEPS_PER_CODEBOOK} steps per "
                             "codebook (each step is one forward of the LM; the released models use 10 to 60)")
        if self.span_len < 1:
            raise ValueError(f"span_len must be >= 1, got {self.span_len}")
        if self.span_scoring not in ("max", "prod"):
            raise ValueError(f"span_scoring must be 'max' or 'prod', got {self.span_scoring!r}")
        if self.span_arrangement not in ("nonoverlap", "stride1"):
            raise ValueError(f"span_arrangement must be 'nonoverlap' or 'stride1', got {self.span_arrangement!r}")
        if self.query_buckets < 1:
            raise ValueError(f"query_buckets must be >= 1, got {self.query_buckets}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if isinstance(self.schedule, str) and self.schedule not in available_schedules():
            raise ValueError(f"unknown schedule {self.schedule!r}; registered: {available_schedules()}")
        object.__setattr__(self, "decoding_steps", tuple(int(s) for s in self.decoding_steps))

    @property
    def chunked(self) -> bool:
        """Non-overlapping spans of span_len > 1: scores per chunk, T trimmed to a multiple."""
        return self.span_len > 1 and self.span_arrangement == "nonoverlap"

    @property
    def least_probable_spans(self) -> bool:
        return self.span_len > 1 and self.span_arrangement == "stride1"

    @property
    def total_steps(self) -> int:
        return sum(self.decoding_steps)

    @classmethod
    def from_config(cls, cfg: DecodeConfig, span_len: int, **overrides) -> "SamplerSettings":
        base = dict(decoding_steps=cfg.decoding_steps, span_len=span_len, span_scoring=cfg.span_scoring,
                    span_arrangement=cfg.span_arrangement, use_sampling=cfg.use_sampling, top_k=cfg.top_k,
                    anneal_temperature=cfg.anneal_temperature, schedule=cfg.schedule,
                    query_buckets=cfg.query_buckets)
        base.update({k: v for k, v in overrides.items() if k in {f.name for f in dataclasses.fields(cls)}})
        return cls(**base)


@struct.dataclass
class DecodeKnobs:
    """Traced: a sweep over these values reuses one compiled program."""

    temperature: jnp.ndarray
    max_cfg_coef: jnp.ndarray
    min_cfg_coef: jnp.ndarray
    top_p: jnp.ndarray
    # Eq. 5's w: MAGNeT's share of the mixed confidence when the sampler has a rescorer.
    rescore_weight: jnp.ndarray

    @classmethod
    def create(cls, temperature=3.0, max_cfg_coef=10.0, min_cfg_coef=1.0, top_p=0.9,
               rescore_weight=1.0) -> "DecodeKnobs":
        """Concrete values are checked here (traced ones cannot be)."""
        values = dict(temperature=temperature, max_cfg_coef=max_cfg_coef, min_cfg_coef=min_cfg_coef, top_p=top_p,
                      rescore_weight=rescore_weight)
        for name, value in values.items():
            _check(value, np.isfinite, f"{name} must be a finite number")
        _check(temperature, lambda v: v >= 0, "temperature must be >= 0 (0 is floored to 0.01, nearly greedy)")
        _check(top_p, lambda v: (v >= 0) & (v <= 1), "top_p must be in [0, 1] (0 turns top-p filtering off)")
        _check(rescore_weight, lambda v: (v >= 0) & (v <= 1),
               "rescore_weight must be in [0, 1] (MAGNeT's share; 1 ignores the rescorer)")
        f = lambda x: jnp.asarray(x, jnp.float32)
        return cls(f(temperature), f(max_cfg_coef), f(min_cfg_coef), f(top_p), f(rescore_weight))

    @classmethod
    def from_config(cls, cfg: DecodeConfig, **overrides) -> "DecodeKnobs":
        vals = dict(temperature=cfg.temperature, max_cfg_coef=cfg.max_cfg_coef, min_cfg_coef=cfg.min_cfg_coef,
                    top_p=cfg.top_p, rescore_weight=1.0)
        vals.update({k: v for k, v in overrides.items() if k in vals})
        return cls.create(**vals)


def _check(value, ok, message: str) -> None:
    if isinstance(value, jax.core.Tracer):
        return
    if not np.all(ok(np.asarray(value, np.float64))):
        raise ValueError(f"{message}, got {value}")
