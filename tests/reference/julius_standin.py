"""A stand-in for `julius.resample_frac`, used by audiocraft's `convert_audio` when julius is absent.

The PaSST KL tests feed audiocraft's metric audio at PaSST's own 32 kHz, where julius returns its input
unchanged (`resample_frac` with equal rates is the identity); this stand-in does that and refuses any
other rate, so it can never silently stand for a real resampler.
"""
from __future__ import annotations

import math
import types


def resample_frac(x, old_sr: int, new_sr: int, zeros: int = 24, rolloff: float = 0.945, output_length=None,
                  full: bool = False):
    old_sr, new_sr = int(old_sr), int(new_sr)
    g = math.gcd(old_sr, new_sr)
    if old_sr // g != new_sr // g:
        raise NotImplementedError(f"the julius stand-in only resamples at equal rates, not {old_sr} -> {new_sr}")
    if output_length is not None and output_length != x.shape[-1]:
        raise NotImplementedError("the julius stand-in does not change lengths")
    return x


def modules() -> dict:
    root = types.ModuleType("julius")
    root.__doc__ = "stand-in (tests/reference/julius_standin.py), not the real julius"
    root.resample_frac = resample_frac
    return {"julius": root}
