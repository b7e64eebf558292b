"""Audio files in and out: soundfile to read and write, soxr to resample, pyloudnorm for loudness.

Normalisation follows audiocraft's `audio_write`/`normalize_audio` strategies: 'peak' (to
-peak_clip_headroom_db dBFS), 'clip', 'rms' (mono RMS to -rms_headroom_db dBFS, then clipped
to +-0.99) and 'loudness' (BS.1770 loudness to -loudness_headroom_db LUFS, optional tanh
compressor, clipped to +-0.99). audiocraft meters loudness with torchaudio; pyloudnorm
implements the same recommendation (gated K-weighted loudness). Silent audio is written as is.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

log = logging.getLogger(__name__)
_SUBTYPES = {"wav": "PCM_16", "flac": "PCM_16"}


class AudioError(ValueError):
    pass


def convert_channels(wav: np.ndarray, channels: int) -> np.ndarray:
    """[C, N] -> [channels, N]: mean to mono, mono repeated to stereo (audiocraft's rules)."""
    c = wav.shape[0]
    if c == channels:
        return wav
    if channels == 1:
        return wav.mean(axis=0, keepdims=True)
    if c == 1:
        return np.repeat(wav, channels, axis=0)
    if c >= channels:
        return wav[:channels]
    raise AudioError(f"cannot turn {c}-channel audio into {channels} channels")


def resample(wav: np.ndarray, from_sr: int, to_sr: int) -> np.ndarray:
    """[C, N] resampled with soxr ('VHQ': transparent for codec input)."""
    if from_sr <= 0 or to_sr <= 0:
        raise AudioError(f"sample rates must be positive, got {from_sr} -> {to_sr}")
    if from_sr == to_sr:
        return wav
    import soxr

    return np.ascontiguousarray(soxr.resample(wav.T, from_sr, to_sr, quality="VHQ").T, dtype=np.float32)


def convert_audio(wav: np.ndarray, from_sr: int, to_sr: int, to_channels: int) -> np.ndarray:
    wav = np.asarray(wav, np.float32)
    if wav.ndim == 1:
        wav = wav[None]
    return resample(convert_channels(wav, to_channels), from_sr, to_sr)


def read_audio(path: Union[str, os.PathLike], *, sample_rate: Optional[int] = None, channels: Optional[int] = None,
               start_s: float = 0.0, duration_s: Optional[float] = None) -> Tuple[np.ndarray, int]:
    """(wav float32 [C, N], sample rate): optionally a slice, resampled, with `channels` channels."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"no audio file at {path}")
    try:
        info = sf.info(str(path))
        start = int(round(start_s * info.samplerate))
        frames = -1 if duration_s is None else int(round(duration_s * info.samplerate))
        data, sr = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as e:
        raise AudioError(f"soundfile could not decode {path} ({e}); is it a valid audio file?") from e
    if data.shape[0] == 0:
        raise AudioError(f"{path} holds no audio samples (from {start_s:.2f} s)")
    wav = np.ascontiguousarray(data.T)
    if channels is not None:
        if channels not in (1, 2):
            raise AudioError(f"channels must be 1 or 2, got {channels}")
        wav = convert_channels(wav, channels)
    if sample_rate is not None:
        wav, sr = resample(wav, sr, sample_rate), sample_rate
    return wav, int(sr)


def loudness_lufs(wav: np.ndarray, sample_rate: int) -> float:
    import pyloudnorm

    return float(pyloudnorm.Meter(sample_rate).integrated_loudness(np.asarray(wav, np.float64).T))


def normalize_audio(wav: np.ndarray, sample_rate: int, *, normalize: bool = True, strategy: str = "peak",
                    peak_clip_headroom_db: float = 1.0, rms_headroom_db: float = 18.0,
                    loudness_headroom_db: float = 14.0, loudness_compressor: bool = False,
                    log_clipping: bool = False) -> np.ndarray:
    wav = np.asarray(wav, np.float32)
    scale_peak = 10 ** (-peak_clip_headroom_db / 20)
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    if strategy == "peak":
        if peak > 0:
            gain = scale_peak / peak
            if normalize or gain < 1:
                wav = wav * gain
        return wav
    if strategy == "clip":
        return np.clip(wav, -scale_peak, scale_peak)
    if strategy == "rms":
        rms = float(np.sqrt(np.mean(wav.mean(axis=0) ** 2)))
        if rms > 0:
            gain = 10 ** (-rms_headroom_db / 20) / rms
            if normalize or gain < 1:
                wav = wav * gain
        return _clip(wav, log_clipping)
    if strategy == "loudness":
        if float(np.sqrt(np.mean(wav ** 2))) >= 2e-3:  # audiocraft's energy floor: too quiet to meter
            gain = 10 ** ((-loudness_headroom_db - loudness_lufs(wav, sample_rate)) / 20)
            wav = wav * gain
            if loudness_compressor:
                wav = np.tanh(wav)
        return _clip(wav, log_clipping)
    if strategy in ("", "none"):
        return wav
    raise AudioError(f"unknown normalisation strategy {strategy!r}: use peak, clip, rms, loudness or none")


def _clip(wav: np.ndarray, log_clipping: bool) -> np.ndarray:
    if log_clipping and np.abs(wav).max() > 0.99:
        log.warning("clipping %.2f%% of the samples", 100 * float(np.mean(np.abs(wav) > 0.99)))
    return np.clip(wav, -0.99, 0.99)


def write_audio(path: Union[str, os.PathLike], wav: np.ndarray, sample_rate: int, *, normalize: bool = True,
                strategy: str = "peak", subtype: Optional[str] = None, **normalize_kwargs) -> Path:
    """Writes [C, N] (or [N]) to .wav or .flac, normalised; atomically (temp file + rename)."""
    import soundfile as sf

    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in _SUBTYPES:
        raise AudioError(f"{path}: write .wav or .flac")
    wav = np.asarray(wav, np.float32)
    if wav.ndim == 1:
        wav = wav[None]
    if wav.ndim != 2 or wav.shape[0] not in (1, 2) or wav.shape[1] == 0:
        raise AudioError(f"audio to write must be [C in (1, 2), N > 0], got shape {wav.shape}")
    if not np.isfinite(wav).all():
        raise AudioError(f"refusing to write {path}: the audio has NaN or infinite samples")
    if sample_rate <= 0:
        raise AudioError(f"bad sample rate {sample_rate}")
    wav = normalize_audio(wav, sample_rate, normalize=normalize, strategy=strategy, **normalize_kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        sf.write(tmp, wav.T, sample_rate, format=fmt.upper(), subtype=subtype or _SUBTYPES[fmt])
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
