"""Tiny Hugging Face EnCodec folders with random weights, in facebook/encodec_32khz's layout."""
from __future__ import annotations

from pathlib import Path

# facebook/encodec_32khz's config.json, shrunk (filters, hidden size, codebook size).
ENCODEC_32KHZ_TINY = dict(sampling_rate=32000, audio_channels=1, num_filters=4, num_residual_layers=1,
                          upsampling_ratios=[8, 5, 4, 4], norm_type="weight_norm", kernel_size=7, last_kernel_size=7,
                          residual_kernel_size=3, dilation_growth_rate=2, use_causal_conv=False, pad_mode="reflect",
                          compress=2, num_lstm_layers=2, trim_right_ratio=1.0, codebook_size=64, hidden_size=16,
                          use_conv_shortcut=False, normalize=False, chunk_length_s=None, overlap=None,
                          target_bandwidths=[1.2])  # 4 codebooks of 6 bits at 50 Hz (32 kHz: [2.2], 11 bits)


def make_encodec(folder: Path, *, seed: int = 0, safetensors: bool = True, **overrides):
    """A random transformers EncodecModel (codebooks and weight norms non-trivial) saved to `folder`."""
    import torch
    from transformers import EncodecConfig, EncodecModel

    cfg = EncodecConfig(**{**ENCODEC_32KHZ_TINY, **overrides})
    torch.manual_seed(seed)
    model = EncodecModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("original0") or name.endswith("weight_g"):
                p.mul_(1.0 + 0.3 * torch.rand_like(p))
        for q, layer in enumerate(model.quantizer.layers):
            layer.codebook.embed.copy_(torch.randn_like(layer.codebook.embed) * (0.5 ** q))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=safetensors)
    return model


# XLA:CPU's default LLVM level (xla/debug_options_flags.cc), over the -O0 the tests otherwise compile at.
DEFAULT_OPTIMISATION = {"xla_backend_optimization_level": 3}


def assert_codec_matches(ours, wav, want_latent, want_codes, want_wav) -> None:
    """Our encoder latent and decoded waveform within 1e-4 of a reference's, codes identical."""
    import jax
    import numpy as np
    from flax import nnx

    latent = np.swapaxes(np.asarray(nnx.jit(lambda m, x: m.encoder(x))(ours, np.swapaxes(wav, 1, 2))), 1, 2)
    np.testing.assert_allclose(latent, want_latent, atol=1e-4, rtol=0)
    # Codes compiled as users run them, at XLA's default optimisation (tests/conftest.py compiles at -O0
    # for speed): a frame whose nearest codebook entries nearly tie can tip with the rounding of fused
    # multiply-adds, and identical codes are the claim here.
    encode = jax.jit(lambda x: ours.encode(x)).lower(wav).compile(compiler_options=DEFAULT_OPTIMISATION)
    codes = np.asarray(encode(wav))
    np.testing.assert_array_equal(codes, want_codes)
    got_wav = np.asarray(ours.decode(codes))
    assert got_wav.shape == want_wav.shape
    np.testing.assert_allclose(got_wav, want_wav, atol=1e-4, rtol=0)
