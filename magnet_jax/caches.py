"""Where magnet_jax keeps what it can compute again: one root, `$MAGNET_JAX_CACHE` or
`~/.cache/magnet_jax` (`$XDG_CACHE_HOME` honoured), holding `converted/` (pretrained models in Flax
form), `metrics/` (the metric models' checkpoints) and `xla/` (JAX's persistent compilation cache)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import jax


def cache_root(cache_dir: Optional[str] = None) -> Path:
    if cache_dir:
        return Path(os.path.expanduser(cache_dir))
    if os.environ.get("MAGNET_JAX_CACHE"):
        return Path(os.environ["MAGNET_JAX_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))) / "magnet_jax"


def enable_compilation_cache(path: Optional[str] = None, min_compile_time_secs: float = 1.0) -> str:
    """JAX's persistent compilation cache (in `path`, by default `<cache root>/xla`): a second process
    reuses compiled samplers and train steps (programs that took at least `min_compile_time_secs`)."""
    path = str(path or cache_root() / "xla")
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
