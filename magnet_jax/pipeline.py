"""`MAGNeT`: text -> T5 -> conditioned MAGNeT sampler -> EnCodec -> waveform.

    model = MAGNeT.from_pretrained("facebook/magnet-small-10secs")   # or a local folder
    wav = model.generate(["80s disco with a funky bass"], duration=10, seed=0)   # [B, C, N]

A `TextToAudio` pipeline (text_to_audio.py: text encoding, codec, audio I/O), sibling of
`MusicGen`. Decoding defaults come from the checkpoint (`generate.lm` of its `xp.cfg`), or
audiocraft's `MAGNeT.set_generation_params` defaults with `generation_defaults="audiocraft"`;
every call may override them. Hybrid-MAGNeT checkpoints decode with `HybridSampler`, and a
MusicGen pipeline may rescore MAGNeT's steps (`set_rescorer`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from magnet_jax.config import Config
from magnet_jax.decode.hybrid import HybridSampler, HybridSettings
from magnet_jax.decode.long_form import generate_long
from magnet_jax.decode.rescoring import DEFAULT_RESCORE_WEIGHT
from magnet_jax.decode.sampler import MagnetSampler, output_length
from magnet_jax.decode.settings import DecodeKnobs, SamplerSettings
from magnet_jax.text_to_audio import TextToAudio

# audiocraft's spellings of the decoding knobs -> ours.
_ALIASES = {"temp": "temperature", "anneal_temp": "anneal_temperature"}
# span_len is the trained model's, never a decoding choice.
_DECODE_KEYS = ({f.name for f in dataclasses.fields(SamplerSettings)} - {"span_len"}) | {
    "temperature", "max_cfg_coef", "min_cfg_coef", "top_p", "rescore_weight", "hybrid_prefix"}


class MAGNeT(TextToAudio):
    default_name = "magnet"

    def __init__(self, config: Config, model, t5, tokenizer, codec, *, name: str = "magnet",
                 generation_defaults: str = "checkpoint"):
        """See `TextToAudio`; prefer `MAGNeT.from_pretrained`."""
        super().__init__(config, model, t5, tokenizer, codec, name=name, generation_defaults=generation_defaults)
        self.rescorer = None

    @staticmethod
    def _check_lm(config: Config) -> None:
        if config.lm.causal or (config.lm.codebook_delays and config.lm.kind != "hybrid"):
            raise ValueError("this checkpoint is a causal (MusicGen) LM: load it with "
                             "magnet_jax.musicgen.MusicGen, or magnet_jax.loading.load_pretrained")

    @staticmethod
    def _make_sampler(lm):
        if lm.config.kind == "hybrid":
            return HybridSampler(lm)
        return MagnetSampler(lm)

    @property
    def generation_params(self) -> Dict:
        return dataclasses.asdict(self.config.decode)

    @property
    def decoding_keys(self) -> frozenset:
        """The decoding settings `generate` accepts as keyword overrides."""
        return frozenset(_DECODE_KEYS | set(_ALIASES))

    def set_rescorer(self, rescorer: Optional[TextToAudio]) -> MAGNeT:
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
        if not isinstance(rescorer, TextToAudio) or not rescorer.config.lm.causal:
            found = (f"the MAGNeT checkpoint {rescorer.name}" if isinstance(rescorer, TextToAudio)
                     else type(rescorer).__name__)
            raise ValueError(f"the rescorer must be a MusicGen (causal LM) pipeline, got {found}")
        if (rescorer.frame_rate, rescorer.sample_rate) != (self.frame_rate, self.sample_rate):
            raise ValueError(f"the rescorer's codec runs at {rescorer.frame_rate:g} frames/s ({rescorer.sample_rate} "
                             f"Hz) and MAGNeT's at {self.frame_rate:g} frames/s ({self.sample_rate} Hz): they must "
                             "share one codec")
        self.sampler = MagnetSampler(self.model.lm, rescorer=rescorer.model.lm)  # checks codebooks and cards
        self.rescorer = rescorer
        return self

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
