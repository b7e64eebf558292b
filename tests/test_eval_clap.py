"""The native Flax CLAP (magnet_jax.metrics.clap*) against laion_clap's PyTorch CLAP, tiny and random (no download).

The reference: laion-clap==1.1.7 + torchlibrosa==0.1.0 (installed --no-deps) with the stand-ins of
tests/reference/laion_clap_ref.py; each stand-in is checked here against scipy / a torch formula.
"""
import json

import numpy as np
import pytest

from tests.reference import require

torch = require("torch")
transformers = require("transformers")

import jax  # noqa: E402

from magnet_jax.convert.audiocraft_lm import ConversionError  # noqa: E402
from magnet_jax.metrics.clap import (ClapScorer, clap_score, cosine_similarity, fit_clip,  # noqa: E402
                                  load_roberta_tokenizer, prepare_audio)
from magnet_jax.metrics.clap_audio import (HTSATConfig, bicubic_matrix, slaney_mel_filterbank,  # noqa: E402
                                        stft_matrices)
from magnet_jax.metrics.clap_model import ClapConfig, ClapModel  # noqa: E402
from magnet_jax.metrics.clap_text import RobertaConfig  # noqa: E402
from magnet_jax.metrics.convert_clap import clap_params, clap_state_dict, load_clap  # noqa: E402
from tests.reference import laion_clap_ref as ref  # noqa: E402
from tests.reference import librosa_standin  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid")  # laion_clap's Swin index, not ours

A, T = ref.TINY_AUDIO, ref.TINY_HTSAT
TINY = ClapConfig(
    audio=HTSATConfig(sample_rate=A["sample_rate"], clip_samples=A["clip_samples"], n_fft=A["window_size"],
                      hop_size=A["hop_size"], mel_bins=A["mel_bins"], fmin=A["fmin"], fmax=A["fmax"],
                      spec_size=T["spec_size"], patch_size=T["patch_size"], embed_dim=T["embed_dim"],
                      depths=tuple(T["depths"]), num_heads=tuple(T["num_heads"]), window_size=T["window_size"]),
    text=RobertaConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                       max_position_embeddings=80),
    joint_dim=ref.JOINT)
N = A["clip_samples"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("clap") / "tiny_clap.pt"
    with ref.clap_modules() as (model_mod, htsat_mod):
        clap = ref.build_tiny_clap(model_mod, htsat_mod)
        ref.save_checkpoint(clap, path)
        yield {"torch": clap, "path": path, "scorer": ClapScorer(load_clap(path, TINY)),
               "state_dict": clap_state_dict({"state_dict": {"module." + k: v.numpy()
                                                            for k, v in clap.state_dict().items()}})}


def _ids():
    ids = np.ones((3, 77), np.int64)  # pad id 1 after the captions, as max_length padding gives
    for i, n in enumerate((6, 3, 77)):
        ids[i, :n] = np.random.default_rng(i).integers(3, 100, n)
        ids[i, 0], ids[i, n - 1] = 0, 2
    return ids, (ids != 1).astype(np.int64)


# ---------------------------------------------------------------------------------------------- stand-ins


def test_librosa_standin_window_and_pad_center():
    for n in (8, 255, 1024):  # scipy's get_window('hann', n, fftbins=True) is the periodic window
        np.testing.assert_allclose(librosa_standin.get_window("hann", n, fftbins=True), np.hanning(n + 1)[:-1],
                                   atol=1e-12)
        np.testing.assert_allclose(librosa_standin.get_window("hann", n, fftbins=False), np.hanning(n), atol=1e-12)
    x = np.arange(5.0)
    np.testing.assert_array_equal(librosa_standin.pad_center(x, size=10), [0, 0, 0, 1, 2, 3, 4, 0, 0, 0])
    with pytest.raises(librosa_standin.ParameterError):
        librosa_standin.pad_center(x, size=4)


def _torch_slaney_mel(sr, n_fft, n_mels, fmin, fmax):
    """Slaney's auditory-toolbox filterbank as a torch formula: linear mel below 1 kHz (200/3 Hz per mel),
    log above (27 mels per factor 6.4), triangles between n_mels + 2 equally spaced mel edges, each scaled
    to unit area (2 / bandwidth)."""
    d = torch.float64
    f_sp, logstep = 200.0 / 3, torch.log(torch.tensor(6.4, dtype=d)) / 27

    def to_mel(f):
        f = torch.as_tensor(f, dtype=d)
        return torch.where(f < 1000, f / f_sp, 15 + torch.log(torch.clamp(f, min=1000) / 1000) / logstep)

    def to_hz(m):
        return torch.where(m < 15, m * f_sp, 1000 * torch.exp(logstep * (m - 15)))

    edges = to_hz(torch.linspace(float(to_mel(fmin)), float(to_mel(fmax)), n_mels + 2, dtype=d))
    freqs = torch.arange(n_fft // 2 + 1, dtype=d) * sr / n_fft
    up = (freqs[None] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    down = (edges[2:, None] - freqs[None]) / (edges[2:] - edges[1:-1])[:, None]
    return (torch.clamp(torch.minimum(up, down), min=0) * (2 / (edges[2:] - edges[:-2]))[:, None]).numpy()


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin,fmax", [(48000, 1024, 64, 50, 14000), (16000, 256, 16, 50, 8000)])
def test_librosa_standin_mel_matches_slaney_formula(sr, n_fft, n_mels, fmin, fmax):
    want = _torch_slaney_mel(sr, n_fft, n_mels, fmin, fmax)
    got = librosa_standin.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    assert got.shape == (n_mels, n_fft // 2 + 1) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(slaney_mel_filterbank(sr, n_fft, n_mels, fmin, fmax).T, want, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(librosa_standin.hz_to_mel([0.0, 200.0 / 3, 1000.0, 6400.0]), [0, 1, 15, 42])
    np.testing.assert_allclose(librosa_standin.mel_to_hz([1.0, 15.0, 42.0]), [200.0 / 3, 1000.0, 6400.0])


def test_placeholder_standins_are_inert():
    mods = ref.placeholder_modules()
    assert [k for k in vars(mods["h5py"]) if not k.startswith("__")] == []
    with pytest.raises(NotImplementedError):
        mods["torchvision.ops.misc"].FrozenBatchNorm2d(4)


# ---------------------------------------------------------------------------------------------- parity


def test_front_end_matrices_match_torchlibrosa(world):
    ab = world["torch"].audio_branch
    real, imag = stft_matrices(A["window_size"])
    np.testing.assert_allclose(real, ab.spectrogram_extractor.stft.conv_real.weight[:, 0].numpy().T, atol=1e-5)
    np.testing.assert_allclose(imag, ab.spectrogram_extractor.stft.conv_imag.weight[:, 0].numpy().T, atol=1e-5)
    n_in, n_out = TINY.audio.n_frames, T["spec_size"] * 4
    eye = torch.eye(n_in, dtype=torch.float64)[None, None]  # column j of the resize = resize of e_j
    want = torch.nn.functional.interpolate(eye, (n_out, n_in), mode="bicubic", align_corners=True)[0, 0]
    np.testing.assert_allclose(bicubic_matrix(n_in, n_out), want.numpy(), atol=1e-6)


def test_audio_embeddings_match_laion_clap(world):
    clips = 0.1 * np.random.default_rng(0).standard_normal((3, N)).astype(np.float32)
    want = ref.torch_audio_embeddings(world["torch"], clips)
    got = world["scorer"].audio_embeddings_from_clips(clips)
    assert got.shape == (3, ref.JOINT)
    np.testing.assert_allclose(got, want, atol=2e-5)
    # [B, C, T] input, at the model's rate: the channel mean, then the same clips
    stereo = np.stack([clips + 0.05, clips - 0.05], axis=1)
    np.testing.assert_allclose(world["scorer"].audio_embeddings(stereo, A["sample_rate"]), want, atol=2e-5)


def test_fit_clip_repeat_pads_and_crops_like_laion_clap():
    x = torch.arange(1.0, 8.0)  # laion_clap 'repeatpad': repeat int(max/len) times, zero-pad the rest
    want = torch.nn.functional.pad(x.repeat(int(17 / 7)), (0, 17 - 14)).numpy()
    np.testing.assert_array_equal(fit_clip(x.numpy(), 17), want)
    np.testing.assert_array_equal(fit_clip(x.numpy(), 7), x.numpy())
    np.testing.assert_array_equal(fit_clip(x.numpy(), 3), [1, 2, 3])
    starts = {fit_clip(x.numpy(), 3, np.random.default_rng(s))[0] for s in range(40)}
    assert starts == {1, 2, 3, 4, 5}  # 'rand_trunc': every offset 0..len-max


def test_prepare_audio_resamples_downmixes_and_fits():
    from magnet_jax.data.audio_io import resample

    wav = np.random.default_rng(3).standard_normal((2, 2, 2 * N)).astype(np.float32)  # 2 x stereo at 32 kHz
    got = prepare_audio(wav, 32000, TINY.audio)  # 16 kHz, N samples: exactly one clip, no crop
    assert got.shape == (2, N)
    np.testing.assert_allclose(got, resample(wav.mean(axis=1), 32000, 16000), atol=1e-5)
    long = np.arange(3 * N, dtype=np.float32)[None] / (3 * N)
    crops = prepare_audio(long, A["sample_rate"], TINY.audio, np.random.default_rng(0))
    start = int(round(crops[0, 0] * 3 * N))
    np.testing.assert_array_equal(crops[0], long[0, start:start + N])


def test_text_embeddings_match_laion_clap(world):
    ids, mask = _ids()
    want = ref.torch_text_embeddings(world["torch"], ids, mask)
    got = world["scorer"].text_embeddings_from_ids(ids, mask)
    assert got.shape == (3, ref.JOINT)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_clap_score_matches_audiocraft_reduction(world):
    clips = 0.1 * np.random.default_rng(1).standard_normal((3, N)).astype(np.float32)
    ids, mask = _ids()
    ta = torch.as_tensor(ref.torch_audio_embeddings(world["torch"], clips))
    tt = torch.as_tensor(ref.torch_text_embeddings(world["torch"], ids, mask))
    cos = torch.nn.functional.cosine_similarity(ta, tt, dim=1, eps=1e-8)
    want = float(cos.sum() / cos.shape[0])  # audiocraft: cosine_sum / weight
    a = world["scorer"].audio_embeddings_from_clips(clips)
    t = world["scorer"].text_embeddings_from_ids(ids, mask)
    assert clap_score(a, t) == pytest.approx(want, abs=2e-5)
    np.testing.assert_allclose(cosine_similarity(a, t), cos.numpy(), atol=2e-5)
    z = np.zeros((1, 4), np.float32)  # eps: a zero embedding scores 0, not nan
    assert cosine_similarity(z, z)[0] == 0.0


def _tiny_tokenizer_folder(tmp_path):
    """A byte-level BPE vocabulary for RoBERTa's tokenizer class (real users load roberta-base's files)."""
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    pieces = list("abcdefghijklmnopqrstuvwxyz") + ["\u0120"] + ["\u0120" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab = {t: i for i, t in enumerate(specials + pieces + ["<mask>"])}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    merges = "".join(f"\u0120 {c}\n" for c in "abcdefghijklmnopqrstuvwxyz")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + merges)
    return tmp_path


def test_text_embeddings_from_captions_use_roberta_tokenization(world, tmp_path):
    tok = load_roberta_tokenizer(_tiny_tokenizer_folder(tmp_path))
    captions = ["calm piano", "loud drums and bass", "a"]  # 3: the batch size compiled above
    ids, mask = tok(captions)
    assert ids.shape == mask.shape == (3, 77)
    assert ids[0, 0] == 0 and ids[0, mask[0].sum() - 1] == 2 and ids[0, -1] == 1 and mask[0, -1] == 0
    scorer = ClapScorer(world["scorer"].model, tok)
    np.testing.assert_allclose(scorer.text_embeddings(captions),
                               scorer.text_embeddings_from_ids(ids, mask), atol=1e-6)


# ---------------------------------------------------------------------------------------------- converter


def test_converter_fails_loudly_on_missing_and_extra_tensors(world, tmp_path):
    model = ClapModel(TINY, rngs=__import__("flax").nnx.Rngs(0))
    sd = dict(world["state_dict"])
    clap_params(sd, model)  # complete: converts
    missing = dict(sd)
    del missing["audio_branch.layers.0.blocks.1.attn.qkv.bias"]
    with pytest.raises(ConversionError, match=r"lacks 1 tensors.*layers\.0\.blocks\.1\.attn\.qkv\.bias"):
        clap_params(missing, model)
    with pytest.raises(ConversionError, match=r"1 CLAP tensors were not used.*text_branch\.encoder\.layer\.2\.x"):
        clap_params({**sd, "text_branch.encoder.layer.2.x": np.zeros(3, np.float32)}, model)
    # through the file: a checkpoint without a text layer the config has
    path = tmp_path / "short.pt"
    ref.save_checkpoint(world["torch"], path, drop=("text_branch.pooler.dense.weight",))
    with pytest.raises(ConversionError, match=r"text_branch\.pooler\.dense\.weight"):
        load_clap(path, TINY)
    # laion_clap's training checkpoints may hold numpy numbers beside the weights: they load;
    # a non-numeric numpy object gets a loud, actionable error
    path = tmp_path / "numpy_scalar.pt"
    ref.save_checkpoint(world["torch"], path)
    torch.save({**torch.load(path, weights_only=False), "best_score": np.float32(0.9), "epoch": np.int64(15)}, path)
    np.testing.assert_array_equal(ClapScorer(load_clap(path, TINY)).text_embeddings_from_ids(*_ids()),
                                  world["scorer"].text_embeddings_from_ids(*_ids()))
    torch.save({**torch.load(path, weights_only=False), "name": np.str_("music")}, path)
    with pytest.raises(ConversionError, match=r"(?s)numpy.*keep only them"):
        load_clap(path, TINY)
    bad = dict(sd)
    bad["audio_branch.layers.0.blocks.1.attn_mask"] = np.zeros_like(sd["audio_branch.layers.0.blocks.1.attn_mask"])
    with pytest.raises(ConversionError, match="attn_mask"):
        clap_params(bad, model)
