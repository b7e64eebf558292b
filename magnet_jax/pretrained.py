"""`load_pretrained`: a checkpoint -> the pipeline its LM needs, `MAGNeT` or (a causal LM) `MusicGen`.

It sits above both pipelines (`pipeline.MAGNeT` and `musicgen.MusicGen`, which extends it), so
neither module imports the other to choose.
"""
from __future__ import annotations

from magnet_jax.loading import load_pipeline_parts
from magnet_jax.musicgen import MusicGen
from magnet_jax.pipeline import MAGNeT


def load_pretrained(name_or_dir: str, **kwargs):
    """A MAGNeT or, for a causal LM checkpoint (facebook/musicgen-*), a MusicGen pipeline."""
    defaults = kwargs.pop("generation_defaults", "checkpoint")
    parts = load_pipeline_parts(name_or_dir, **kwargs)
    if parts[0].lm.causal:
        return MusicGen(*parts[:5], name=parts[5])
    return MAGNeT(*parts[:5], name=parts[5], generation_defaults=defaults)
