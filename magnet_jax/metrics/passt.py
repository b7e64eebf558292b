"""PaSST (Koutini et al., "Efficient Training of Audio Transformers with Patchout") in Flax NNX, as
hear21passt runs it in eval mode: the AudioSet tagger audiocraft's KL-divergence metric scores audio with.

Two parts, both following hear21passt 0.0.26 (`models/preprocess.py`, `models/passt.py`, `wrapper.py`):

- the front end (`AugmentMelSTFT` in eval mode, so no SpecAugment and no random fmin/fmax jitter):
  pre-emphasis `y[n] = x[n + 1] - 0.97 x[n]` (a valid convolution, one sample shorter), a centred,
  reflect-padded STFT with a symmetric Hann window of `win_length` zero-padded to `n_fft`, the power
  spectrum, Kaldi's triangular mel banks (`torchaudio.compliance.kaldi.get_mel_banks` with no VTLN warp,
  plus a zero row for the Nyquist bin), `log(mel + 1e-5)` and the "fast normalisation" `(x + 4.5) / 5`;
- the ViT: a strided conv patch embedding (16x16 patches, stride 10 in both axes), separate frequency
  and time positional embeddings added on the [F', T'] patch grid (the time one cut to the input's
  length, so clips shorter than the model's window work and longer ones are refused), a class and a
  distillation token with their own positional embeddings, pre-norm blocks (LayerNorm eps 1e-6, exact
  GELU, qkv bias), a final LayerNorm, and in eval the mean of the two token outputs fed to `head`
  (LayerNorm eps 1e-5 + Linear). `head_dist` is a parameter of the checkpoint that hear21passt's
  forward never uses; it is kept here (and converted) but unused, as there.

`PASST_CONFIGS` names the released AudioSet models audiocraft's `PasstKLDivergenceMetric` picks from
(`pretrained_length` None/10, 20, 30 s); audiocraft's MusicGen/MAGNeT solvers use the 20 s one
(`metrics.kld.passt.pretrained_length: 20` in config/solver/musicgen/default.yaml).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from magnet_jax.data.audio_io import resample
from magnet_jax.nn.linear import Dense
from magnet_jax.nn.norms import LayerNorm


@dataclasses.dataclass(frozen=True)
class PasstConfig:
    # Front end (hear21passt `AugmentMelSTFT`; eval mode).
    sample_rate: int = 32_000
    n_mels: int = 128
    n_fft: int = 1024
    win_length: int = 800
    hop_length: int = 320
    fmin: float = 0.0
    fmax: float = 15_000.0  # hear21passt's fmax=None: sr // 2 - fmax_aug_range // 2 with fmax_aug_range=2000
    preemphasis: float = 0.97
    log_offset: float = 1e-5
    norm_shift: float = 4.5
    norm_scale: float = 5.0
    # ViT (hear21passt `PaSST`, distilled=True).
    patch_size: int = 16
    fstride: int = 10
    tstride: int = 10
    input_fdim: int = 128
    input_tdim: int = 998
    in_chans: int = 1
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    num_classes: int = 527
    norm_eps: float = 1e-6  # blocks and the final norm: partial(nn.LayerNorm, eps=1e-6)
    head_norm_eps: float = 1e-5  # head[0] is a plain nn.LayerNorm
    # The KL metric (audiocraft `PasstKLDivergenceMetric`): audio is cut into segments of at most
    # `max_duration` seconds at `sample_rate`; segments of `min_duration` seconds or less are dropped.
    max_duration: float = 10.0
    min_duration: float = 0.15

    @property
    def grid(self) -> Tuple[int, int]:
        """(frequency, time) size of the positional embeddings, hear21passt's `img_size // stride`."""
        return self.input_fdim // self.fstride, self.input_tdim // self.tstride

    @property
    def max_input_samples(self) -> int:
        return int(self.max_duration * self.sample_rate)

    @property
    def min_input_samples(self) -> int:
        return int(self.min_duration * self.sample_rate)

    def __post_init__(self):
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not a multiple of num_heads={self.num_heads}")
        if self.n_mels != self.input_fdim:
            raise ValueError(f"n_mels={self.n_mels} must equal input_fdim={self.input_fdim}")
        if (self.input_fdim - self.patch_size) // self.fstride + 1 != self.grid[0]:
            raise ValueError(f"input_fdim={self.input_fdim}, patch_size={self.patch_size}, fstride={self.fstride}: "
                             f"the conv gives {(self.input_fdim - self.patch_size) // self.fstride + 1} frequency "
                             f"patches but the frequency embedding has {self.grid[0]} (hear21passt would fail too)")
        if self.win_length > self.n_fft or self.n_fft % 2:
            raise ValueError(f"win_length={self.win_length} must be <= n_fft={self.n_fft}, and n_fft even")


# hear21passt's released AudioSet models, by their `default_cfgs` name (hear21passt.base / base20sec / base30sec).
PASST_S_SWA_P16_128_AP476 = PasstConfig()
PASST_S_F128_20SEC_P16_S10_AP474_SWA = dataclasses.replace(PasstConfig(), input_tdim=2000, max_duration=20.0)
PASST_S_F128_30SEC_P16_S10_AP473_SWA = dataclasses.replace(PasstConfig(), input_tdim=3000, max_duration=30.0)
PASST_CONFIGS: Dict[str, PasstConfig] = {
    "passt_s_swa_p16_128_ap476": PASST_S_SWA_P16_128_AP476,
    "passt-s-f128-20sec-p16-s10-ap474-swa": PASST_S_F128_20SEC_P16_S10_AP474_SWA,
    "passt-s-f128-30sec-p16-s10-ap473-swa": PASST_S_F128_30SEC_P16_S10_AP473_SWA,
}
PASST_URLS: Dict[str, str] = {
    "passt_s_swa_p16_128_ap476":
        "https://github.com/kkoutini/PaSST/releases/download/v0.0.1-audioset/passt-s-f128-p16-s10-ap.476-swa.pt",
    "passt-s-f128-20sec-p16-s10-ap474-swa":
        "https://github.com/kkoutini/PaSST/releases/download/v0.0.5/passt-s-f128-20sec-p16-s10-ap.474-swa.pt",
    "passt-s-f128-30sec-p16-s10-ap473-swa":
        "https://github.com/kkoutini/PaSST/releases/download/v0.0.5/passt-s-f128-30sec-p16-s10-ap.473-swa.pt",
}
# audiocraft's MusicGen / MAGNeT solvers: metrics.kld.passt.pretrained_length = 20.
AUDIOCRAFT_SOLVER_PRETRAINED_LENGTH = 20


def config_for_pretrained_length(pretrained_length: Optional[float] = AUDIOCRAFT_SOLVER_PRETRAINED_LENGTH
                                 ) -> PasstConfig:
    """The model `PasstKLDivergenceMetric(pretrained_length)` loads: 30 -> 30 s, 20 -> 20 s, anything
    else (None included, the class's own default) -> the 10 s base model."""
    if pretrained_length == 30:
        return PASST_S_F128_30SEC_P16_S10_AP473_SWA
    if pretrained_length == 20:
        return PASST_S_F128_20SEC_P16_S10_AP474_SWA
    return PASST_S_SWA_P16_128_AP476


# ------------------------------------------------------------------------------------------ front end

def kaldi_mel_banks(config: PasstConfig) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] float32: Kaldi's triangles on the mel scale 1127 ln(1 + f / 700), evenly
    spaced between fmin and fmax (n_mels + 2 edges), evaluated at the FFT bin frequencies k * sr / n_fft
    for k < n_fft / 2, and a zero column for the Nyquist bin (hear21passt pads one)."""
    def mel(f):
        return 1127.0 * np.log1p(np.asarray(f, np.float64) / 700.0)

    nyquist = 0.5 * config.sample_rate
    fmax = config.fmax if config.fmax > 0 else config.fmax + nyquist
    if not (0.0 <= config.fmin < nyquist and 0.0 < fmax <= nyquist and config.fmin < fmax):
        raise ValueError(f"fmin={config.fmin}, fmax={config.fmax} do not fit under the Nyquist {nyquist}")
    if config.n_mels <= 3:
        raise ValueError("Kaldi mel banks need at least 4 bins")
    edges = np.linspace(mel(config.fmin), mel(fmax), config.n_mels + 2)
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bins = mel(np.arange(config.n_fft // 2) * config.sample_rate / config.n_fft)[None, :]
    tri = np.clip(np.minimum((bins - left) / (center - left), (right - bins) / (right - center)), 0.0, None)
    return np.pad(tri, ((0, 0), (0, 1))).astype(np.float32)


def stft_window(config: PasstConfig) -> np.ndarray:
    """[n_fft] float32: the symmetric (periodic=False) Hann window of win_length, centred in n_fft zeros
    (what torch.stft does with a window shorter than n_fft)."""
    n = config.win_length
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / (n - 1)) if n > 1 else np.ones(1)
    left = (config.n_fft - n) // 2
    return np.pad(w, (left, config.n_fft - n - left)).astype(np.float32)


def num_frames(config: PasstConfig, num_samples: int) -> int:
    """Mel frames for `num_samples` of audio: pre-emphasis drops one sample, the centred STFT gives
    1 + (num_samples - 1) // hop_length."""
    return 1 + (num_samples - 1) // config.hop_length


def log_mel(config: PasstConfig, wav: jnp.ndarray) -> jnp.ndarray:
    """wav [B, N] (float, at config.sample_rate) -> normalised log-mel [B, n_mels, frames] float32."""
    wav = jnp.asarray(wav, jnp.float32)
    if wav.ndim != 2:
        raise ValueError(f"log_mel takes [B, N] mono audio, got shape {wav.shape}")
    x = wav[:, 1:] - config.preemphasis * wav[:, :-1]
    pad = config.n_fft // 2
    if x.shape[1] <= pad:
        raise ValueError(f"{wav.shape[1]} samples are too few for a reflect-padded STFT of n_fft={config.n_fft} "
                         f"(need more than {pad + 1})")
    x = jnp.pad(x, ((0, 0), (pad, pad)), mode="reflect")
    frames = num_frames(config, wav.shape[1])
    idx = np.arange(frames)[:, None] * config.hop_length + np.arange(config.n_fft)[None, :]
    spec = jnp.fft.rfft(x[:, idx] * jnp.asarray(stft_window(config)), axis=-1)  # [B, frames, n_fft // 2 + 1]
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
    mel = jnp.einsum("mk,btk->bmt", jnp.asarray(kaldi_mel_banks(config)), power,
                     precision=jax.lax.Precision.HIGHEST)
    return (jnp.log(mel + config.log_offset) + config.norm_shift) / config.norm_scale


# ---------------------------------------------------------------------------------------------- ViT

def _linear(n_in: int, n_out: int, *, rngs: nnx.Rngs, precision, bias: bool = True) -> Dense:
    """timm's Linear: kernel [in, out] drawn from a normal truncated at 2 std, std 0.02 (the
    weights come from a checkpoint)."""
    def init(key, shape, dtype):
        return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) * 0.02

    return Dense((n_in,), (n_out,), in_axes=(None,), out_axes=(None,), use_bias=bias, precision=precision,
                 kernel_init=init, rngs=rngs)


class Block(nnx.Module):
    def __init__(self, config: PasstConfig, *, precision, rngs: nnx.Rngs):
        d = config.embed_dim
        hidden = int(d * config.mlp_ratio)
        self.num_heads, self.precision = config.num_heads, precision
        self.norm1 = LayerNorm(d, eps=config.norm_eps, rngs=rngs)
        self.qkv = _linear(d, 3 * d, bias=config.qkv_bias, precision=precision, rngs=rngs)
        self.proj = _linear(d, d, precision=precision, rngs=rngs)
        self.norm2 = LayerNorm(d, eps=config.norm_eps, rngs=rngs)
        self.fc1 = _linear(d, hidden, precision=precision, rngs=rngs)
        self.fc2 = _linear(hidden, d, precision=precision, rngs=rngs)

    def __call__(self, x):
        b, n, d = x.shape
        h, p = self.num_heads, self.precision
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, h, d // h)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=p) * (d // h) ** -0.5
        attn = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v, precision=p).reshape(b, n, d)
        x = x + self.proj(attn)
        hidden = jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False)
        return x + self.fc2(hidden)


class PaSST(nnx.Module):
    """hear21passt's `PasstBasicWrapper(mel, PaSST, mode='logits')` in eval mode: `__call__(wav [B, N])`
    -> logits [B, num_classes]; `log_mel` and `forward_mel` expose the two halves.

    `precision` is the matmul precision of the transformer (None: JAX's default; the mel projection
    always runs at HIGHEST since its small values are logged)."""

    def __init__(self, config: PasstConfig, *, rngs: nnx.Rngs, precision=None):
        c = config
        d = c.embed_dim
        self.config, self.precision = c, precision

        def init(shape):
            return nnx.Param(jax.random.truncated_normal(rngs.params(), -2.0, 2.0, shape) * 0.02)

        fan_in = c.in_chans * c.patch_size ** 2
        self.patch_kernel = nnx.Param(jax.random.normal(rngs.params(), (c.patch_size, c.patch_size, c.in_chans, d))
                                      * fan_in ** -0.5)  # HWIO
        self.patch_bias = nnx.Param(jnp.zeros((d,)))
        self.cls_token = init((d,))
        self.dist_token = init((d,))
        self.token_pos_embed = init((2, d))  # hear21passt's new_pos_embed: class, distillation
        self.freq_pos_embed = init((c.grid[0], d))
        self.time_pos_embed = init((c.grid[1], d))
        self.blocks = nnx.List([Block(c, precision=precision, rngs=rngs) for _ in range(c.depth)])
        self.norm = LayerNorm(d, eps=c.norm_eps, rngs=rngs)
        self.head_norm = LayerNorm(d, eps=c.head_norm_eps, rngs=rngs)
        self.head = _linear(d, c.num_classes, precision=precision, rngs=rngs)
        # in the checkpoint, unused in eval (as hear21passt)
        self.head_dist = _linear(d, c.num_classes, precision=precision, rngs=rngs)

    def log_mel(self, wav: jnp.ndarray) -> jnp.ndarray:
        return log_mel(self.config, wav)

    def forward_mel(self, mel: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
        """mel [B, n_mels, frames] -> (logits [B, num_classes], features [B, embed_dim])."""
        c, p = self.config, self.precision
        x = jnp.asarray(mel, jnp.float32)[..., None]  # NHWC, one channel
        x = jax.lax.conv_general_dilated(x, self.patch_kernel[...], (c.fstride, c.tstride), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=p)
        x = x + self.patch_bias[...]
        b, f, t, d = x.shape
        if f != c.grid[0]:
            raise ValueError(f"{mel.shape[1]} mel bins give {f} frequency patches; the model has {c.grid[0]}")
        if t > c.grid[1]:
            raise ValueError(f"{mel.shape[2]} frames give {t} time patches, more than the model's {c.grid[1]} "
                             f"(about {c.max_duration:g} s of audio); cut the audio into segments first")
        x = x + self.time_pos_embed[...][None, None, :t] + self.freq_pos_embed[...][None, :, None]
        x = x.reshape(b, f * t, d)  # frequency-major, as torch's [B, D, F, T].flatten(2).transpose(1, 2)
        tokens = jnp.stack([self.cls_token[...], self.dist_token[...]]) + self.token_pos_embed[...]
        x = jnp.concatenate([jnp.broadcast_to(tokens[None], (b, 2, d)), x], axis=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        features = (x[:, 0] + x[:, 1]) / 2
        return self.head(self.head_norm(features)), features

    def __call__(self, wav: jnp.ndarray) -> jnp.ndarray:
        return self.forward_mel(self.log_mel(wav))[0]


# ------------------------------------------------------------------------------ audio -> labels

@nnx.jit
def _logits(model: PaSST, wav: jnp.ndarray) -> jnp.ndarray:
    return model(wav)


def passt_segments(wav: np.ndarray, sample_rate: int, config: PasstConfig) -> List[np.ndarray]:
    """audiocraft's `PasstKLDivergenceMetric._process_audio`: wav [C, N] or [N] (already trimmed to its
    real length) -> mono at config.sample_rate, split into consecutive segments of max_duration seconds
    (the last one shorter, never padded), keeping those longer than min_duration seconds.

    The resampler is soxr (magnet_jax.data.audio_io.resample), not audiocraft's julius; and channels
    are averaged before resampling rather than after (the same by linearity, up to rounding)."""
    wav = np.asarray(wav, np.float32)
    if wav.ndim == 1:
        wav = wav[None]
    if wav.ndim != 2:
        raise ValueError(f"passt_segments takes [C, N] or [N] audio, got shape {wav.shape}")
    mono = resample(wav.mean(axis=0, keepdims=True), int(sample_rate), config.sample_rate)[0]
    step = config.max_input_samples
    segments = [mono[i:i + step] for i in range(0, mono.shape[-1], step)]
    return [s for s in segments if s.shape[-1] > config.min_input_samples]


def passt_label_logits(model: PaSST, wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """Logits [n_segments, num_classes] of one clip (wav [C, N] or [N] at sample_rate), one row per
    segment of `passt_segments` (possibly zero rows, for a clip of at most min_duration seconds).

    Segments of one length run as one batch; each new segment length compiles the model once."""
    segments = passt_segments(wav, sample_rate, model.config)
    out = np.zeros((len(segments), model.config.num_classes), np.float32)
    by_length: Dict[int, List[int]] = {}
    for i, s in enumerate(segments):
        by_length.setdefault(s.shape[-1], []).append(i)
    for idx in by_length.values():
        out[idx] = np.asarray(_logits(model, jnp.asarray(np.stack([segments[i] for i in idx]))))
    return out


def passt_label_probs(model: PaSST, wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """audiocraft's label distribution of one clip: softmax (not sigmoid, though AudioSet is multi-label)
    of each segment's logits, [n_segments, num_classes] float32."""
    logits = passt_label_logits(model, wav, sample_rate)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)

