"""`MAGNeT`: text -> T5 -> conditioned LM sampler -> EnCodec -> waveform.

    model = MAGNeT.from_pretrained("facebook/magnet-small-10secs")   # or a local folder
    wav = model.generate(["80s disco with a funky bass"], duration=10, seed=0)   # [B, C, N]

The text condition is built as audiocraft builds it: T5 over the batch padded to its longest
caption, the projection, padded positions zeroed, and an empty or None caption as the null
condition. Decoding defaults come from the checkpoint (`generate.lm` of its `xp.cfg`), or
audiocraft's `MAGNeT.set_generation_params` defaults with `generation_defaults="audiocraft"`;
every call may override them.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from magnet_jax.config import Config
from magnet_jax.convert.audiocraft_config import AUDIOCRAFT_API_DECODE
from magnet_jax.decode.long_form import generate_long
from magnet_jax.decode.rescoring import DEFAULT_RESCORE_WEIGHT
from magnet_jax.decode.sampler import MagnetSampler, output_length
from magnet_jax.decode.settings import DecodeKnobs, SamplerSettings
from magnet_jax.loading import load_pipeline_parts

# Longer audio is windowed, one full decoding per window: an hour is ~540 windows of a 10 s model.
MAX_DURATION_S = 3600.0
# audiocraft's spellings of the decoding knobs -> ours.
_ALIASES = {"temp": "temperature", "anneal_temp": "anneal_temperature"}
# span_len is the trained model's, never a decoding choice.
_DECODE_KEYS = ({f.name for f in dataclasses.fields(SamplerSettings)} - {"span_len"}) | {
    "temperature", "max_cfg_coef", "min_cfg_coef", "top_p", "rescore_weight", "hybrid_prefix"}


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


class MAGNeT:
    def __init__(self, config: Config, model, t5, tokenizer, codec, *, name: str = "magnet",
                 generation_defaults: str = "checkpoint"):
        """model: a `MagnetModel` (text projection + LM); t5: `T5Encoder`; tokenizer: `T5Tokenizer`;
        codec: `EncodecModel`. Prefer `MAGNeT.from_pretrained`."""
        self._check_lm(config)
        if codec.num_codebooks != config.lm.n_q or codec.cardinality != config.lm.card:
            raise ValueError(f"the codec gives {codec.num_codebooks} codebooks of {codec.cardinality} codes but the "
                             f"LM models {config.lm.n_q} of {config.lm.card}: they are not a pair")
        if generation_defaults not in ("checkpoint", "audiocraft"):
            raise ValueError(f"generation_defaults must be 'checkpoint' or 'audiocraft', got {generation_defaults!r}")
        if generation_defaults == "audiocraft":
            config = dataclasses.replace(config, decode=AUDIOCRAFT_API_DECODE)
        self.config, self.name = config, name
        self.compute_dtype = jnp.dtype(model.lm.config.dtype)
        self.model, self.t5, self.tokenizer, self.codec = model, t5, tokenizer, codec
        self.sampler = self._make_sampler(model.lm)
        self.rescorer = None
        proj_graph, proj_params = nnx.split(model.conditioner)
        t5_graph, t5_params = nnx.split(t5)
        self._text_params = (proj_params, t5_params)

        def encode_text(params, ids, mask):
            proj, t5p = params
            hidden = nnx.merge(t5_graph, t5p)(ids, mask)
            return nnx.merge(proj_graph, proj)(hidden, mask)

        self._encode_text = jax.jit(encode_text)

    @staticmethod
    def _check_lm(config: Config) -> None:
        if config.lm.causal or (config.lm.codebook_delays and config.lm.kind != "hybrid"):
            raise ValueError("this checkpoint is a causal (MusicGen) LM: load it with "
                             "magnet_jax.musicgen.MusicGen, or magnet_jax.pretrained.load_pretrained")

    @staticmethod
    def _make_sampler(lm):
        if lm.config.kind == "hybrid":
            from magnet_jax.decode.hybrid import HybridSampler

            return HybridSampler(lm)
        return MagnetSampler(lm)

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

    @property
    def generation_params(self) -> Dict:
        return dataclasses.asdict(self.config.decode)

    @property
    def decoding_keys(self) -> frozenset:
        """The decoding settings `generate` accepts as keyword overrides."""
        return frozenset(_DECODE_KEYS | set(_ALIASES))

    # -- loading ----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_dir: str = "facebook/magnet-small-10secs", **kwargs) -> "MAGNeT":
        """A hub name (downloaded when online) or a local folder; see `magnet_jax.loading`."""
        parts = load_pipeline_parts(name_or_dir, **{k: v for k, v in kwargs.items() if k != "generation_defaults"})
        return cls(*parts[:5], name=parts[5], generation_defaults=kwargs.get("generation_defaults", "checkpoint"))

    def set_rescorer(self, rescorer: Optional["MAGNeT"]) -> "MAGNeT":
        """Rescoring (the paper's Eq. 5; decode/rescoring.py): every decoding step also scores
        its candidate with `rescorer`, a MusicGen pipeline over the same codec (its LM and its own
        text conditioning), and `rescore_weight` (default 0.5) mixes the two models' token
        probabilities into the confidence. None turns it off. Returns self."""
        if rescorer is None:
            self.sampler, self.rescorer = self._make_sampler(self.model.lm), None
            return self
        if self.config.lm.causal or self.config.lm.kind == "hybrid":
            raise ValueError(f"rescoring applies to MAGNeT; {self.name} is a "
                             + ("causal (MusicGen) LM" if self.config.lm.causal else "Hybrid-MAGNeT LM"))
        if not isinstance(rescorer, MAGNeT) or not rescorer.config.lm.causal:
            found = (f"the MAGNeT checkpoint {rescorer.name}" if isinstance(rescorer, MAGNeT)
                     else type(rescorer).__name__)
            raise ValueError(f"the rescorer must be a MusicGen (causal LM) pipeline, got {found}")
        if (rescorer.frame_rate, rescorer.sample_rate) != (self.frame_rate, self.sample_rate):
            raise ValueError(f"the rescorer's codec runs at {rescorer.frame_rate:g} frames/s ({rescorer.sample_rate} "
                             f"Hz) and MAGNeT's at {self.frame_rate:g} frames/s ({self.sample_rate} Hz): they must "
                             "share one codec")
        self.sampler = MagnetSampler(self.model.lm, rescorer=rescorer.model.lm)  # checks codebooks and cards
        self.rescorer = rescorer
        return self

    # -- text -------------------------------------------------------------------------------

    def encode_text(self, descriptions: Sequence[Optional[str]]) -> Tuple[jnp.ndarray, jnp.ndarray]:
        """(condition [B, S, dim], mask [B, S]); None or "" rows are the null condition."""
        texts = ["" if d is None else str(d) for d in descriptions]
        ids, mask = self.tokenizer(texts)
        empty = np.array([t == "" for t in texts])
        mask = np.where(empty[:, None], 0, np.asarray(mask))
        return self._encode_text(self._text_params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))

    # -- decoding settings ------------------------------------------------------------------

    def _settings(self, overrides: Dict) -> Tuple[SamplerSettings, DecodeKnobs]:
        ov = {_ALIASES.get(k, k): v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(ov) - _DECODE_KEYS)
        if unknown:
            raise TypeError(f"unknown decoding setting(s) {unknown}; valid: {sorted(_DECODE_KEYS | set(_ALIASES))}")
        if self.rescorer is not None:
            ov.setdefault("rescore_weight", DEFAULT_RESCORE_WEIGHT)
        elif "rescore_weight" in ov:
            raise ValueError("rescore_weight needs a rescorer: model.set_rescorer(MusicGen.from_pretrained(...)), or "
                             "--rescorer on the command line")
        if "decoding_steps" in ov:
            steps = tuple(int(s) for s in np.atleast_1d(ov["decoding_steps"]))
            if len(steps) != self.config.lm.n_q:
                raise ValueError(f"decoding_steps needs {self.config.lm.n_q} entries (one per codebook), got {steps}")
            ov["decoding_steps"] = steps
        settings = SamplerSettings.from_config(self.config.decode, self.config.lm.span_len, **ov)
        return settings, DecodeKnobs.from_config(self.config.decode, **ov)

    # -- generation -------------------------------------------------------------------------

    def _frames(self, duration: Optional[float]) -> int:
        return int(check_duration(self.duration if duration is None else duration) * self.frame_rate)

    def generate_codes(self, descriptions: Sequence[Optional[str]], *, duration: Optional[float] = None,
                       seed: int = 0, prompt_codes=None, progress: Optional[Callable[[int, int], None]] = None,
                       **overrides) -> np.ndarray:
        """codes int32 [B, K, T] for T = duration x frame rate (trimmed to whole spans)."""
        if isinstance(descriptions, str) or descriptions is None:
            descriptions = [descriptions]
        hybrid_prefix = overrides.pop("hybrid_prefix", None)
        if hybrid_prefix is not None and self.config.lm.kind != "hybrid":
            raise ValueError(f"hybrid_prefix applies to Hybrid-MAGNeT checkpoints (lm.kind='hybrid'); {self.name} is "
                             "a MAGNeT LM")
        settings, knobs = self._settings(overrides)
        cond, mask = self.encode_text(descriptions)
        key = jax.random.key(seed)
        if self.config.lm.kind == "hybrid":
            return self._generate_hybrid(cond, mask, key, settings, knobs, duration, hybrid_prefix, prompt_codes)
        total, segment = self._frames(duration), self._frames(self.duration)
        window = output_length(settings, segment)
        prompt = None if prompt_codes is None else jnp.asarray(prompt_codes, jnp.int32)
        if prompt is not None and prompt.shape[:2] != (len(descriptions), self.config.lm.n_q):
            raise ValueError(f"prompt codes must be [B={len(descriptions)}, K={self.config.lm.n_q}, P], "
                             f"got {tuple(prompt.shape)}")
        rescore = None if self.rescorer is None else self.rescorer.encode_text(descriptions)
        # One compiled program per window; progress(done, total) comes from inside it, per step.
        if total <= segment:  # as audiocraft: trimmed to whole spans for non-overlapping spans
            codes = self.sampler.generate(cond, mask, key, settings, knobs, length=total, prompt=prompt,
                                          progress=progress, rescore_condition=rescore)
        else:  # longer than the trained segment: windows continuing each other's last third
            overlap = output_length(settings, max(settings.span_len, window // 3)) or settings.span_len
            codes = generate_long(self.sampler, cond, mask, key, settings, knobs, total_length=total, window=window,
                                  overlap=overlap, prompt=prompt, progress=progress, rescore_condition=rescore)
        return np.asarray(jax.device_get(codes))

    def _generate_hybrid(self, cond, mask, key, settings, knobs, duration, prefix_s, prompt_codes) -> np.ndarray:
        """Hybrid-MAGNeT: `prefix_s` seconds (default decode.hybrid_prefix) autoregressively, then
        MAGNeT's stages (decode/hybrid.py); one window of at most the trained segment."""
        from magnet_jax.decode.hybrid import HybridSettings

        if prompt_codes is not None:
            raise ValueError("audio prompts are not supported for Hybrid-MAGNeT yet: generate without a prompt")
        total, segment = self._frames(duration), self._frames(self.duration)
        if total > segment:
            raise ValueError(f"duration {total / self.frame_rate:g} s is longer than the {self.duration:g} s this "
                             "Hybrid-MAGNeT was trained on; windowed extension is not implemented for it")
        prefix_s = float(self.config.decode.hybrid_prefix if prefix_s is None else prefix_s)
        if not math.isfinite(prefix_s) or prefix_s < 0:
            raise ValueError(f"hybrid_prefix must be a number of seconds >= 0, got {prefix_s}")
        if prefix_s >= total / self.frame_rate:
            raise ValueError(f"the Hybrid prefix ({prefix_s:g} s) must be shorter than the requested duration "
                             f"({total / self.frame_rate:g} s): lower --hybrid-prefix or ask for a longer duration")
        codes = self.sampler.generate(cond, mask, key, HybridSettings(int(round(prefix_s * self.frame_rate)), settings),
                                      knobs, length=total)
        return np.asarray(jax.device_get(codes))

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
        from magnet_jax.data.audio_io import convert_audio

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
