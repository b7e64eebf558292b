"""Masking schedules gamma(t): decoding/training time t in [0, 1] -> mask rate in [0, 1].

Every schedule satisfies gamma(0) = 1 (all masked) and gamma(1) = 0, is non-increasing, and
works on jax arrays, numpy arrays and python floats alike: it only uses the array module of
its input (`_xp`), so the jitted train step gets jnp ops and host tables get numpy float64.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Union

import numpy as np

Schedule = Callable[..., object]


def _xp(t):
    """numpy for numpy arrays / python numbers, jax.numpy for jax arrays and tracers."""
    if isinstance(t, (np.ndarray, np.generic, int, float)):
        return np
    import jax.numpy as jnp  # local: keep this module importable without touching jax

    return jnp


def cosine(t):
    """The MAGNeT / MaskGIT schedule cos(pi t / 2)."""
    return _xp(t).cos(t * (math.pi / 2))


def linear(t):
    return 1 - t


def square(t):
    return 1 - t * t


def sqrt(t):
    return 1 - _xp(t).sqrt(t)


def cubic(t):
    return 1 - t * t * t


_REGISTRY: Dict[str, Schedule] = {}


def register_schedule(name: str, fn: Schedule, overwrite: bool = False) -> None:
    """Adds `fn` under `name`; an existing name is an error unless `overwrite=True`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"schedule name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise TypeError(f"schedule {name!r} must be callable, got {type(fn).__name__}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"schedule {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = fn


def available_schedules() -> List[str]:
    return sorted(_REGISTRY)


def get_schedule(name_or_callable: Union[str, Schedule]) -> Schedule:
    """A registered schedule by name; a callable is returned unchanged (user schedule)."""
    if callable(name_or_callable):
        return name_or_callable
    if isinstance(name_or_callable, str) and name_or_callable in _REGISTRY:
        return _REGISTRY[name_or_callable]
    raise ValueError(
        f"unknown masking schedule {name_or_callable!r}; registered: {', '.join(available_schedules())}"
    )


def schedule_np(name_or_callable: Union[str, Schedule], t) -> np.ndarray:
    """Evaluates a schedule on the host in numpy float64 (for static tables)."""
    t = np.asarray(t, dtype=np.float64)
    return np.asarray(get_schedule(name_or_callable)(t), dtype=np.float64)


for _name, _fn in (("cosine", cosine), ("linear", linear), ("square", square), ("sqrt", sqrt), ("cubic", cubic)):
    register_schedule(_name, _fn)
del _name, _fn
