"""VGGish port (magnet_jax.metrics.vggish / convert_vggish) against torchvggish 0.2, on random weights.

torchvggish's `vggish_input` imports resampy at module level; resampy is not a dependency here, so when it is
missing `tests/reference/resampy_standin.py` takes its place during the import. That stand-in only does the
identity at equal rates, and every comparison with torchvggish feeds it 16 kHz audio (where it never
resamples); our soxr resampling path is checked on its own against band-limited signals.
"""
import collections
import importlib
import sys

import jax
import numpy as np
import pytest

from magnet_jax.convert.audiocraft_lm import ConversionError
from magnet_jax.convert.torch_pickle import TorchFileError
from magnet_jax.metrics import vggish as vg
from magnet_jax.convert.torch_legacy import read_legacy_torch_file
from magnet_jax.metrics.convert_vggish import (load_pca_postprocessor, load_vggish,
                                            vggish_params_from_torch)
from tests.reference import require

torch = require("torch")
jax.config.update("jax_default_matmul_precision", "highest")


def _import_torchvggish():
    """(torchvggish.torchvggish, torchvggish.vggish_input), importing with the resampy stand-in if needed."""
    names = ("torchvggish.torchvggish", "torchvggish.vggish_input")
    try:
        return tuple(importlib.import_module(n) for n in names)
    except ModuleNotFoundError as e:
        if e.name != "resampy":
            pytest.fail(f"the parity reference torchvggish is missing ({e}); install it: "
                        "pip install --no-deps torchvggish==0.2")
    from tests.reference import resampy_standin

    sys.modules["resampy"] = resampy_standin
    try:
        return tuple(importlib.import_module(n) for n in names)
    finally:
        del sys.modules["resampy"]  # torchvggish keeps its reference; nothing else should see the stand-in


tv_model, tv_input = _import_torchvggish()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A random-init torchvggish VGG, its state dict and random PCA params saved in the official layout."""
    torch.manual_seed(0)
    model = tv_model.VGG(tv_model.make_layers(), postprocess=False).eval()
    rng = np.random.default_rng(0)
    pca = {"pca_eigen_vectors": rng.normal(size=(128, 128)) * 0.2, "pca_means": rng.normal(size=(128,)) * 0.5}
    folder = tmp_path_factory.mktemp("vggish")
    # the official release files are legacy (pre-zip) torch.save files, the PCA one of float64 numpy arrays
    torch.save(model.state_dict(), folder / "vggish-10086976.pth", _use_new_zipfile_serialization=False)
    torch.save(pca, folder / "vggish_pca_params-970ea276.pth", _use_new_zipfile_serialization=False)
    ours = load_vggish(folder / "vggish-10086976.pth", pca_params=folder / "vggish_pca_params-970ea276.pth")
    return model, pca, folder, ours


def _audio(seconds, sample_rate=vg.SAMPLE_RATE, channels=2, seed=0):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, size=(channels, int(seconds * sample_rate)))


def _torch_forward(model, examples, final_relu):
    """torchvggish's VGG.forward, optionally without its last ReLU (TF VGGish's `vggish/embedding`)."""
    with torch.no_grad():
        x = model.features(torch.as_tensor(examples)[:, None])
        x = torch.transpose(torch.transpose(x, 1, 3), 1, 2).contiguous().view(x.shape[0], -1)
        layers = list(model.embeddings.children())
        return (torch.nn.Sequential(*(layers if final_relu else layers[:-1])))(x).numpy()


def test_front_end_matches_torchvggish():
    wav = _audio(3.3)
    expected = tv_input.waveform_to_examples(wav.T, vg.SAMPLE_RATE, return_tensor=False)
    ours = vg.waveform_to_examples(wav, vg.SAMPLE_RATE)
    assert ours.shape == expected.shape == (3, 96, 64) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-5)
    mono = vg.waveform_to_examples(wav[0], vg.SAMPLE_RATE)
    np.testing.assert_allclose(mono, tv_input.waveform_to_examples(wav[0], vg.SAMPLE_RATE, False),
                               rtol=1e-6, atol=1e-5)
    # shorter than one example (0.96 s) or than one STFT window: no examples, no error
    assert vg.waveform_to_examples(wav[:, :15000], vg.SAMPLE_RATE).shape == (0, 96, 64)
    assert vg.waveform_to_examples(wav[:, :100], vg.SAMPLE_RATE).shape == (0, 96, 64)
    with pytest.raises(ValueError, match=r"\[C, N\]"):
        vg.waveform_to_examples(wav.T, vg.SAMPLE_RATE)


def test_front_end_resamples_with_soxr():
    """A band-limited signal (tones well inside 125-7500 Hz) gives nearly the same log-mel examples whether it
    is synthesised at 16 kHz or at 44.1 kHz and resampled."""
    freqs, amps = np.array([220.0, 1000.0, 3150.0, 6100.0]), np.array([0.3, 0.2, 0.1, 0.05])

    def tones(sr):
        t = np.arange(int(2.5 * sr)) / sr
        return (amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * t)).sum(0)

    native = vg.waveform_to_examples(tones(16000), 16000)
    resampled = vg.waveform_to_examples(tones(44100), 44100)
    assert native.shape == resampled.shape == (2, 96, 64)
    # log-mel bins with energy (the floor is log(0.01) = -4.6) agree closely
    loud = native > 0.0
    assert loud.mean() > 0.05
    np.testing.assert_allclose(resampled[loud], native[loud], atol=0.02)


def test_embeddings_match_torchvggish(reference):
    """The pre-activation embedding (FAD's) and torchvggish's output (final ReLU) on 2 examples; forward passes
    on CPU cost ~0.4 s per example, so the variants run on one example each."""
    model, _, _, ours = reference
    wav = _audio(2.2, seed=1)
    examples = tv_input.waveform_to_examples(wav.T, vg.SAMPLE_RATE, return_tensor=False).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.as_tensor(examples)[:, None]).numpy()  # torchvggish's own forward
    np.testing.assert_array_equal(_torch_forward(model, examples, True), expected)
    pre_expected = _torch_forward(model, examples, False)
    assert (pre_expected < 0).any()  # the pre-activation embedding FAD uses differs from torchvggish's output
    scale = np.abs(pre_expected).max()
    assert scale > 0

    pre = vg.vggish_embeddings(ours, wav, vg.SAMPLE_RATE)
    assert pre.shape == (2, 128) and pre.dtype == np.float32
    np.testing.assert_allclose(pre, pre_expected, rtol=1e-4, atol=1e-4 * scale)
    first_second = wav[:, :vg.SAMPLE_RATE]  # one example
    relu = vg.vggish_embeddings(ours, first_second, vg.SAMPLE_RATE, final_relu=True)
    assert relu.shape == (1, 128)
    np.testing.assert_allclose(relu, expected[:1], rtol=1e-4, atol=1e-4 * scale)
    # postprocess=True applies the PCA postprocessor to the pre-activation embedding
    post = vg.vggish_embeddings(ours, first_second, vg.SAMPLE_RATE, postprocess=True)
    np.testing.assert_array_equal(post, np.asarray(ours.postprocessor(pre[:1])))
    model_without_pca = load_vggish({k: v.numpy() for k, v in model.state_dict().items()})
    assert model_without_pca.postprocessor is None
    with pytest.raises(ValueError, match="pca_params"):
        vg.vggish_embeddings(model_without_pca, first_second, vg.SAMPLE_RATE, postprocess=True)


def test_postprocessor_matches_torchvggish(reference):
    _, pca, folder, ours = reference
    post = tv_model.Postprocessor.__new__(tv_model.Postprocessor)  # its __init__ downloads
    post._pca_matrix = torch.as_tensor(pca["pca_eigen_vectors"]).float()  # as its __init__ does
    post._pca_means = torch.as_tensor(pca["pca_means"].reshape(-1, 1)).float()
    emb = np.random.default_rng(2).normal(size=(40, 128)).astype(np.float32)
    expected = post.postprocess(torch.as_tensor(emb)).numpy()
    got = np.asarray(ours.postprocessor(emb))
    assert got.shape == expected.shape == (40, 128)
    assert got.min() == 0 and got.max() == 255  # the test data exercises the clipping
    assert np.array_equal(got, np.round(got))
    # float32 matmuls summed in different orders may land on the other side of a rounding boundary
    assert np.abs(got - expected).max() <= 1 and (got != expected).mean() < 0.01
    standalone = load_pca_postprocessor(folder / "vggish_pca_params-970ea276.pth")
    np.testing.assert_array_equal(np.asarray(standalone(emb)), got)
    npz = folder / "vggish_pca_params.npz"  # TF's release format, means as [128, 1]
    np.savez(npz, pca_eigen_vectors=pca["pca_eigen_vectors"], pca_means=pca["pca_means"].reshape(-1, 1))
    np.testing.assert_array_equal(np.asarray(load_pca_postprocessor(npz)(emb)), got)
    zipped = folder / "pca_zip.pth"  # a zip-format torch.save of tensors goes through load_state_dict_file
    torch.save({k: torch.as_tensor(v) for k, v in pca.items()}, zipped)
    np.testing.assert_array_equal(np.asarray(load_pca_postprocessor(zipped)(emb)), got)


def test_legacy_reader_refuses_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"a": torch.zeros(2), "b": collections.Counter()}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(TorchFileError, match="collections.Counter"):
        read_legacy_torch_file(path)
    torch.save({"a": np.array([object()])}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(TorchFileError, match="only numeric ones are read"):
        read_legacy_torch_file(path)
    fine = {"a": torch.arange(6.0).reshape(2, 3).t(), "b": np.arange(4, dtype=np.int16)}
    torch.save(fine, path, _use_new_zipfile_serialization=False)
    back = read_legacy_torch_file(path)
    np.testing.assert_array_equal(back["a"], fine["a"].numpy())
    np.testing.assert_array_equal(back["b"], fine["b"])


def test_google_fad_framing(reference):
    wav = _audio(2.6, seed=4)
    examples = vg.waveform_to_fad_examples(wav, vg.SAMPLE_RATE)
    mono = wav.mean(0)
    mono = mono / mono.max()
    starts = range(0, mono.shape[0] - 16000 + 1, 8000)
    assert examples.shape == (len(starts), 96, 64) == (4, 96, 64)
    for i, s in enumerate(starts):  # each 1 s window on its own, as google-research's AudioSetModel does it
        window = tv_input.waveform_to_examples(mono[s:s + 16000], vg.SAMPLE_RATE, return_tensor=False)
        assert window.shape == (1, 96, 64)
        np.testing.assert_allclose(examples[i], window[0], rtol=1e-6, atol=1e-5)
    # peak normalisation makes the level irrelevant
    np.testing.assert_allclose(vg.waveform_to_fad_examples(0.1 * wav, vg.SAMPLE_RATE), examples, atol=1e-5)
    assert vg.waveform_to_fad_examples(wav[:, :15999], vg.SAMPLE_RATE).shape == (0, 96, 64)
    emb = vg.vggish_embeddings(reference[3], wav[:, :24000], vg.SAMPLE_RATE, framing="google_fad")
    assert emb.shape == (2, 128) and np.isfinite(emb).all()
    assert vg.vggish_embeddings(reference[3], wav[:, :1000], vg.SAMPLE_RATE).shape == (0, 128)
    with pytest.raises(ValueError, match="framing"):
        vg.vggish_embeddings(reference[3], wav, vg.SAMPLE_RATE, framing="nope")


def test_converter_fails_loudly(reference):
    model, pca, _, _ = reference
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    lacking = dict(state)
    del lacking["features.8.weight"]
    with pytest.raises(ConversionError, match=r"lacks 1 tensors.*features\.8\.weight"):
        vggish_params_from_torch(lacking)
    with pytest.raises(ConversionError, match=r"lacks 1 tensors.*features\.8\.weight"):
        load_vggish(lacking)
    extra = dict(state, **{"classifier.weight": np.zeros((3, 128), np.float32)})
    with pytest.raises(ConversionError, match=r"1 VGGish checkpoint tensors were not used.*classifier\.weight"):
        load_vggish(extra)
    bad_pca = dict(pca)
    with pytest.raises(ConversionError, match="lacks.*pca_means"):
        load_pca_postprocessor({"pca_eigen_vectors": bad_pca["pca_eigen_vectors"]})
    with pytest.raises(ConversionError, match="not used.*stray"):
        load_pca_postprocessor(dict(bad_pca, stray=np.zeros(3)))
    wrong_shape = dict(state, **{"features.0.weight": np.zeros((32, 1, 3, 3), np.float32)})
    with pytest.raises(ConversionError, match="conv1/kernel"):
        load_vggish(wrong_shape)
