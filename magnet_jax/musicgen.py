"""`MusicGen`: text -> T5 -> causal LM sampled autoregressively -> EnCodec -> waveform.

    model = MusicGen.from_pretrained("facebook/musicgen-small")   # or a local folder, or load_pretrained
    wav = model.generate(["80s disco with a funky bass"], duration=8, seed=0)

A `TextToAudio` pipeline (text_to_audio.py), sibling of `MAGNeT`: the same text conditioning,
codec and audio plumbing; decoding is the
autoregressive sampler (decode/autoregressive.py) with audiocraft's MusicGen defaults
(sampling, top-k 250, top-p 0, temperature 1, guidance 3), each overridable per call. It
serves as the rescorer and Hybrid-MAGNeT's prefix model too.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from magnet_jax.config import Config
from magnet_jax.decode.autoregressive import ARKnobs, ARSampler, ARSettings
from magnet_jax.text_to_audio import TextToAudio

# audiocraft's MusicGen.set_generation_params defaults
DEFAULTS = dict(use_sampling=True, top_k=250, top_p=0.0, temperature=1.0, cfg_coef=3.0)
_ALIASES = {"temp": "temperature"}


class MusicGen(TextToAudio):
    default_name = "musicgen"
    default_checkpoint = "facebook/musicgen-small"

    def __init__(self, config: Config, model, t5, tokenizer, codec, *, name: str = "musicgen",
                 generation_defaults: str = "checkpoint"):
        """See `TextToAudio`; prefer `MusicGen.from_pretrained` or `magnet_jax.loading.load_pretrained`."""
        super().__init__(config, model, t5, tokenizer, codec, name=name, generation_defaults=generation_defaults)

    @staticmethod
    def _check_lm(config: Config) -> None:
        if not config.lm.causal or len(config.lm.codebook_delays) != config.lm.n_q:
            raise ValueError("this checkpoint is not a causal LM with a delay pattern (not MusicGen): load it "
                             "with magnet_jax.pipeline.MAGNeT")

    @staticmethod
    def _make_sampler(lm):
        return ARSampler(lm)

    rescorer = None  # MusicGen decodes alone (it is the rescorer of MAGNeT's steps)

    def set_rescorer(self, rescorer) -> MusicGen:
        """Rescoring applies to MAGNeT (`MAGNeT.set_rescorer`): refused here; None is no rescoring."""
        if rescorer is not None:
            raise ValueError(f"rescoring applies to MAGNeT; {self.name} is a causal (MusicGen) LM")
        return self

    @property
    def generation_params(self) -> Dict:
        return dict(DEFAULTS)

    @property
    def decoding_keys(self) -> frozenset:
        return frozenset(set(DEFAULTS) | set(_ALIASES))

    def _settings(self, overrides: Dict) -> Tuple[ARSettings, ARKnobs]:
        ov = {_ALIASES.get(k, k): v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(ov) - set(DEFAULTS))
        if unknown:
            raise TypeError(f"{unknown}: not MusicGen decoding settings; valid: {sorted(DEFAULTS)}")
        p = {**DEFAULTS, **ov}
        return (ARSettings(use_sampling=bool(p["use_sampling"]), top_k=int(p["top_k"])),
                ARKnobs.create(temperature=p["temperature"], top_p=p["top_p"], cfg_coef=p["cfg_coef"]))

    def generate_codes(self, descriptions: Sequence[Optional[str]], *, duration: Optional[float] = None,
                       seed: int = 0, prompt_codes=None, progress: Optional[Callable[[int, int], None]] = None,
                       **overrides) -> np.ndarray:
        """codes int32 [B, K, T] for T = duration x frame rate (at most the trained segment)."""
        if isinstance(descriptions, str) or descriptions is None:
            descriptions = [descriptions]
        settings, knobs = self._settings(overrides)
        total = self._frames(duration)
        if total > self._frames(self.duration):
            raise ValueError(f"duration {duration:g} s is longer than the {self.duration:g} s this MusicGen was "
                             "trained on; windowed extension is not implemented for MusicGen yet")
        cond, mask = self.encode_text(descriptions)
        prompt = None if prompt_codes is None else jnp.asarray(prompt_codes, jnp.int32)
        codes = self.sampler.generate(cond, mask, jax.random.key(seed), settings, knobs, length=total, prompt=prompt,
                                      progress=progress)
        return np.asarray(jax.device_get(codes))

