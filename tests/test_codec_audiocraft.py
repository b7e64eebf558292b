"""audiocraft's own EnCodec checkpoints (`best_state` + `xp.cfg`) against audiocraft's real EncodecModel.

The reference is built by audiocraft's builder (`builders.get_compression_model`) from the xp.cfg
text, so SEANetEncoder/SEANetDecoder and ResidualVectorQuantizer get exactly the settings the file
describes; its random weights (weight norms and codebooks made non-trivial) are saved as
`audiocraft.utils.export.export_encodec` writes them, read back by audiocraft's own
`loaders.load_compression_model` (which proves the file is in its layout) and by our
`load_encodec`; codes must match exactly and waveforms to 1e-4.
"""
import importlib
import sys

import numpy as np
import pytest

from magnet_jax.convert.audiocraft_lm import ConversionError
from magnet_jax.convert.encodec import load_encodec

from tests.encodec_fixtures import assert_codec_matches
from tests.reference import audiocraft_lm as harness
from tests.reference import require

torch = require("torch")
omegaconf = require("omegaconf")
require("einops")  # audiocraft.quantization
require("transformers")  # audiocraft.models.encodec imports it


def compression_xp_cfg(*, n_filters=4, dimension=16, ratios=(8, 5, 4, 4), n_residual_layers=1, n_q=4, bins=64,
                       lstm=2, norm="weight_norm", causal=False, pad_mode="reflect", true_skip=True, channels=1,
                       sample_rate=32000, renormalize=False, activation="ELU", disable_norm_outer_blocks=0,
                       trim_right_ratio=1.0, final_activation="null", decoder_extra="") -> str:
    """An exported xp.cfg in the shape of solver=compression/encodec_musicgen_32khz (model
    encodec/encodec_large_nq4_s640 over encodec/default), sizes shrunk; interpolations kept, as
    `OmegaConf.to_yaml` writes them."""
    b = lambda v: "true" if v else "false"  # noqa: E731
    return f"""\
device: cuda
dtype: float32
autocast: false
seed: 2036
solver: compression
sample_rate: {sample_rate}
channels: {channels}
compression_model: encodec
losses:
  adv: 4.0
  feat: 4.0
  l1: 0.1
  mel: 0.0
  msspec: 2.0
  sisnr: 0.0
dataset:
  batch_size: 64
  segment_duration: 1
optim:
  epochs: 200
  lr: 0.0003
  optimizer: adam
encodec:
  autoencoder: seanet
  quantizer: rvq
  sample_rate: ${{sample_rate}}
  channels: ${{channels}}
  causal: {b(causal)}
  renormalize: {b(renormalize)}
seanet:
  dimension: {dimension}
  channels: ${{channels}}
  causal: ${{encodec.causal}}
  n_filters: {n_filters}
  n_residual_layers: {n_residual_layers}
  ratios: [{", ".join(str(r) for r in ratios)}]
  activation: {activation}
  activation_params:
    alpha: 1.0
  norm: {norm}
  norm_params: {{}}
  kernel_size: 7
  residual_kernel_size: 3
  last_kernel_size: 7
  dilation_base: 2
  pad_mode: {pad_mode}
  true_skip: {b(true_skip)}
  compress: 2
  lstm: {lstm}
  disable_norm_outer_blocks: {disable_norm_outer_blocks}
  decoder:
    trim_right_ratio: {trim_right_ratio}
    final_activation: {final_activation}
    final_activation_params: null{decoder_extra}
  encoder: {{}}
rvq:
  n_q: {n_q}
  q_dropout: false
  bins: {bins}
  decay: 0.99
  kmeans_init: true
  kmeans_iters: 50
  threshold_ema_dead_code: 2
  orthogonal_reg_weight: 0.0
  orthogonal_reg_active_codes_only: false
no_quant: {{}}
"""


def _audiocraft():
    harness.load_audiocraft()  # bare audiocraft packages, stubs for flashy & co (unused at eval)
    # The builder reaches SEANet through the package (`audiocraft.modules.SEANetEncoder`), whose
    # real __init__ (the harness keeps it bare) would export it.
    modules, seanet = sys.modules["audiocraft.modules"], importlib.import_module("audiocraft.modules.seanet")
    for name in ("SEANetEncoder", "SEANetDecoder"):
        if not hasattr(modules, name):
            setattr(modules, name, getattr(seanet, name))
    return (importlib.import_module("audiocraft.models.builders"), importlib.import_module("audiocraft.models.loaders"))


def make_audiocraft_encodec(path, text: str, *, seed: int = 0):
    """audiocraft's EncodecModel built from `text`, randomised, exported to `path` as export_encodec does."""
    builders, _ = _audiocraft()
    cfg = omegaconf.OmegaConf.create(text)
    cfg.device = "cpu"
    torch.manual_seed(seed)
    model = builders.get_compression_model(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight_g") or name.endswith("original0"):
                p.mul_(1.0 + 0.3 * torch.rand_like(p))
            elif name.endswith("norm.weight") or name.endswith("norm.bias"):  # time_group_norm's affine
                p.add_(0.2 * torch.randn_like(p))
        # Codebooks on the scale of the latents (as k-means would put them), so many codes are used.
        latent = model.encoder(torch.randn(2, model.channels, 8000) * 0.3)
        latent = latent.transpose(1, 2).reshape(-1, latent.shape[1])
        mean, std = latent.mean(0), latent.std(0)
        for q, layer in enumerate(model.quantizer.vq.layers):
            book = layer._codebook
            book.embed.copy_((mean if q == 0 else 0) + torch.randn_like(book.embed) * std * (0.5 ** q))
            book.embed_avg.copy_(book.embed)
            book.cluster_size.fill_(1.0)
            book.inited.fill_(1.0)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _save(path, state, text)
    return state


def _save(path, state, text):
    """As export_encodec: the config is the YAML that OmegaConf writes (interpolations unresolved)."""
    text = omegaconf.OmegaConf.to_yaml(omegaconf.OmegaConf.create(text))
    torch.save({"best_state": state, "xp.cfg": text, "version": "1.3.0", "exported": True}, path)


def _audio(b, n, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 32000
    tone = 0.5 * np.sin(2 * np.pi * rng.uniform(100, 1000, (b, channels, 1)) * t)
    return (tone + 0.05 * rng.normal(size=(b, channels, n))).astype(np.float32)


VARIANTS = {
    "32khz": {},
    # causal stereo with conv shortcuts, zero padding, a right/left trim split, bare outer convs
    "causal-stereo": dict(causal=True, channels=2, true_skip=False, pad_mode="constant", trim_right_ratio=0.5,
                          disable_norm_outer_blocks=2, ratios=(4, 4, 2), n_q=3),
    "2res-groupnorm": dict(n_residual_layers=2, norm="time_group_norm", lstm=1, ratios=(4, 4, 2)),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_codes_and_waveform_match_audiocraft(tmp_path, variant):
    over = VARIANTS[variant]
    path = tmp_path / "compression_state_dict.bin"
    state = make_audiocraft_encodec(path, compression_xp_cfg(**over))
    if variant == "32khz":
        assert any(k.endswith("weight_g") for k in state) and "quantizer.vq.layers.3._codebook.embed" in state
    if variant == "causal-stereo":  # plain weights on the outer blocks, weight norm elsewhere
        assert "encoder.model.0.conv.conv.weight" in state and "decoder.model.3.convtr.convtr.weight_g" in state
    _, loaders = _audiocraft()
    ref = loaders.load_compression_model(str(path), device="cpu")  # audiocraft's own loader (strict)
    cfg, ours = load_encodec(path)
    channels = over.get("channels", 1)
    assert (ours.num_codebooks, ours.cardinality, ours.channels) == (over.get("n_q", 4), 64, channels)
    assert ours.sample_rate == ref.sample_rate and ours.frame_rate == ref.frame_rate

    wav = _audio(2, 6400 + 77, channels=channels)
    with torch.no_grad():
        want_codes, scale = ref.encode(torch.from_numpy(wav))
        want_latent = ref.encoder(torch.from_numpy(wav)).numpy()
        want_wav = ref.decode(want_codes).numpy()
    assert scale is None
    want_codes = want_codes.numpy()
    assert len(np.unique(want_codes[:, 0])) > 3  # codebooks are in play, not one code everywhere

    assert_codec_matches(ours, wav, want_latent, want_codes, want_wav)


def test_parametrized_weight_norm_keys(tmp_path):
    """A state dict saved with torch's newer weight-norm parametrisation loads the same."""
    old = tmp_path / "old.bin"
    state = make_audiocraft_encodec(old, compression_xp_cfg())
    renamed = {k.replace("weight_g", "parametrizations.weight.original0")
                .replace("weight_v", "parametrizations.weight.original1"): v for k, v in state.items()}
    assert renamed.keys() != state.keys()
    _save(tmp_path / "new.bin", renamed, compression_xp_cfg())
    _, a = load_encodec(old)
    _, b = load_encodec(tmp_path / "new.bin")
    wav = _audio(1, 3200)
    np.testing.assert_array_equal(np.asarray(a.encode(wav)), np.asarray(b.encode(wav)))


def test_bad_checkpoints(tmp_path):
    text = compression_xp_cfg()
    path = tmp_path / "compression_state_dict.bin"
    state = make_audiocraft_encodec(path, text)

    _save(path, {k: v for k, v in state.items() if k != "decoder.model.1.lstm.weight_hh_l1"}, text)
    with pytest.raises(ConversionError, match=r"lacks 1 tensors.*decoder\.model\.1\.lstm\.weight_hh_l1"):
        load_encodec(path)
    _save(path, {**state, "encoder.model.99.conv.conv.bias": torch.zeros(3)}, text)
    with pytest.raises(ConversionError, match=r"not used.*encoder\.model\.99"):
        load_encodec(path)
    _save(path, state, compression_xp_cfg(n_q=3))  # a stage more than xp.cfg says
    with pytest.raises(ConversionError, match=r"not used.*quantizer\.vq\.layers\.3\._codebook\.embed"):
        load_encodec(path)
    _save(path, state, compression_xp_cfg(n_filters=8))  # xp.cfg of another codec: shapes differ
    with pytest.raises(ConversionError, match="expected shape"):
        load_encodec(path)

    refused = {
        "encodec.renormalize": dict(renormalize=True),
        "seanet.activation": dict(activation="LeakyReLU"),
        "seanet.norm": dict(norm="spectral_norm"),
        "seanet.lstm": dict(lstm=0),
        "seanet.pad_mode": dict(pad_mode="replicate"),
        "seanet.decoder.final_activation": dict(final_activation="Tanh"),
    }
    for key, over in refused.items():
        _save(path, state, compression_xp_cfg(**over))
        with pytest.raises(ConversionError, match=key.replace(".", r"\.")):
            load_encodec(path)
    _save(path, state, compression_xp_cfg(decoder_extra="\n    n_filters: 8"))
    with pytest.raises(ConversionError, match="n_filters.*one setting for both halves"):
        load_encodec(path)
    _save(path, state, compression_xp_cfg(decoder_extra="\n    norm: time_group_norm"))
    with pytest.raises(ConversionError, match="one kind of norm for both halves"):
        load_encodec(path)
    _save(path, state, compression_xp_cfg(norm="time_group_norm", disable_norm_outer_blocks=1))
    with pytest.raises(ConversionError, match=r"seanet\.disable_norm_outer_blocks"):
        load_encodec(path)
    _save(path, state, compression_xp_cfg().replace("quantizer: rvq", "quantizer: no_quant"))
    with pytest.raises(ConversionError, match=r"encodec\.quantizer"):
        load_encodec(path)
    torch.save({"best_state": state, "version": "1.3.0"}, path)
    with pytest.raises(ConversionError, match="xp.cfg"):
        load_encodec(path)
