"""Our Flax EnCodec against transformers' PyTorch EncodecModel (random weights, 32 kHz layout)."""
import numpy as np
import pytest

from magnet_jax.convert.audiocraft_lm import ConversionError
from magnet_jax.convert.encodec import load_encodec

from tests.encodec_fixtures import assert_codec_matches, make_encodec
from tests.reference import require

torch = require("torch")
require("transformers")


def _audio(b, n, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 32000
    tone = 0.5 * np.sin(2 * np.pi * rng.uniform(100, 1000, (b, channels, 1)) * t)
    return (tone + 0.05 * rng.normal(size=(b, channels, n))).astype(np.float32)


@pytest.mark.parametrize("variant", ["32khz", "causal-stereo-shortcut", "bin-2res"])
def test_codes_and_waveform_match_transformers(tmp_path, variant):
    over, safetensors = {}, True
    if variant == "causal-stereo-shortcut":  # the 24 kHz codec's switches (causal, conv shortcut), stereo
        over = dict(use_causal_conv=True, use_conv_shortcut=True, audio_channels=2, pad_mode="constant")
    if variant == "bin-2res":
        over, safetensors = dict(num_residual_layers=2, upsampling_ratios=[4, 4, 2], target_bandwidths=[24.0]), False
    ref = make_encodec(tmp_path, safetensors=safetensors, **over)
    cfg, ours = load_encodec(tmp_path)
    assert (ours.num_codebooks, ours.cardinality) == (4, 64)
    wav = _audio(2, 6400 + 77, channels=cfg.audio_channels)
    with torch.no_grad():
        want_codes = ref.encode(torch.from_numpy(wav)).audio_codes[0].numpy()  # [B, K, T]
        want_latent = ref.encoder(torch.from_numpy(wav)).numpy()
        want_wav = ref.decode(torch.from_numpy(want_codes)[None], [None]).audio_values.numpy()
    assert_codec_matches(ours, wav, want_latent, want_codes, want_wav)


def test_batch_encode_and_long_decode(tmp_path):
    make_encodec(tmp_path)
    _, ours = load_encodec(tmp_path)
    hop = ours.config.hop_length
    waves = [_audio(1, n, seed=i)[0] for i, n in enumerate((hop * 10, hop * 7 - 5, hop * 3))]
    codes, frames = ours.encode_batch(waves)
    assert frames.tolist() == [10, 7, 3] and codes.shape == (3, 4, 10)
    alone = np.asarray(ours.encode(waves[2][None]))
    np.testing.assert_array_equal(codes[2, :, :2], alone[0, :, :2])  # away from the padded edge
    long_codes = np.asarray(ours.encode(_audio(1, hop * 120)))
    whole = np.asarray(ours.decode(long_codes))
    chunked = ours.decode_long(long_codes, chunk_frames=40, context_frames=10)
    assert chunked.shape == whole.shape
    # Away from the file's ends, chunked decoding matches the whole-file decode closely.
    err = np.abs(chunked - whole)[..., 10 * hop: -10 * hop].max()
    assert err < 0.05 * np.abs(whole).max(), err
    long_wav = _audio(1, hop * 120 + 7)
    chunked_codes = ours.encode_long(long_wav, chunk_frames=40, context_frames=10)
    whole_codes = np.asarray(ours.encode(long_wav))
    assert chunked_codes.shape == whole_codes.shape == (1, 4, 121)
    # The first codebook (the coarse one) is unchanged by the joins; finer ones may flip near them.
    np.testing.assert_array_equal(chunked_codes[:, 0, 5:-5], whole_codes[:, 0, 5:-5])
    assert (chunked_codes == whole_codes).mean() > 0.9


def test_bad_checkpoints(tmp_path):
    from safetensors.numpy import load_file, save_file

    make_encodec(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    cut = {k: v for k, v in tensors.items() if "decoder.layers.1.lstm.weight_hh_l1" not in k}
    save_file(cut, tmp_path / "model.safetensors")
    with pytest.raises(ConversionError, match="lacks"):
        load_encodec(tmp_path)
    save_file({**tensors, "encoder.extra.weight": np.ones(3, np.float32)}, tmp_path / "model.safetensors")
    with pytest.raises(ConversionError, match="not used"):
        load_encodec(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_encodec(tmp_path / "nothing")


def test_audiocraft_pointer_resolves_to_a_local_folder(tmp_path, monkeypatch):
    make_encodec(tmp_path / "encodec_32khz")
    torch.save({"pretrained": "facebook/encodec_32khz", "exported": True, "version": "1.3.0"},
               tmp_path / "compression_state_dict.bin")
    cfg, codec = load_encodec(tmp_path / "compression_state_dict.bin")
    assert codec.sample_rate == 32000 and codec.frame_rate == 50
