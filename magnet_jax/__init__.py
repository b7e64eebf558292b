"""magnet_jax: MAGNeT (masked non-autoregressive audio generation) in JAX / Flax NNX."""
from magnet_jax.caches import enable_compilation_cache
from magnet_jax.config import Config, DecodeConfig, LMConfig
from magnet_jax.config_io import load_config
from magnet_jax.decode.sampler import MagnetSampler
from magnet_jax.decode.settings import DecodeKnobs, SamplerSettings
from magnet_jax.loading import load_pretrained
from magnet_jax.models.magnet_lm import MagnetLM
from magnet_jax.musicgen import MusicGen
from magnet_jax.pipeline import MAGNeT
from magnet_jax.version import __version__

__all__ = ["MAGNeT", "MusicGen", "load_pretrained", "Config", "DecodeConfig", "LMConfig", "load_config", "MagnetLM",
           "MagnetSampler", "SamplerSettings", "DecodeKnobs", "enable_compilation_cache", "__version__"]
