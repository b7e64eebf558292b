"""Audio file -> EnCodec tokens -> audio file: a stereo 44.1 kHz tone read at the codec's rate and channel
count (resampled, mixed to mono), encoded and decoded by a tiny random codec, written as WAV and FLAC with
loudness normalisation and read back."""
import numpy as np
import pyloudnorm
import pytest
import soundfile

from magnet_jax.convert.encodec import load_encodec
from magnet_jax.data.audio_io import read_audio, write_audio

from tests.encodec_fixtures import make_encodec
from tests.reference import require

require("torch")
require("transformers")

SR_IN, SECONDS, FREQ = 44_100, 1.51, 440.0  # 1.51 s: not a whole number of codec frames
TARGET_LUFS = -18.0


@pytest.fixture(scope="module")
def codec(tmp_path_factory):
    folder = tmp_path_factory.mktemp("encodec")
    make_encodec(folder)
    return load_encodec(folder)[1]


def test_file_to_codes_to_file(tmp_path, codec):
    sr, hop = codec.sample_rate, codec.config.hop_length
    assert (sr, codec.channels, hop) == (32_000, 1, 640)
    n_in = int(round(SECONDS * SR_IN))
    t = np.arange(n_in) / SR_IN
    tone = np.stack([0.5 * np.sin(2 * np.pi * FREQ * t), 0.3 * np.sin(2 * np.pi * FREQ * t)]).astype(np.float32)
    src = write_audio(tmp_path / "tone.wav", tone, SR_IN, strategy="none")
    info = soundfile.info(str(src))
    assert (info.samplerate, info.channels, info.frames) == (SR_IN, 2, n_in)

    # Read at the codec's rate and channel count: resampled 44.1 -> 32 kHz, mixed to mono (the mean).
    wav, got_sr = read_audio(src, sample_rate=sr, channels=codec.channels)
    n = int(round(n_in * sr / SR_IN))
    assert got_sr == sr and wav.dtype == np.float32 and wav.shape == (1, n)
    mid = slice(n // 10, -n // 10)  # away from the resampler's edges
    want = 0.4 * np.sin(2 * np.pi * FREQ * np.arange(n) / sr)
    np.testing.assert_allclose(wav[0, mid], want[mid], atol=2e-4)  # 16-bit file + soxr HQ

    codes = np.asarray(codec.encode(wav[None]))
    frames = -(-n // hop)
    assert n % hop and frames == 76  # a partial last frame still makes a frame
    assert codes.shape == (1, codec.num_codebooks, frames) and codes.dtype == np.int32
    assert codes.min() >= 0 and codes.max() < codec.cardinality
    assert len(np.unique(codes)) > 1  # (a steady tone may well keep one code per codebook)

    out = np.asarray(codec.decode(codes))
    assert out.shape == (1, codec.channels, frames * hop) and out.dtype == np.float32
    out = out[0, :, :n]  # the encoder's padding, trimmed
    assert np.isfinite(out).all() and np.sqrt(np.mean(out ** 2)) > 1e-2

    written = {}
    for fmt in ("wav", "flac"):
        path = write_audio(tmp_path / "decoded", out, sr, format=fmt, strategy="loudness",
                           loudness_headroom_db=-TARGET_LUFS)
        assert path == tmp_path / f"decoded.{fmt}"
        info = soundfile.info(str(path))
        assert (info.format, info.subtype, info.samplerate, info.channels, info.frames) == \
            (fmt.upper(), "PCM_16", sr, 1, n)
        back, back_sr = read_audio(path)
        assert back_sr == sr and back.shape == (1, n)
        assert np.abs(back).max() < 1  # the gain did not clip, so the loudness is exactly the target's
        lufs = pyloudnorm.Meter(sr).integrated_loudness(back.T.astype(np.float64))
        assert abs(lufs - TARGET_LUFS) < 0.1, lufs
        written[fmt] = back
    # Both lossless 16-bit; libsndfile rounds float -> PCM differently for the two formats (one step at most).
    np.testing.assert_allclose(written["wav"], written["flac"], atol=2 ** -15, rtol=0)
    # The decoded waveform survives the write up to the loudness gain and 16-bit rounding.
    gain = float(np.dot(written["wav"][0], out[0]) / np.dot(out[0], out[0]))
    np.testing.assert_allclose(written["wav"], gain * out, atol=2 ** -15)
