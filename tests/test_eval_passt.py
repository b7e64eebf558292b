"""PaSST port (magnet_jax.metrics.passt / convert_passt) and the KL metric (magnet_jax.metrics.kld) against
hear21passt 0.0.26 and audiocraft 1.3.0's metrics/kld.py, on random weights: nothing is downloaded.

hear21passt imports torchaudio (the registry's 2.11.1 does not load with this torch) and timm (which needs
torchvision); audiocraft's kld.py imports torchmetrics (seconds to import) and, through
audiocraft.data.audio_utils, julius and torchaudio. Those imports are served by the stand-ins in
tests/reference/*_standin.py (julius only when it is not installed), put in `sys.modules` only while the
references are imported and removed afterwards; each stand-in is checked against a formula below.
"""
import contextlib
import importlib
import importlib.machinery
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from magnet_jax.convert.audiocraft_lm import ConversionError
from magnet_jax.metrics import passt as ps
from magnet_jax.metrics.convert_passt import infer_config, load_passt, passt_params_from_torch
from magnet_jax.metrics.kld import KLDivergence, PasstKLDivergence, kl_divergence
from tests.reference import julius_standin, require, timm_standin, torchaudio_standin, torchmetrics_standin

torch = require("torch")
jax.config.update("jax_default_matmul_precision", "highest")

TINY = ps.PasstConfig(embed_dim=32, depth=2, num_heads=4, num_classes=10, input_tdim=100,
                      max_duration=0.5, min_duration=0.15)


@contextlib.contextmanager
def _sys_modules(entries: dict, roots: tuple):
    """`entries` in sys.modules while inside; afterwards every module under `roots` (and the entries'
    own roots) is put back as it was: stand-ins and the references imported with them disappear."""
    roots = tuple(set(roots) | {name.split(".")[0] for name in entries})
    mine = lambda name: name.split(".")[0] in roots
    saved = {n: m for n, m in sys.modules.items() if mine(n)}
    for n in saved:
        del sys.modules[n]
    sys.modules.update(entries)
    try:
        yield
    finally:
        for n in [n for n in sys.modules if mine(n)]:
            del sys.modules[n]
        sys.modules.update(saved)


def _bare_package(name: str, path: str) -> types.ModuleType:
    pkg = types.ModuleType(name)
    pkg.__path__ = [path]
    return pkg


@pytest.fixture(scope="module")
def hear21passt():
    if importlib.machinery.PathFinder.find_spec("hear21passt") is None:
        pytest.fail("the parity reference hear21passt is missing; install it: pip install --no-deps hear21passt==0.0.26")
    stand_ins = {**torchaudio_standin.modules(), **timm_standin.modules()}
    with _sys_modules(stand_ins, roots=("hear21passt",)):
        ns = types.SimpleNamespace(passt=importlib.import_module("hear21passt.models.passt"),
                                   preprocess=importlib.import_module("hear21passt.models.preprocess"),
                                   wrapper=importlib.import_module("hear21passt.wrapper"))
    assert ns.preprocess.torchaudio.compliance.kaldi.get_mel_banks is torchaudio_standin.get_mel_banks
    return ns


@pytest.fixture(scope="module")
def audiocraft_kld():
    """audiocraft/metrics/kld.py itself, imported under bare audiocraft packages (the package __init__s
    need av, flashy, ... which --no-deps leaves out)."""
    spec = importlib.machinery.PathFinder.find_spec("audiocraft")
    if spec is None:
        require("audiocraft")
    root = spec.submodule_search_locations[0]
    entries = {"audiocraft": _bare_package("audiocraft", root),
               "audiocraft.data": _bare_package("audiocraft.data", root + "/data"),
               "audiocraft.metrics": _bare_package("audiocraft.metrics", root + "/metrics"),
               **torchaudio_standin.modules(), **torchmetrics_standin.modules()}
    if importlib.machinery.PathFinder.find_spec("julius") is None:
        entries.update(julius_standin.modules())
    with _sys_modules(entries, roots=("audiocraft", "julius")):
        return importlib.import_module("audiocraft.metrics.kld")


def _release_front_end(hear21passt):
    return hear21passt.preprocess.AugmentMelSTFT(n_mels=128, sr=32000, win_length=800, hopsize=320, n_fft=1024,
                                                 freqm=48, timem=192, htk=False, fmin=0.0, fmax=None, norm=1,
                                                 fmin_aug_range=10, fmax_aug_range=2000).eval()


@pytest.fixture(scope="module")
def tiny_reference(hear21passt):
    """hear21passt's wrapper (release front end, TINY net) in eval mode, every parameter random."""
    torch.manual_seed(0)
    net = hear21passt.passt.PaSST(img_size=(TINY.input_fdim, TINY.input_tdim), patch_size=TINY.patch_size,
                                  stride=TINY.fstride, in_chans=1, num_classes=TINY.num_classes,
                                  embed_dim=TINY.embed_dim, depth=TINY.depth, num_heads=TINY.num_heads,
                                  distilled=True)
    model = hear21passt.wrapper.PasstBasicWrapper(mel=_release_front_end(hear21passt), net=net, mode="logits")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.endswith("norm.weight") \
                    or name == "net.head.0.weight":
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_((0.5 if name.startswith("net.head") else 0.2) * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def tiny_ours(tiny_reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("passt") / "wrapper.pt"
    torch.save(tiny_reference.state_dict(), path)
    return load_passt(path, TINY)


def _net_state_dict(reference):
    return {k[len("net."):]: v.numpy() for k, v in reference.state_dict().items() if k.startswith("net.")}


# ------------------------------------------------------------------------------------------ stand-ins

def _mel_banks_by_interpolation(n_mels, n_fft, sr, fmin, fmax):
    """Each Kaldi filter as np.interp through (left, 0), (center, 1), (right, 0) on the mel axis."""
    mel = lambda f: 1127.0 * np.log(1.0 + np.asarray(f, np.float64) / 700.0)
    edges = np.linspace(mel(fmin), mel(fmax), n_mels + 2)
    x = mel(np.arange(n_fft // 2) * sr / n_fft)
    banks = np.stack([np.interp(x, edges[i:i + 3], [0.0, 1.0, 0.0]) for i in range(n_mels)])
    centers = 700.0 * (np.exp(edges[1:-1] / 1127.0) - 1.0)
    return banks, centers


@pytest.mark.parametrize("args", [(128, 1024, 32000, 0.0, 15000.0), (40, 512, 16000, 20.0, 7000.0)],
                         ids=["passt", "other"])
def test_torchaudio_standin_mel_banks_match_formula(args):
    n_mels, n_fft, sr, fmin, fmax = args
    bins, centers = torchaudio_standin.get_mel_banks(n_mels, n_fft, sr, fmin, fmax, 100.0, -500.0, 1.0)
    want, want_centers = _mel_banks_by_interpolation(*args)
    assert bins.dtype == torch.float32 and tuple(bins.shape) == (n_mels, n_fft // 2)
    np.testing.assert_allclose(bins.numpy(), want, atol=2e-5, rtol=0)
    np.testing.assert_allclose(centers.numpy()[:, 0], want_centers, rtol=1e-5)
    cfg = ps.PasstConfig(sample_rate=sr, n_mels=n_mels, input_fdim=n_mels, n_fft=n_fft, win_length=n_fft,
                         fmin=fmin, fmax=fmax, patch_size=10)
    ours = ps.kaldi_mel_banks(cfg)
    assert ours.shape == (n_mels, n_fft // 2 + 1) and not ours[:, -1].any()  # hear21passt's zero Nyquist column
    np.testing.assert_allclose(ours[:, :-1], want, atol=2e-6, rtol=0)


def test_other_standins_follow_their_contracts():
    with pytest.raises(NotImplementedError):
        torchaudio_standin.TimeMasking(192, iid_masks=True)(torch.zeros(1, 4, 4))
    with pytest.raises(RuntimeError, match="does not download"):
        timm_standin.download_cached_file("https://example.invalid/w.pt")
    x = torch.randn(2, 1, 50)
    assert julius_standin.resample_frac(x, 32000, 32000) is x
    with pytest.raises(NotImplementedError):
        julius_standin.resample_frac(x, 48000, 32000)
    m = torchmetrics_standin.Metric()
    m.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
    for v in (1.5, 2.0):
        m.total += torch.tensor(v)
    assert float(m.total) == 3.5
    m.reset()
    assert float(m.total) == 0.0


# ----------------------------------------------------------------------------------- model parity

def test_front_end_matches_hear21passt(hear21passt):
    ref = _release_front_end(hear21passt)
    wav = np.random.default_rng(0).normal(0, 0.1, (2, 16000 + 137)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(wav)).numpy()
    got = np.asarray(jax.jit(lambda w: ps.log_mel(ps.PASST_S_SWA_P16_128_AP476, w))(wav))
    assert got.shape == want.shape == (2, 128, ps.num_frames(ps.PASST_S_SWA_P16_128_AP476, wav.shape[1]))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_logits_match_hear21passt(tiny_reference, tiny_ours):
    wav = np.random.default_rng(1).normal(0, 0.1, (2, 16000)).astype(np.float32)
    with torch.no_grad():
        want = tiny_reference(torch.from_numpy(wav)).numpy()
    got = np.asarray(ps._logits(tiny_ours, jnp.asarray(wav)))
    assert got.shape == want.shape == (2, TINY.num_classes) and np.abs(want).max() > 1.0
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-4)


def test_net_state_dict_layout_loads_the_same(tiny_reference, tiny_ours):
    """The release file's layout (the net alone, maybe under 'model') gives the same parameters."""
    ours = load_passt({"model": _net_state_dict(tiny_reference)}, TINY)
    a, b = nnx.to_flat_state(nnx.state(ours, nnx.Param)), nnx.to_flat_state(nnx.state(tiny_ours, nnx.Param))
    assert [k for k, _ in a] == [k for k, _ in b]
    for (k, x), (_, y) in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x.get_value()), np.asarray(y.get_value()), err_msg=str(k))


@pytest.mark.parametrize("arch,tdim,config", [
    ("passt_s_swa_p16_128_ap476", 998, ps.PASST_S_SWA_P16_128_AP476),
    ("passt_20sec", 2000, ps.PASST_S_F128_20SEC_P16_S10_AP474_SWA),
    ("passt_30sec", 3000, ps.PASST_S_F128_30SEC_P16_S10_AP473_SWA),
], ids=["10s", "20s", "30s"])
def test_named_configs_are_the_released_archs(hear21passt, monkeypatch, arch, tdim, config):
    """hear21passt's own get_model (on the meta device: shapes only) against our config's parameters."""
    linspace = torch.linspace
    monkeypatch.setattr(torch, "linspace", lambda *a, **k: linspace(*a, **{**k, "device": "cpu"}))
    monkeypatch.setattr(hear21passt.passt.PaSST, "init_weights", lambda self, mode="": None)  # shapes only
    with torch.device("meta"):
        net = hear21passt.passt.get_model(arch=arch, pretrained=False, input_tdim=tdim)
    shapes = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in net.state_dict().items()}
    assert infer_config(shapes) == config
    params = passt_params_from_torch(shapes, config)
    abstract = nnx.eval_shape(lambda: ps.PaSST(config, rngs=nnx.Rngs(0)))
    flat = {tuple(map(str, k)): v.get_value().shape for k, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}

    got = {}

    def walk(tree, path):
        for k, v in tree.items():
            walk(v, path + (str(k),)) if isinstance(v, dict) else got.__setitem__(path + (str(k),), v.shape)

    walk(params, ())
    assert got == flat


# ------------------------------------------------------------------------------------------ converter

def test_converter_fails_loudly_on_missing_and_extra_tensors(tiny_reference):
    sd = _net_state_dict(tiny_reference)
    missing = dict(sd)
    del missing["blocks.1.mlp.fc2.bias"]
    with pytest.raises(ConversionError, match=r"lacks 1 tensors.*blocks\.1\.mlp\.fc2\.bias"):
        passt_params_from_torch(missing, TINY)
    extra = {**sd, "blocks.2.norm1.weight": sd["blocks.1.norm1.weight"]}
    with pytest.raises(ConversionError, match=r"1 PaSST checkpoint tensors were not used.*blocks\.2\.norm1\.weight"):
        passt_params_from_torch(extra, TINY)
    with pytest.raises(ConversionError, match="ImageNet"):
        passt_params_from_torch({"pos_embed": np.zeros((1, 3, 4), np.float32)}, TINY)
    with pytest.raises(ConversionError, match="pass config= explicitly"):
        infer_config(sd)  # 10 time positions: no released model


# ----------------------------------------------------------------------------------------------- KL

def test_kl_divergence_matches_audiocraft(audiocraft_kld):
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.full(527, 0.3), size=5).astype(np.float32)
    q = rng.dirichlet(np.full(527, 0.3), size=5).astype(np.float32)
    q[0, :100] = 0.0  # zero targets contribute 0 (torch's xlogy)
    q[0] /= q[0].sum()
    p[1, :50] = 0.0  # zero predictions meet the epsilon
    want = audiocraft_kld.kl_divergence(torch.from_numpy(p), torch.from_numpy(q)).numpy()
    np.testing.assert_allclose(kl_divergence(p, q), want, rtol=1e-5, atol=1e-6)
    metric, ours = audiocraft_kld.KLDivergenceMetric(), KLDivergence()
    # update() with a stand-in classifier: its "probabilities" are the audio itself.
    metric._get_label_distribution = lambda x, sizes, sample_rates: x[:, 0]
    for a, b in ((p[:2], q[:2]), (p[2:], q[2:])):
        metric.update(torch.from_numpy(a)[:, None], torch.from_numpy(b)[:, None], None, None)
        ours.update_probs(a, b)
    want, got = metric.compute(), ours.compute()
    assert set(got) == set(want) == {"kld", "kld_pq", "kld_qp", "kld_both"}
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, err_msg=k)


def test_passt_kld_matches_audiocraft_metric_on_audio(audiocraft_kld, tiny_reference, tiny_ours, monkeypatch):
    """audiocraft's PasstKLDivergenceMetric, with our tiny hear21passt model (window 0.5 s, so clips
    split into several segments) instead of the download, against ours on the same weights and audio:
    segmentation, short-segment dropping, softmax, both KL directions and the averaging."""
    monkeypatch.setattr(audiocraft_kld.PasstKLDivergenceMetric, "_load_base_model",
                        lambda self, pretrained_length: (tiny_reference, 32000, TINY.max_input_samples,
                                                         TINY.min_input_samples))
    metric = audiocraft_kld.PasstKLDivergenceMetric()
    rng = np.random.default_rng(3)
    preds = rng.normal(0, 0.1, (2, 2, 40000)).astype(np.float32)
    targets = (0.5 * preds + rng.normal(0, 0.1, preds.shape)).astype(np.float32)
    sizes, rates = [40000, 36000], [32000, 32000]  # segments: 16000, 16000, 8000 | 16000, 16000 (+4000, dropped)
    metric.update(torch.from_numpy(preds), torch.from_numpy(targets), torch.tensor(sizes), torch.tensor(rates))
    ours = PasstKLDivergence(tiny_ours)
    ours.update(preds, targets, sizes, rates)
    assert int(metric.weight) == ours.weight == 5
    want, got = metric.compute(), ours.compute()
    assert want["kld"] > 1e-3
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-4, err_msg=k)


def test_segments_follow_audiocraft():
    cfg = ps.PASST_S_F128_20SEC_P16_S10_AP474_SWA
    lengths = lambda n: [s.shape[0] for s in ps.passt_segments(np.zeros((2, n), np.float32), 32000, cfg)]
    assert lengths(32000 * 45) == [640000, 640000, 160000]
    assert lengths(32000 * 40 + 4801) == [640000, 640000, 4801]
    assert lengths(32000 * 40 + 4800) == [640000, 640000]  # 0.15 s or less is dropped
    assert lengths(4800) == []
    tone = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)
    (seg,) = ps.passt_segments(np.stack([tone, 0 * tone]), 16000, cfg)  # mono mean, then 16 -> 32 kHz
    want = 0.5 * np.sin(2 * np.pi * 440 * np.arange(32000) / 32000)
    assert seg.shape == (32000,)
    np.testing.assert_allclose(seg[1000:-1000], want[1000:-1000], atol=1e-3)


def test_clips_too_short_for_passt_add_nothing(tiny_ours):
    """audiocraft drops segments of 0.15 s or less; a batch without any adds no comparison."""
    assert ps.passt_label_probs(tiny_ours, np.zeros((2, 4800), np.float32), 32000).shape == (0, TINY.num_classes)
    metric = PasstKLDivergence(tiny_ours)
    metric.update(np.zeros((2, 1, 4000), np.float32), np.zeros((2, 1, 4000), np.float32), [4000, 3000], [32000] * 2)
    assert metric.weight == 0
    with pytest.raises(ValueError, match="comparisons <= 0"):
        metric.compute()
