"""`load_pretrained`: a checkpoint -> the pipeline its LM needs, `MAGNeT` or (a causal LM) `MusicGen`.

The pipelines are siblings over `text_to_audio.TextToAudio`; this module sits above both, so
neither imports the other to choose. The parts come from `pretrained_parts` (files, conversion
and the converted cache).
"""
from __future__ import annotations

from magnet_jax.musicgen import MusicGen
from magnet_jax.pipeline import MAGNeT
from magnet_jax.pretrained_parts import PipelineParts, load_pipeline_parts

__all__ = ["PipelineParts", "load_pipeline_parts", "load_pretrained", "pipeline_from_parts"]


def pipeline_from_parts(parts: PipelineParts, generation_defaults: str = "checkpoint") -> MAGNeT | MusicGen:
    """The pipeline for loaded parts: a MusicGen for a causal LM, else a MAGNeT."""
    if parts.config.lm.causal:
        return MusicGen(*parts.modules(), name=parts.name)
    return MAGNeT(*parts.modules(), name=parts.name, generation_defaults=generation_defaults)


def load_pretrained(name_or_dir: str, **kwargs) -> MAGNeT | MusicGen:
    """A MAGNeT or, for a causal LM checkpoint (facebook/musicgen-*), a MusicGen pipeline.
    kwargs: `pretrained_parts.load_pipeline_parts`'s, and `generation_defaults` (MAGNeT's)."""
    defaults = kwargs.pop("generation_defaults", "checkpoint")
    return pipeline_from_parts(load_pipeline_parts(name_or_dir, **kwargs), defaults)
