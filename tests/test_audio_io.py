"""Audio files: round trips, resampling, channels, audiocraft's normalisation strategies, atomic writes,
and clear errors for bad input."""
import os

import numpy as np
import pyloudnorm
import pytest
import soundfile

from magnet_jax.data import audio_io
from magnet_jax.data.audio_io import (AudioError, convert_audio, convert_channels, loudness_lufs, normalize_audio,
                                      read_audio, write_audio)

PEAK_1DB = 10 ** (-1 / 20)  # audiocraft's default peak_clip_headroom_db=1
PCM16 = 1 / 2 ** 15  # one 16-bit step


def _tone(sr, seconds=1.0, freq=440.0, channels=1, amp=0.5):
    t = np.arange(int(round(sr * seconds))) / sr
    return np.repeat((amp * np.sin(2 * np.pi * freq * t))[None], channels, axis=0).astype(np.float32)


def _peak_hz(wav, sr):
    spec = np.abs(np.fft.rfft(wav[0] * np.hanning(wav.shape[-1])))
    return np.fft.rfftfreq(wav.shape[-1], 1 / sr)[spec.argmax()]


def _mono_rms_db(wav):
    return 20 * np.log10(np.sqrt(np.mean(wav.astype(np.float64).mean(axis=0) ** 2)))


def _lufs(wav, sr):  # measured here with pyloudnorm directly, not through audio_io
    return pyloudnorm.Meter(sr).integrated_loudness(wav.T.astype(np.float64))


# ------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
@pytest.mark.parametrize("sr", [32000, 44100])
@pytest.mark.parametrize("channels", [1, 2])
def test_round_trip(tmp_path, suffix, sr, channels):
    wav = _tone(sr, channels=channels)
    path = write_audio(tmp_path / f"tone{suffix}", wav, sr)
    assert path == tmp_path / f"tone{suffix}"
    assert soundfile.info(str(path)).format == suffix[1:].upper()
    assert soundfile.info(str(path)).subtype == "PCM_16"  # audiocraft writes 16-bit PCM
    back, got_sr = read_audio(path)
    assert got_sr == sr and back.dtype == np.float32 and back.shape == (channels, sr)
    # default 'peak' strategy: the tone is rescaled so its peak sits at -1 dBFS, up to 16-bit rounding
    np.testing.assert_allclose(back, wav * (PEAK_1DB / np.abs(wav).max()), atol=PCM16)
    assert abs(_peak_hz(back, sr) - 440) <= 1


def test_float_and_24_bit_subtypes(tmp_path):
    wav = _tone(32000, channels=2, amp=0.3)
    exact = write_audio(tmp_path / "f.wav", wav, 32000, subtype="FLOAT", strategy="none")
    np.testing.assert_array_equal(read_audio(exact)[0], wav)  # float WAV keeps the samples bit for bit
    deep = write_audio(tmp_path / "d.flac", wav, 32000, subtype="PCM_24", strategy="none")
    assert soundfile.info(str(deep)).subtype == "PCM_24"
    np.testing.assert_allclose(read_audio(deep)[0], wav, atol=2 ** -23)


def test_stem_gets_suffix_like_audiocraft(tmp_path):
    wav = _tone(16000)
    assert write_audio(tmp_path / "a", wav, 16000) == tmp_path / "a.wav"
    assert write_audio(tmp_path / "b", wav, 16000, format="flac") == tmp_path / "b.flac"
    assert soundfile.info(str(tmp_path / "b.flac")).format == "FLAC"
    assert write_audio(tmp_path / "song_1.5", wav, 16000) == tmp_path / "song_1.5.wav"  # '.5' is no format
    assert write_audio(tmp_path / "sub" / "dir" / "c.flac", wav, 16000).is_file()  # parents are made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "b.flac", "song_1.5.wav", "sub"]


def test_write_does_not_modify_the_input(tmp_path):
    wav = _tone(16000, amp=0.1)
    kept = wav.copy()
    write_audio(tmp_path / "x.wav", wav, 16000, strategy="rms")
    np.testing.assert_array_equal(wav, kept)


# --------------------------------------------------------------------------- resampling, channels


def test_resample_keeps_frequency_and_amplitude(tmp_path):
    path = write_audio(tmp_path / "cd.wav", _tone(44100, seconds=1.0, amp=0.5, channels=2), 44100,
                       subtype="FLOAT", strategy="none")
    wav, sr = read_audio(path, sample_rate=32000)
    assert sr == 32000 and wav.shape == (2, 32000)
    assert abs(_peak_hz(wav, 32000) - 440) <= 1
    # away from the edges (filter transients) the resampled tone is the tone synthesised at 32 kHz
    ideal = _tone(32000, amp=0.5, channels=2)
    np.testing.assert_allclose(wav[:, 1000:-1000], ideal[:, 1000:-1000], atol=2e-3)
    np.testing.assert_allclose(np.abs(wav[:, 1000:-1000]).max(), 0.5, atol=2e-3)
    # the array function agrees with reading
    np.testing.assert_array_equal(convert_audio(read_audio(path)[0], 44100, 32000, 2), wav)


def test_convert_channels_follows_audiocraft():
    left, right = _tone(8000, freq=300), _tone(8000, freq=500, amp=0.2)
    stereo = np.concatenate([left, right])
    np.testing.assert_allclose(convert_channels(stereo, 1), (left + right) / 2, atol=1e-7)  # mean downmix
    np.testing.assert_array_equal(convert_channels(left, 2), np.concatenate([left, left]))  # mono repeated
    np.testing.assert_array_equal(convert_channels(left, 3), np.concatenate([left, left, left]))
    three = np.concatenate([left, right, left * 0])
    np.testing.assert_array_equal(convert_channels(three, 2), stereo)  # wider: first channels kept
    np.testing.assert_array_equal(convert_channels(stereo, 2), stereo)
    batched = np.stack([stereo, stereo * 0.5])  # [B, C, N] works too
    assert convert_audio(batched, 8000, 16000, 1).shape == (2, 1, 16000)
    assert convert_audio(left[0], 8000, 8000, 2).shape == (2, 8000)  # [N] is mono
    with pytest.raises(AudioError, match="only mono audio is replicated"):
        convert_channels(stereo, 3)


def test_read_converts_channels(tmp_path):
    left, right = _tone(16000, freq=300, amp=0.4), _tone(16000, freq=500, amp=0.2)
    path = write_audio(tmp_path / "lr.wav", np.concatenate([left, right]), 16000, subtype="FLOAT",
                       strategy="none")
    mono, _ = read_audio(path, channels=1)
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-7)
    mono_path = write_audio(tmp_path / "m.wav", left, 16000, subtype="FLOAT", strategy="none")
    np.testing.assert_array_equal(read_audio(mono_path, channels=2)[0], np.concatenate([left, left]))
    with pytest.raises(AudioError, match="only mono audio is replicated"):
        read_audio(path, channels=3)


def test_seek_and_duration(tmp_path):
    sr = 32000
    wav = np.concatenate([_tone(sr, seconds=2.0, freq=220, amp=0.3), _tone(sr, seconds=2.0, freq=330, amp=0.3)])
    for name in ("s.wav", "s.flac"):
        path = write_audio(tmp_path / name, wav, sr, strategy="none")
        full, _ = read_audio(path)
        part, _ = read_audio(path, start_s=0.25, duration_s=0.5)
        assert part.shape == (2, int(0.5 * sr))
        np.testing.assert_array_equal(part, full[:, int(0.25 * sr): int(0.25 * sr) + int(0.5 * sr)])
        tail, _ = read_audio(path, start_s=1.9, duration_s=1.0)  # past the end: shorter, not padded
        np.testing.assert_array_equal(tail, full[:, int(1.9 * sr):])
        rest, _ = read_audio(path, start_s=1.5)
        np.testing.assert_array_equal(rest, full[:, int(1.5 * sr):])
        # frames are counted at the file's rate, then the slice is resampled
        down, down_sr = read_audio(path, start_s=0.5, duration_s=1.0, sample_rate=16000, channels=1)
        assert down_sr == 16000 and down.shape == (1, 16000)
        with pytest.raises(AudioError, match="past the end"):
            read_audio(path, start_s=2.0)


# ------------------------------------------------------------------------------------ normalisation


def test_peak_strategy():
    quiet, loud = _tone(16000, amp=0.1, channels=2), _tone(16000, amp=3.0, channels=2)
    for wav in (quiet, loud):
        out = normalize_audio(wav, strategy="peak")
        np.testing.assert_allclose(out, wav * (PEAK_1DB / np.abs(wav).max()), rtol=1e-6)
    np.testing.assert_allclose(np.abs(normalize_audio(quiet, strategy="peak", peak_clip_headroom_db=6)).max(),
                               10 ** (-6 / 20), rtol=1e-6)
    # normalize=False: only scaled down to avoid clipping, never boosted
    np.testing.assert_array_equal(normalize_audio(quiet, strategy="peak", normalize=False), quiet)
    np.testing.assert_allclose(np.abs(normalize_audio(loud, strategy="peak", normalize=False)).max(), PEAK_1DB,
                               rtol=1e-6)


def test_clip_strategy():
    wav = _tone(16000, amp=2.0)
    out = normalize_audio(wav, strategy="clip")
    np.testing.assert_allclose(out, np.clip(wav, -PEAK_1DB, PEAK_1DB))
    assert np.abs(out).max() == pytest.approx(PEAK_1DB)
    small = _tone(16000, amp=0.5)
    np.testing.assert_array_equal(normalize_audio(small, strategy="clip"), small)  # no scaling at all


def test_rms_strategy():
    left, right = _tone(16000, freq=300, amp=0.05), _tone(16000, freq=500, amp=0.02)
    wav = np.concatenate([left, right])
    out = normalize_audio(wav, strategy="rms")  # the RMS of the mono downmix goes to -18 dBFS
    assert _mono_rms_db(out) == pytest.approx(-18, abs=1e-4)
    rescaling = 10 ** (-18 / 20) / np.sqrt(np.mean(wav.astype(np.float64).mean(axis=0) ** 2))
    np.testing.assert_allclose(out, wav * rescaling, rtol=1e-5)
    assert _mono_rms_db(normalize_audio(wav, strategy="rms", rms_headroom_db=10)) == pytest.approx(-10, abs=1e-4)
    np.testing.assert_array_equal(normalize_audio(wav, strategy="rms", normalize=False), wav)  # no boost
    # a loud signal is scaled down, then hard-clipped to [-1, 1] like audiocraft's _clip_wav
    square = np.sign(_tone(16000, amp=1.0)) * 0.9
    spiky = square.copy()
    spiky[0, ::1000] = 40.0  # spikes barely move the RMS but go far past 1 after rescaling
    out = normalize_audio(spiky, strategy="rms", rms_headroom_db=1)
    gain = 10 ** (-1 / 20) / np.sqrt(np.mean(spiky.astype(np.float64) ** 2))
    np.testing.assert_allclose(out, np.clip(spiky * gain, -1, 1), rtol=1e-5)
    assert np.abs(out).max() == 1.0


def test_loudness_strategy(tmp_path):
    sr = 32000
    wav = np.concatenate([_tone(sr, seconds=2.0, freq=440, amp=0.05), _tone(sr, seconds=2.0, freq=660, amp=0.1)])
    for target in (14, 23):
        out = normalize_audio(wav, sr, strategy="loudness", loudness_headroom_db=target)
        assert _lufs(out, sr) == pytest.approx(-target, abs=0.01)
        assert loudness_lufs(out, sr) == pytest.approx(_lufs(out, sr))
        gain = 10 ** ((-target - _lufs(wav, sr)) / 20)  # one gain for everything
        np.testing.assert_allclose(out, wav * gain, rtol=1e-5, atol=1e-7)
    # through a file: 16-bit rounding moves the loudness by far less than 0.1 LU
    path = write_audio(tmp_path / "l.flac", wav, sr, strategy="loudness")
    back, _ = read_audio(path)
    assert _lufs(back, sr) == pytest.approx(-14, abs=0.05)
    # the compressor soft-clips the rescaled signal with tanh; then everything is clipped to [-1, 1]
    gained = normalize_audio(wav, sr, strategy="loudness", loudness_headroom_db=0)
    squashed = normalize_audio(wav, sr, strategy="loudness", loudness_headroom_db=0, loudness_compressor=True)
    unclipped = wav * 10 ** (-_lufs(wav, sr) / 20)
    assert np.abs(unclipped).max() > 1.2  # 0 LUFS of these tones overshoots 1...
    np.testing.assert_allclose(gained, np.clip(unclipped, -1, 1), rtol=1e-5, atol=1e-6)  # ...and is clipped
    np.testing.assert_allclose(squashed, np.tanh(unclipped), rtol=1e-5, atol=1e-6)
    # below audiocraft's energy floor (RMS < 2e-3) the audio is left alone
    faint = _tone(sr, seconds=2.0, amp=2e-3)
    np.testing.assert_array_equal(normalize_audio(faint, sr, strategy="loudness"), faint)
    with pytest.raises(AudioError, match="at least 0.4 s"):
        normalize_audio(_tone(sr, seconds=0.2), sr, strategy="loudness")
    with pytest.raises(AudioError, match="sample_rate"):
        normalize_audio(wav, strategy="loudness")


def test_peak_clip_and_rms_equal_audiocraft_normalize_audio():
    """audiocraft's own normalize_audio (audiocraft.data.audio_utils) on the same signals: quiet, loud,
    spiky, stereo; normalising or only avoiding clipping. (Its loudness strategy needs torchaudio's
    meter, absent here: test_loudness_strategy measures ours with pyloudnorm.)"""
    import importlib

    from tests.reference import require
    from tests.reference.audiocraft_lm import load_audiocraft

    torch = require("torch")
    load_audiocraft()
    audio_utils = importlib.import_module("audiocraft.data.audio_utils")
    spiky = _tone(16000, amp=0.05, channels=2)
    spiky[1, ::997] = 0.9
    signals = [_tone(16000, amp=0.1), _tone(16000, amp=1.7), spiky, _tone(22050, amp=0.3, channels=2)]
    settings = [dict(strategy="peak"), dict(strategy="peak", peak_clip_headroom_db=6), dict(strategy="clip"),
                dict(strategy="rms"), dict(strategy="rms", rms_headroom_db=1), dict(strategy="rms", rms_headroom_db=10)]
    for wav in signals:
        for kwargs in settings:
            for normalize in (True, False):
                want = audio_utils.normalize_audio(torch.from_numpy(wav.copy()), normalize=normalize, **kwargs).numpy()
                got = normalize_audio(wav, normalize=normalize, **kwargs)
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=f"{kwargs} normalize={normalize}")


def test_silence_and_none():
    silent = np.zeros((2, 16000), np.float32)
    for strategy in ("peak", "clip", "rms", "loudness", "none"):  # audiocraft would write NaNs for peak/rms
        np.testing.assert_array_equal(normalize_audio(silent, 16000, strategy=strategy), silent)
    anti = np.concatenate([_tone(16000), -_tone(16000)])  # mono downmix is silent, the channels are not
    np.testing.assert_array_equal(normalize_audio(anti, strategy="rms"), anti)
    wav = _tone(16000, amp=0.5)
    np.testing.assert_array_equal(normalize_audio(wav, strategy=""), wav)
    with pytest.raises(AudioError, match="would clip"):
        normalize_audio(_tone(16000, amp=1.0 / np.sin(2 * np.pi * 440 * 9 / 16000)), strategy="none")
    with pytest.raises(AudioError, match="unknown normalisation strategy"):
        normalize_audio(wav, strategy="loudest")


# ------------------------------------------------------------------------------------------ errors


def test_read_errors(tmp_path):
    with pytest.raises(AudioError, match="no such audio file"):
        read_audio(tmp_path / "missing.wav")
    rng = np.random.default_rng(0)
    for name in ("junk.wav", "junk.flac", "junk.bin"):
        (tmp_path / name).write_bytes(rng.bytes(4096))
        with pytest.raises(AudioError, match=f"soundfile could not decode .*{name}"):
            read_audio(tmp_path / name)
    truncated = tmp_path / "cut.flac"
    good = write_audio(tmp_path / "good.flac", _tone(16000), 16000).read_bytes()
    truncated.write_bytes(good[:30])  # only part of the header
    with pytest.raises(AudioError, match="could not decode"):
        read_audio(truncated)
    empty = tmp_path / "empty.wav"
    soundfile.write(str(empty), np.zeros((0, 1), np.float32), 16000)  # a valid header with zero frames
    with pytest.raises(AudioError, match="holds no audio"):
        read_audio(empty)
    path = write_audio(tmp_path / "ok.wav", _tone(16000), 16000)
    for bad in (0, -1, 9, 1.5, "2", True):
        with pytest.raises(AudioError, match="unsupported channel count"):
            read_audio(path, channels=bad)
    for bad in (0, -16000, 44100.5, float("nan"), "16000"):
        with pytest.raises(AudioError, match="sample_rate must be a positive whole number"):
            read_audio(path, sample_rate=bad)
    for kwargs in ({"start_s": -1.0}, {"duration_s": 0.0}, {"duration_s": float("inf")}):
        with pytest.raises(AudioError, match="seconds"):
            read_audio(path, **kwargs)


def test_write_errors(tmp_path):
    wav = _tone(16000)
    for bad in ([np.nan], [np.inf], [-np.inf]):
        broken = wav.copy()
        broken[0, 100] = bad[0]
        with pytest.raises(AudioError, match="NaN or infinite"):
            write_audio(tmp_path / "nan.wav", broken, 16000)
    with pytest.raises(AudioError, match="empty"):
        write_audio(tmp_path / "e.wav", np.zeros((2, 0), np.float32), 16000)
    with pytest.raises(AudioError, match=r"unsupported channel count.*wav\.T"):
        write_audio(tmp_path / "t.wav", np.zeros((16000, 2), np.float32), 16000)  # [N, C] by mistake
    with pytest.raises(AudioError, match=r"\[N\] or \[C, N\]"):
        write_audio(tmp_path / "b.wav", np.zeros((1, 2, 10), np.float32), 16000)
    with pytest.raises(AudioError, match="floating point"):
        write_audio(tmp_path / "i.wav", np.zeros((1, 10), np.int16), 16000)
    for bad in (0, -1, 16000.5, None):
        with pytest.raises(AudioError, match="sample_rate"):
            write_audio(tmp_path / "sr.wav", wav, bad)
    with pytest.raises(AudioError, match="cannot store subtype 'FLOAT'"):
        write_audio(tmp_path / "f.flac", wav, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="unsupported subtype"):
        write_audio(tmp_path / "s.wav", wav, 16000, subtype="PCM_12")
    with pytest.raises(AudioError, match="unsupported audio format 'mp3'"):
        write_audio(tmp_path / "m", wav, 16000, format="mp3")
    with pytest.raises(AudioError, match="ends in .flac but format='wav'"):
        write_audio(tmp_path / "x.flac", wav, 16000, format="wav")
    for bad in (0, "1"):
        with pytest.raises(AudioError, match="unsupported channel count"):
            convert_channels(wav, bad)
    with pytest.raises(AudioError, match="from_sr"):
        convert_audio(wav, 0, 16000, 1)
    assert list(tmp_path.iterdir()) == []  # nothing written by any refused call


def test_failed_write_leaves_existing_file_untouched(tmp_path, monkeypatch):
    target = write_audio(tmp_path / "keep.wav", _tone(16000), 16000)
    before = target.read_bytes()
    with pytest.raises(AudioError):  # refused before writing
        write_audio(target, np.full((1, 100), np.nan, np.float32), 16000)
    assert target.read_bytes() == before

    def half_write(file, data, *args, **kwargs):  # an encoder dying half-way through (e.g. disk full)
        file.write(b"RIFF\x00\x00")
        raise OSError("No space left on device")

    monkeypatch.setattr(audio_io.soundfile, "write", half_write)
    with pytest.raises(OSError, match="No space left"):
        write_audio(target, _tone(16000, freq=880), 16000)
    assert target.read_bytes() == before
    with pytest.raises(OSError):
        write_audio(tmp_path / "new.flac", _tone(16000), 16000)
    assert sorted(os.listdir(tmp_path)) == ["keep.wav"]  # neither a partial file nor a temporary one
