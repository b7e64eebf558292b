"""A stand-in for the one name hear21passt imports from timm: `timm.models._hub.download_cached_file`.

timm (1.0.x) cannot be imported without torchvision (timm.layers imports torchvision.ops), which this
project does not install; hear21passt only uses that function to download pretrained weights, which the
PaSST parity tests never do (they build the model with random weights). The stand-in refuses to download,
so a test that tried would fail loudly rather than reach the network.
"""
from __future__ import annotations

import types


def download_cached_file(url, check_hash=True, progress=False, *args, **kwargs):
    raise RuntimeError(f"the timm stand-in does not download ({url}); the PaSST reference tests use random weights")


def modules() -> dict:
    """The `sys.modules` entries to insert: timm, timm.models, timm.models._hub."""
    root = types.ModuleType("timm")
    root.__doc__ = "stand-in (tests/reference/timm_standin.py), not the real timm"
    models = types.ModuleType("timm.models")
    hub = types.ModuleType("timm.models._hub")
    hub.download_cached_file = download_cached_file
    root.models, models._hub = models, hub
    return {"timm": root, "timm.models": models, "timm.models._hub": hub}
