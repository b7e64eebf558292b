"""`TextToAudio`: what every pipeline shares: text encoding, the codec and audio in and out.

    text -> T5 -> projection (condition [B, S, dim]) -> the pipeline's sampler -> codes -> EnCodec -> waveform

`MAGNeT` (pipeline.py) and `MusicGen` (musicgen.py) are its siblings: each says which LMs it
takes, builds its sampler, owns its decoding settings and turns descriptions into codes
(`generate_codes`); text encoding, decoding codes to audio, encoding an audio prompt,
continuation and loading (`from_pretrained`) are here. `loading.load_pretrained` picks the
sibling a checkpoint needs.

The text condition is built as audiocraft builds it: T5 over the batch padded to its longest
caption, the projection, padded positions zeroed, and an empty or None caption as the null
condition.
"""
from __future__ import annotations

import abc
import dataclasses
import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from magnet_jax.config import Config
from magnet_jax.convert.audiocraft_config import AUDIOCRAFT_API_DECODE
from magnet_jax.data.audio_io import convert_audio
from magnet_jax.pretrained_parts import load_pipeline_parts

# Longer audio is windowed, one full decoding per window: an hour is ~540 windows of a 10 s model.
MAX_DURATION_S = 3600.0


def check_duration(duration: float) -> float:
    """A requested duration in seconds, or a clear error."""
    duration = float(duration)
    if not math.isfinite(duration) or duration <= 0:
        raise ValueError(f"duration must be a positive number of seconds, got {duration}")
    if duration > MAX_DURATION_S:
        raise ValueError(f"duration {duration:g} s is longer than the limit of {MAX_DURATION_S:g} s: audio beyond the "
                         "trained segment is generated window by window (one full decoding each), so this would "
                         "run for hours; generate it in parts with generate_continuation")
    return duration


class TextToAudio(abc.ABC):
    default_name = "model"
    default_checkpoint = "facebook/magnet-small-10secs"

    def __init__(self, config: Config, model, t5, tokenizer, codec, *, name: Optional[str] = None,
                 generation_defaults: str = "checkpoint"):
        """model: a `MagnetModel` (text projection + LM); t5: `T5Encoder`; tokenizer: `T5Tokenizer`;
        codec: `EncodecModel`. Prefer `from_pretrained`. generation_defaults: MAGNeT's decoding
        defaults, the checkpoint's `generate.lm` or audiocraft's `MAGNeT.set_generation_params`."""
        self._check_lm(config)
        if codec.num_codebooks != config.lm.n_q or codec.cardinality != config.lm.card:
            raise ValueError(f"the codec gives {codec.num_codebooks} codebooks of {codec.cardinality} codes but the "
                             f"LM models {config.lm.n_q} of {config.lm.card}: they are not a pair")
        if generation_defaults not in ("checkpoint", "audiocraft"):
            raise ValueError(f"generation_defaults must be 'checkpoint' or 'audiocraft', got {generation_defaults!r}")
        if generation_defaults == "audiocraft":
            config = dataclasses.replace(config, decode=AUDIOCRAFT_API_DECODE)
        self.config, self.name = config, self.default_name if name is None else name
        self.compute_dtype = jnp.dtype(model.lm.config.dtype)
        self.model, self.t5, self.tokenizer, self.codec = model, t5, tokenizer, codec
        self.sampler = self._make_sampler(model.lm)
        proj_graph, proj_params = nnx.split(model.conditioner)
        t5_graph, t5_params = nnx.split(t5)
        self._text_params = (proj_params, t5_params)

        def encode_text(params, ids, mask):
            proj, t5p = params
            hidden = nnx.merge(t5_graph, t5p)(ids, mask)
            return nnx.merge(proj_graph, proj)(hidden, mask)

        self._encode_text = jax.jit(encode_text)

    # -- what each pipeline says ------------------------------------------------------------

    @staticmethod
    @abc.abstractmethod
    def _check_lm(config: Config) -> None:
        """Raises unless this pipeline decodes the checkpoint's LM."""

    @staticmethod
    @abc.abstractmethod
    def _make_sampler(lm):
        """The decode/ sampler (a `decode.interface.Sampler`) for `lm`."""

    @property
    @abc.abstractmethod
    def generation_params(self) -> Dict:
        """The decoding defaults."""

    @property
    @abc.abstractmethod
    def decoding_keys(self) -> frozenset:
        """The decoding settings `generate` accepts as keyword overrides."""

    @abc.abstractmethod
    def _settings(self, overrides: Dict) -> Tuple:
        """Keyword overrides -> (static settings, traced knobs) of the sampler."""

    @abc.abstractmethod
    def generate_codes(self, descriptions: Sequence[Optional[str]], *, duration: Optional[float] = None,
                       seed: int = 0, prompt_codes=None, progress: Optional[Callable[[int, int], None]] = None,
                       **overrides) -> np.ndarray:
        """codes int32 [B, K, T] for T = duration x frame rate."""

    # -- properties -------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return int(self.codec.sample_rate)

    @property
    def frame_rate(self) -> float:
        return float(self.codec.frame_rate)

    @property
    def duration(self) -> float:
        """The segment length the model was trained on (seconds); longer audio is windowed."""
        return float(self.config.data.segment_duration)

    # -- loading ----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_dir: Optional[str] = None, **kwargs):
        """A hub name (downloaded when online) or a local folder; see `magnet_jax.pretrained_parts`."""
        defaults = kwargs.pop("generation_defaults", "checkpoint")
        parts = load_pipeline_parts(cls.default_checkpoint if name_or_dir is None else name_or_dir, **kwargs)
        return cls(*parts.modules(), name=parts.name, generation_defaults=defaults)

    # -- text -------------------------------------------------------------------------------

    def encode_text(self, descriptions: Sequence[Optional[str]]) -> Tuple[jnp.ndarray, jnp.ndarray]:
        """(condition [B, S, dim], mask [B, S]); None or "" rows are the null condition."""
        texts = ["" if d is None else str(d) for d in descriptions]
        ids, mask = self.tokenizer(texts)
        empty = np.array([t == "" for t in texts])
        mask = np.where(empty[:, None], 0, np.asarray(mask))
        return self._encode_text(self._text_params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))

    # -- audio ------------------------------------------------------------------------------

    def _frames(self, duration: Optional[float]) -> int:
        return int(check_duration(self.duration if duration is None else duration) * self.frame_rate)

    def decode_codes(self, codes) -> np.ndarray:
        """codes [B, K, T] -> waveform float32 [B, C, N] at `sample_rate` (the codec computes in
        the LM's compute dtype: `dtype="bfloat16"` runs T5, the LM and the decoder in bfloat16)."""
        dtype = None if self.compute_dtype == jnp.float32 else self.compute_dtype
        return np.asarray(jax.device_get(self.codec.decode(jnp.asarray(codes, jnp.int32), dtype=dtype)))

    def generate(self, descriptions: Sequence[Optional[str]], *, duration: Optional[float] = None, seed: int = 0,
                 progress: Optional[Callable[[int, int], None]] = None, **overrides) -> np.ndarray:
        """waveforms float32 [B, C, N] at `sample_rate`."""
        return self.decode_codes(self.generate_codes(descriptions, duration=duration, seed=seed, progress=progress,
                                                     **overrides))

    def encode_audio(self, wav, sample_rate: int) -> np.ndarray:
        """waveform [B, C, N] or [C, N] at `sample_rate` -> codes [B, K, T] (resampled, channels matched)."""
        wav = np.asarray(wav, np.float32)
        if wav.ndim == 2:
            wav = wav[None]
        if wav.ndim != 3:
            raise ValueError(f"audio must be [B, C, N] or [C, N], got shape {wav.shape}")
        channels = int(self.codec.config.audio_channels)
        wav = np.stack([convert_audio(w, int(sample_rate), self.sample_rate, channels) for w in wav])
        return np.asarray(jax.device_get(self.codec.encode(jnp.asarray(wav))))

    def generate_continuation(self, prompt_wav, prompt_sample_rate: int,
                              descriptions: Optional[Sequence[Optional[str]]] = None, *,
                              duration: Optional[float] = None, seed: int = 0,
                              progress: Optional[Callable[[int, int], None]] = None, **overrides) -> np.ndarray:
        """Continues `prompt_wav` ([B, C, N] or [C, N]); the output [B, C, N'] starts with the prompt."""
        prompt = self.encode_audio(prompt_wav, prompt_sample_rate)
        if descriptions is None:
            descriptions = [None] * prompt.shape[0]
        if len(descriptions) != prompt.shape[0]:
            raise ValueError(f"{len(descriptions)} descriptions for {prompt.shape[0]} prompts")
        if prompt.shape[-1] >= self._frames(duration):
            raise ValueError(f"the prompt ({prompt.shape[-1] / self.frame_rate:.2f} s) is not shorter than the "
                             f"requested duration; ask for a longer duration")
        codes = self.generate_codes(descriptions, duration=duration, seed=seed, prompt_codes=prompt,
                                    progress=progress, **overrides)
        return self.decode_codes(codes)
