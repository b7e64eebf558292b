"""Audio files in and out, following audiocraft's `audio_read` / `audio_write` (audiocraft/data/audio.py,
audio_utils.py) with numpy, soundfile, soxr and pyloudnorm instead of torch, torchaudio, julius and ffmpeg.

Arrays are float32 `[C, N]` (channels first, like audiocraft's tensors). Where this module departs from
audiocraft it says so next to the code: silent input is left silent instead of turning into NaN, writes
are atomic, and the resampler and loudness meter are different implementations of the same maths.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import soundfile
import soxr

from magnet_jax.atomic_files import replace_atomically

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# soxr 'HQ' (its default, ~20-bit precision, -120 dB stopband) rather than 'VHQ' (28-bit): both are far
# below the noise floor of 16-bit audio and of the EnCodec tokens made from it, and HQ is the faster of
# the two, which matters when a data loader resamples every clip it reads.
RESAMPLE_QUALITY = "HQ"

_FORMATS = {"wav": "WAV", "flac": "FLAC"}  # our format name -> soundfile's
_SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")
_MAX_CHANNELS = 8  # FLAC's limit; a [N, C] array passed as [C, N] shows up as thousands of "channels"
_LOUDNESS_ENERGY_FLOOR = 2e-3  # audiocraft's normalize_loudness: quieter (RMS) audio is left as is
_LOUDNESS_BLOCK_S = 0.4  # BS.1770 gating block: the meter needs at least this much audio


class AudioError(ValueError):
    """An audio file or array that cannot be read, converted or written; the message says why."""


class EmptyAudioError(AudioError):
    """A readable file that holds no samples."""


# ----------------------------------------------------------------------------------------- checks


def _check_sample_rate(sample_rate, what: str = "sample_rate") -> int:
    ok = isinstance(sample_rate, (int, float, np.integer, np.floating)) and not isinstance(sample_rate, bool)
    if ok and math.isfinite(sample_rate) and sample_rate > 0 and float(sample_rate).is_integer():
        return int(sample_rate)
    raise AudioError(f"{what} must be a positive whole number of Hz (e.g. 32000), got {sample_rate!r}")


def _check_channels(channels, what: str = "channels") -> int:
    if isinstance(channels, (int, np.integer)) and not isinstance(channels, bool) and 1 <= channels <= _MAX_CHANNELS:
        return int(channels)
    raise AudioError(f"unsupported channel count {what}={channels!r}: expected 1 to {_MAX_CHANNELS} "
                     "(1 = mono, 2 = stereo)")


def _as_channels_first(wav, what: str) -> np.ndarray:
    """[N] or [C, N] float array -> float32 [C, N] (a copy, so callers never modify their input)."""
    wav = np.asarray(wav)
    if not np.issubdtype(wav.dtype, np.floating):
        raise AudioError(f"{what} must hold floating point samples in [-1, 1], got dtype {wav.dtype}")
    if wav.ndim == 1:
        wav = wav[None]
    elif wav.ndim != 2:
        raise AudioError(f"{what} must be [N] or [C, N] (channels first), got shape {wav.shape}")
    if not 1 <= wav.shape[0] <= _MAX_CHANNELS:
        raise AudioError(f"unsupported channel count: {what} has shape {wav.shape}, i.e. {wav.shape[0]} "
                         f"channels; expected [C, N] with C from 1 to {_MAX_CHANNELS} "
                         "(for an [N, C] array pass its transpose, wav.T)")
    if wav.shape[1] == 0:
        raise AudioError(f"{what} is empty (0 samples)")
    return np.array(wav, dtype=np.float32)


# --------------------------------------------------------------------------------- conversions


def convert_channels(wav: np.ndarray, channels: int) -> np.ndarray:
    """[..., C, N] -> [..., channels, N], as audiocraft's `convert_audio_channels`: downmix to mono by the
    mean, repeat mono, keep the first channels of a wider signal; widening a non-mono signal is refused."""
    channels = _check_channels(channels)
    src = wav.shape[-2]
    if src == channels:
        return wav
    if channels == 1:
        return wav.mean(axis=-2, keepdims=True, dtype=np.float64).astype(wav.dtype)
    if src == 1:
        return np.repeat(wav, channels, axis=-2)
    if src > channels:
        return wav[..., :channels, :]
    raise AudioError(f"cannot turn {src}-channel audio into {channels} channels: only mono audio is "
                     "replicated to more channels (as in audiocraft); downmix it to mono first (channels=1)")


def resample(wav: np.ndarray, from_sr: int, to_sr: int) -> np.ndarray:
    """Resamples the last axis with soxr (audiocraft uses julius' windowed-sinc `resample_frac`; both are
    band-limited, so they agree up to filter details, not bit for bit). N samples become
    round(N * to_sr / from_sr)."""
    from_sr = _check_sample_rate(from_sr, "from_sr")
    to_sr = _check_sample_rate(to_sr, "to_sr")
    if from_sr == to_sr:
        return wav
    lead, n = wav.shape[:-1], wav.shape[-1]
    frames = np.ascontiguousarray(wav.reshape(-1, n).T)  # soxr wants [frames, channels]
    out = soxr.resample(frames, from_sr, to_sr, quality=RESAMPLE_QUALITY)
    return np.ascontiguousarray(out.T).reshape(*lead, out.shape[0])


def convert_audio(wav: np.ndarray, from_sr: int, to_sr: int, to_channels: int) -> np.ndarray:
    """Resamples `wav` ([..., C, N] float, or [N] mono) from `from_sr` to `to_sr` Hz and converts it to
    `to_channels` channels (audiocraft's `convert_audio`)."""
    from_sr = _check_sample_rate(from_sr, "from_sr")
    to_sr = _check_sample_rate(to_sr, "to_sr")
    to_channels = _check_channels(to_channels, "to_channels")
    wav = np.asarray(wav)
    if wav.ndim == 1:
        wav = wav[None]
    if wav.ndim == 0 or wav.shape[-1] == 0:
        raise AudioError(f"convert_audio got no samples (shape {wav.shape})")
    if wav.dtype not in (np.float32, np.float64):
        wav = wav.astype(np.float32)
    # Downmixing and resampling are both linear, so their order does not change the result: reduce the
    # channel count first and widen last, so the resampler never works on more channels than needed.
    if to_channels < wav.shape[-2]:
        return resample(convert_channels(wav, to_channels), from_sr, to_sr)
    return convert_channels(resample(wav, from_sr, to_sr), to_channels)


# ------------------------------------------------------------------------------------------ read


def read_audio(path: PathLike, *, sample_rate: Optional[int] = None, channels: Optional[int] = None,
               start_s: float = 0.0, duration_s: Optional[float] = None) -> Tuple[np.ndarray, int]:
    """Reads any file soundfile decodes (wav, flac, ogg, mp3, ...) as float32 `[C, N]` and its sample rate.

    `start_s` / `duration_s` read only that slice, in frames `int(start_s * sr)` and `int(duration_s * sr)`
    at the file's own rate like audiocraft's `audio_read` (a slice running past the end is shorter, not
    padded). Then the audio is converted to `channels` and resampled to `sample_rate` when given.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"no such audio file: {path}")
    if sample_rate is not None:
        sample_rate = _check_sample_rate(sample_rate)
    if channels is not None:
        channels = _check_channels(channels)
    if not (math.isfinite(start_s) and start_s >= 0):
        raise AudioError(f"start_s must be a finite number of seconds >= 0, got {start_s!r}")
    if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0):
        raise AudioError(f"duration_s must be a positive number of seconds (or None for the rest of the "
                         f"file), got {duration_s!r}")
    try:
        with soundfile.SoundFile(str(path)) as f:
            file_sr, total = f.samplerate, f.frames
            offset = int(start_s * file_sr)
            if total > 0 and offset >= total:
                raise AudioError(f"start_s={start_s} is past the end of {path} ({total / file_sr:.3f} s long)")
            frames = -1 if duration_s is None else int(duration_s * file_sr)
            if offset:
                f.seek(offset)
            data = f.read(frames, dtype="float32", always_2d=True)  # [N, C]
    except soundfile.SoundFileError as e:
        raise AudioError(f"soundfile could not decode {path}: {e} (is it a complete audio file in a format "
                         "libsndfile reads, e.g. wav, flac, ogg, mp3?)") from e
    if data.shape[0] == 0:
        raise EmptyAudioError(f"{path} holds no audio (0 samples"
                         + (f" in the requested {duration_s} s slice)" if duration_s is not None else ")"))
    wav = np.ascontiguousarray(data.T)
    if channels is not None:
        wav = convert_channels(wav, channels)
    if sample_rate is not None and sample_rate != file_sr:
        wav = resample(wav, file_sr, sample_rate)
        file_sr = sample_rate
    return wav, file_sr


# ------------------------------------------------------------------------------------ normalise


def _clip(wav: np.ndarray, log_clipping: bool, stem_name: Optional[str]) -> np.ndarray:
    peak = float(np.abs(wav).max())
    if log_clipping and peak > 1:
        fraction = float((np.abs(wav) > 1).mean())
        logger.warning("clipping %s: %.4f of the samples exceed 1 (a bit of clipping is okay); maximum %.3f",
                       stem_name or "", fraction, peak)
    return np.clip(wav, -1.0, 1.0)


def loudness_lufs(wav: np.ndarray, sample_rate: int) -> float:
    """BS.1770-4 integrated loudness of `[C, N]` audio in LUFS, measured with pyloudnorm.

    audiocraft measures with torchaudio's `Loudness`: the same recommendation (K-weighting, 400 ms blocks
    with 75 % overlap, -70 LUFS absolute and -10 LU relative gates) but a different implementation, e.g.
    of the K-weighting biquads, so the two meters can differ by a few hundredths of a dB.
    """
    import pyloudnorm  # imported here: only the 'loudness' strategy needs it

    if wav.shape[0] > 5:
        raise AudioError(f"loudness is defined for at most 5 channels, got {wav.shape[0]}")
    if wav.shape[-1] < _LOUDNESS_BLOCK_S * sample_rate:
        raise AudioError(f"loudness normalisation needs at least {_LOUDNESS_BLOCK_S} s of audio (one BS.1770 "
                         f"block), got {wav.shape[-1] / sample_rate:.3f} s; use strategy='peak' or 'rms'")
    return float(pyloudnorm.Meter(sample_rate).integrated_loudness(wav.T.astype(np.float64)))


def normalize_loudness(wav: np.ndarray, sample_rate: int, loudness_headroom_db: float = 14,
                       loudness_compressor: bool = False,
                       energy_floor: float = _LOUDNESS_ENERGY_FLOOR) -> np.ndarray:
    """Scales `wav` to -`loudness_headroom_db` LUFS (audiocraft's `normalize_loudness`); audio whose RMS is
    below `energy_floor` is returned unchanged, and `loudness_compressor` soft-clips with tanh."""
    energy = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))
    if energy < energy_floor:
        return wav
    loudness = loudness_lufs(wav, sample_rate)
    if not math.isfinite(loudness):  # every block gated away: nothing to measure (audiocraft would assert)
        return wav
    gain = 10.0 ** ((-loudness_headroom_db - loudness) / 20.0)
    out = (gain * wav.astype(np.float64)).astype(np.float32)
    if loudness_compressor:
        out = np.tanh(out)
    return out


def normalize_audio(wav: np.ndarray, sample_rate: Optional[int] = None, *, normalize: bool = True,
                    strategy: str = "peak", peak_clip_headroom_db: float = 1, rms_headroom_db: float = 18,
                    loudness_headroom_db: float = 14, loudness_compressor: bool = False,
                    log_clipping: bool = False, stem_name: Optional[str] = None) -> np.ndarray:
    """audiocraft's `normalize_audio` on a `[C, N]` array (returns a new array). The options are
    keyword-only (audiocraft takes them positionally in another order); `sample_rate` is needed for
    'loudness' only.

    - 'peak': scale so the largest |sample| is -`peak_clip_headroom_db` dBFS.
    - 'clip': clamp to +-(-`peak_clip_headroom_db` dBFS), no scaling.
    - 'rms': scale so the RMS of the mono downmix is -`rms_headroom_db` dBFS, then clip to [-1, 1].
    - 'loudness': scale to -`loudness_headroom_db` LUFS (see `normalize_loudness`), then clip to [-1, 1].
    - 'none' / '': unchanged; audio reaching 1.0 is refused.
    With `normalize=False`, 'peak' and 'rms' only scale down (to avoid clipping), never up; 'clip' and
    'loudness' ignore it, as in audiocraft.

    Departure from audiocraft: silent input (peak or mono RMS of 0) is returned unchanged, where
    audiocraft divides by zero and writes NaNs.
    """
    wav = np.asarray(wav, dtype=np.float32)
    scale_peak = 10 ** (-peak_clip_headroom_db / 20)
    scale_rms = 10 ** (-rms_headroom_db / 20)
    if strategy == "peak":
        peak = float(np.abs(wav).max())
        if peak > 0:
            rescaling = scale_peak / peak
            if normalize or rescaling < 1:
                wav = wav * np.float32(rescaling)
    elif strategy == "clip":
        wav = np.clip(wav, -scale_peak, scale_peak)
    elif strategy == "rms":
        rms = float(np.sqrt(np.mean(np.square(wav.mean(axis=0, dtype=np.float64)))))
        if rms > 0:
            rescaling = scale_rms / rms
            if normalize or rescaling < 1:
                wav = wav * np.float32(rescaling)
        wav = _clip(wav, log_clipping, stem_name)
    elif strategy == "loudness":
        if sample_rate is None:
            raise AudioError("strategy='loudness' needs the sample_rate")
        wav = normalize_loudness(wav, _check_sample_rate(sample_rate), loudness_headroom_db, loudness_compressor)
        wav = _clip(wav, log_clipping, stem_name)
    elif strategy in ("none", ""):
        if float(np.abs(wav).max()) >= 1:
            raise AudioError("strategy='none' leaves the audio as is, but it reaches 1.0 and would clip; "
                             "pick strategy='peak', 'clip', 'rms' or 'loudness'")
    else:
        raise AudioError(f"unknown normalisation strategy {strategy!r}; expected one of "
                         "'peak', 'clip', 'rms', 'loudness', 'none'")
    return wav


# ----------------------------------------------------------------------------------------- write


def _output_path(path: PathLike, format: Optional[str]) -> Tuple[Path, str]:
    """The file to write and its format. Like audiocraft, a path without an audio suffix is a stem that
    gets one ('out' -> 'out.wav'); unlike audiocraft, a path that already ends in .wav / .flac is kept
    (audiocraft would write 'out.wav.wav')."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if format is None:
        format = suffix if suffix in _FORMATS else "wav"
    format = format.lower()
    if format not in _FORMATS:
        raise AudioError(f"unsupported audio format {format!r}; write_audio writes {sorted(_FORMATS)}")
    if suffix == format:
        return path, format
    if suffix in _FORMATS:
        raise AudioError(f"{path} ends in .{suffix} but format={format!r}: drop the suffix or make them agree")
    return Path(f"{path}.{format}"), format


def write_audio(path: PathLike, wav, sample_rate: int, *, format: Optional[str] = None,
                normalize: bool = True, strategy: str = "peak", peak_clip_headroom_db: float = 1,
                rms_headroom_db: float = 18, loudness_headroom_db: float = 14,
                loudness_compressor: bool = False, log_clipping: bool = False,
                subtype: str = "PCM_16", make_parent_dir: bool = True) -> Path:
    """Normalises `wav` ([C, N] or [N] float) as audiocraft's `audio_write` does (see `normalize_audio`) and
    writes it as WAV or FLAC; returns the path written (the stem plus '.wav' / '.flac' if it had no suffix).

    `subtype` is the sample format: 'PCM_16' (audiocraft's, the default), 'PCM_24' or 'FLOAT' (WAV only).
    The file appears atomically: it is written next to its destination under a temporary name and renamed,
    so a failed write leaves no partial file and an older file at that path untouched.
    """
    out, format = _output_path(path, format)
    sample_rate = _check_sample_rate(sample_rate)
    if subtype not in _SUBTYPES:
        raise AudioError(f"unsupported subtype {subtype!r}; expected one of {_SUBTYPES}")
    if not soundfile.check_format(_FORMATS[format], subtype):
        raise AudioError(f"{format} cannot store subtype {subtype!r}; use 'PCM_16' or 'PCM_24'")
    wav = _as_channels_first(wav, "wav")
    if not np.isfinite(wav).all():
        raise AudioError(f"wav holds NaN or infinite samples; refusing to write {out}")
    wav = normalize_audio(wav, sample_rate, normalize=normalize, strategy=strategy,
                          peak_clip_headroom_db=peak_clip_headroom_db, rms_headroom_db=rms_headroom_db,
                          loudness_headroom_db=loudness_headroom_db, loudness_compressor=loudness_compressor,
                          log_clipping=log_clipping, stem_name=str(path))
    if make_parent_dir:
        out.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "xb") as f:  # 'x': never clobber; created with the usual umask permissions
            soundfile.write(f, np.ascontiguousarray(wav.T), sample_rate, subtype=subtype, format=_FORMATS[format])

    replace_atomically(out, write, fsync=True)
    return out
