"""Audio files: read/write round trips, resampling, channels, normalisation, and bad input."""
import os

import numpy as np
import pytest

from magnet_jax.data.audio_io import (AudioError, convert_audio, loudness_lufs, normalize_audio, read_audio,
                                      write_audio)


def _tone(sr, seconds=1.0, freq=440.0, channels=1, amp=0.5):
    t = np.arange(int(sr * seconds)) / sr
    return np.repeat((amp * np.sin(2 * np.pi * freq * t))[None], channels, axis=0).astype(np.float32)


def _peak_hz(wav, sr):
    spec = np.abs(np.fft.rfft(wav[0]))
    return np.fft.rfftfreq(wav.shape[-1], 1 / sr)[spec.argmax()]


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_round_trip_resample_and_channels(tmp_path, suffix):
    path = write_audio(tmp_path / f"a{suffix}", _tone(44100, channels=2), 44100, strategy="peak")
    wav, sr = read_audio(path)
    assert sr == 44100 and wav.shape == (2, 44100)
    assert abs(np.abs(wav).max() - 10 ** (-1 / 20)) < 1e-3  # peak at -1 dBFS
    mono, sr = read_audio(path, sample_rate=32000, channels=1)
    assert sr == 32000 and mono.shape == (1, 32000)
    assert abs(_peak_hz(mono, 32000) - 440) <= 1.0
    part, _ = read_audio(path, start_s=0.25, duration_s=0.5)
    assert part.shape == (2, 22050)
    np.testing.assert_allclose(part, wav[:, 11025:33075], atol=1e-6)
    assert convert_audio(mono, 32000, 32000, 2).shape == (2, 32000)


def test_strategies():
    sr = 32000
    quiet = _tone(sr, amp=0.05)
    rms = normalize_audio(quiet, sr, strategy="rms", rms_headroom_db=18)
    assert abs(20 * np.log10(np.sqrt(np.mean(rms ** 2))) + 18) < 0.05
    loud = normalize_audio(quiet, sr, strategy="loudness", loudness_headroom_db=14)
    assert abs(loudness_lufs(loud, sr) + 14) < 0.1
    clipped = normalize_audio(_tone(sr, amp=2.0), sr, strategy="clip")
    assert np.abs(clipped).max() <= 10 ** (-1 / 20) + 1e-6
    silent = np.zeros((1, sr), np.float32)
    for strategy in ("peak", "rms", "loudness"):
        np.testing.assert_array_equal(normalize_audio(silent, sr, strategy=strategy), silent)
    kept = normalize_audio(quiet, sr, strategy="peak", normalize=False)
    np.testing.assert_array_equal(kept, quiet)  # no boost without normalize, only protection
    with pytest.raises(AudioError, match="strategy"):
        normalize_audio(quiet, sr, strategy="loudest")


def test_errors(tmp_path):
    with pytest.raises(AudioError, match="no audio file"):
        read_audio(tmp_path / "missing.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(os.urandom(400))
    with pytest.raises(AudioError, match="could not decode"):
        read_audio(junk)
    empty = write_audio(tmp_path / "short.wav", _tone(16000, seconds=0.01), 16000)
    with pytest.raises(AudioError, match="no audio samples"):
        read_audio(empty, start_s=1.0)
    with pytest.raises(AudioError, match="channels"):
        read_audio(empty, channels=3)
    with pytest.raises(AudioError, match="NaN"):
        write_audio(tmp_path / "nan.wav", np.full((1, 10), np.nan), 16000)
    with pytest.raises(AudioError, match=r"\[C in"):
        write_audio(tmp_path / "bad.wav", np.zeros((3, 10)), 16000)
    with pytest.raises(AudioError, match=".wav or .flac"):
        write_audio(tmp_path / "x.mp3", _tone(16000), 16000)


def test_failed_write_keeps_existing_file(tmp_path, monkeypatch):
    import soundfile

    target = write_audio(tmp_path / "keep.wav", _tone(16000), 16000)
    before = target.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(soundfile, "write", boom)
    with pytest.raises(RuntimeError):
        write_audio(target, _tone(16000, freq=880), 16000)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.wav"]  # no temp file left
