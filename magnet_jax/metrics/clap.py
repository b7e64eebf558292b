"""The CLAP score (MAGNeT/MusicGen papers; audiocraft's `CLAPTextConsistencyMetric`) with a native Flax CLAP.

Protocol, as audiocraft runs it with LAION's music checkpoint `music_audioset_epoch_15_esc_90.14.pt`
(HTSAT-base + roberta-base, no feature fusion):
  audio:  [B, C, T] at any rate -> resampled to 48 kHz and downmixed to mono (`convert_audio`, then the channel
          mean); no int16 quantisation (audiocraft calls laion_clap with `use_tensor=True`, which skips it);
          each clip longer than 10 s (480000 samples) is cropped at a random offset (laion_clap's
          'rand_trunc'), a shorter one is repeated floor(480000 / n) times and zero-padded to 10 s
          ('repeatpad'); the whole padded batch row is used (audiocraft ignores `sizes`).
  text:   roberta-base's tokenizer, padding="max_length", truncation, max_length=77.
  score:  cosine similarity (eps 1e-8) of the L2-normalised audio and text embeddings, pair by pair,
          averaged over all pairs (cosine_sum / count).
The resampler is soxr (`magnet_jax.data.audio_io`), not julius: band-limited both, not bit-identical.
Crop offsets come from the scorer's own seeded generator rather than numpy's global one.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from magnet_jax.data.audio_io import convert_audio
from magnet_jax.metrics.clap_audio import HTSATConfig
from magnet_jax.metrics.clap_model import MUSIC_CLAP, ClapConfig, ClapModel

TEXT_MAX_LENGTH = 77
Tokenizer = Callable[[Sequence[str]], Tuple[np.ndarray, np.ndarray]]


def fit_clip(wav: np.ndarray, clip_samples: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """One mono clip [T] -> [clip_samples]: random crop if longer (offset 0 without `rng`), repeat-pad if
    shorter (laion_clap's 'rand_trunc' / 'repeatpad')."""
    wav = np.asarray(wav, np.float32)
    n = wav.shape[-1]
    if n == 0:
        raise ValueError("an empty clip has no CLAP embedding")
    if n > clip_samples:
        start = 0 if rng is None else int(rng.integers(0, n - clip_samples + 1))
        return wav[start:start + clip_samples]
    if n < clip_samples:
        wav = np.tile(wav, clip_samples // n)
        wav = np.pad(wav, (0, clip_samples - wav.shape[0]))
    return wav


def prepare_audio(wavs, sample_rate: int, cfg: HTSATConfig,
                  rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """[B, T] (mono) or [B, C, T] audio at `sample_rate` -> [B, clip_samples] mono at cfg.sample_rate."""
    wavs = np.asarray(wavs, np.float32)
    if wavs.ndim == 2:
        wavs = wavs[:, None]
    if wavs.ndim != 3:
        raise ValueError(f"expected [B, T] or [B, C, T] audio, got shape {wavs.shape}")
    mono = convert_audio(wavs, sample_rate, cfg.sample_rate, 1)[:, 0]
    return np.stack([fit_clip(w, cfg.clip_samples, rng) for w in mono])


def load_roberta_tokenizer(name_or_path: Union[str, os.PathLike] = "roberta-base") -> Tokenizer:
    """roberta-base's BPE tokenizer (a hub name, or a folder with vocab.json + merges.txt), called as
    audiocraft calls it. Returns captions -> (input_ids, attention_mask) int32 [B, 77]."""
    from transformers import RobertaTokenizer

    tok = RobertaTokenizer.from_pretrained(os.fspath(name_or_path))
    return roberta_tokenize_fn(tok)


def roberta_tokenize_fn(tok) -> Tokenizer:
    def tokenize(captions: Sequence[str]):
        out = tok(list(captions), padding="max_length", truncation=True, max_length=TEXT_MAX_LENGTH,
                  return_tensors="np")
        return np.asarray(out["input_ids"], np.int32), np.asarray(out["attention_mask"], np.int32)

    return tokenize


def cosine_similarity(a, b, eps: float = 1e-8) -> np.ndarray:
    """Row-wise cosine similarity [B] (torch.nn.functional.cosine_similarity(a, b, dim=1, eps=eps))."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na = np.maximum(np.linalg.norm(a, axis=-1), eps)
    nb = np.maximum(np.linalg.norm(b, axis=-1), eps)
    return (np.sum(a * b, axis=-1) / (na * nb)).astype(np.float32)


def clap_score(audio_emb, text_emb) -> float:
    """audiocraft's CLAP score: the mean over pairs of cosine(audio_emb[i], text_emb[i])."""
    if np.shape(audio_emb) != np.shape(text_emb) or np.ndim(audio_emb) != 2 or not len(audio_emb):
        raise ValueError(f"expected two [B, D] embeddings, B > 0, got {np.shape(audio_emb)} and {np.shape(text_emb)}")
    return float(np.mean(cosine_similarity(audio_emb, text_emb)))


@nnx.jit
def _audio_forward(model: ClapModel, wav):
    return model.audio(wav)


@nnx.jit
def _text_forward(model: ClapModel, ids, mask):
    return model.text(ids, mask)


class ClapScorer:
    """CLAP embeddings and score with a Flax `ClapModel` (see `load_clap`) and a RoBERTa tokenizer."""

    def __init__(self, model: ClapModel, tokenizer: Optional[Tokenizer] = None, *, seed: int = 0,
                 precision: str = "highest"):
        """`precision`: jax matmul precision of the forward passes ("highest": float32 matmuls everywhere,
        so a score does not depend on the accelerator's default bf16 passes)."""
        self.model, self.tokenizer, self.precision = model, tokenizer, precision
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike],
                        tokenizer: Union[str, os.PathLike, Tokenizer] = "roberta-base",
                        config: ClapConfig = MUSIC_CLAP, *, seed: int = 0,
                        precision: str = "highest") -> "ClapScorer":
        """`path`: the laion_clap checkpoint; `tokenizer`: a roberta-base folder / hub name, or a callable."""
        from magnet_jax.metrics.convert_clap import load_clap

        tok = tokenizer if callable(tokenizer) else load_roberta_tokenizer(tokenizer)
        return cls(load_clap(path, config), tok, seed=seed, precision=precision)

    def audio_embeddings_from_clips(self, clips) -> np.ndarray:
        """[B, clip_samples] mono clips at the model's rate -> [B, joint_dim]."""
        with jax.default_matmul_precision(self.precision):
            return np.asarray(_audio_forward(self.model, jnp.asarray(clips, jnp.float32)))

    def audio_embeddings(self, wavs, sample_rate: int) -> np.ndarray:
        """[B, T] or [B, C, T] audio at `sample_rate` -> unit-norm [B, joint_dim] (512 for the music model)."""
        return self.audio_embeddings_from_clips(prepare_audio(wavs, sample_rate, self.model.cfg.audio, self.rng))

    def text_embeddings_from_ids(self, input_ids, attention_mask) -> np.ndarray:
        with jax.default_matmul_precision(self.precision):
            return np.asarray(_text_forward(self.model, jnp.asarray(input_ids, jnp.int32),
                                            jnp.asarray(attention_mask, jnp.int32)))

    def text_embeddings(self, captions: Sequence[str]) -> np.ndarray:
        """Captions -> unit-norm [B, joint_dim]."""
        if self.tokenizer is None:
            raise ValueError("this ClapScorer has no tokenizer: pass one (load_roberta_tokenizer('roberta-base'))")
        return self.text_embeddings_from_ids(*self.tokenizer(list(captions)))

    def clap_score(self, wavs, sample_rate: int, captions: Sequence[str]) -> float:
        if len(captions) != len(wavs):
            raise ValueError(f"{len(wavs)} clips but {len(captions)} captions")
        return clap_score(self.audio_embeddings(wavs, sample_rate), self.text_embeddings(captions))
