"""CLAP's audio branch in Flax NNX: the HTS-AT audio transformer (a Swin transformer on a log-mel image)
with the fusion-less 10 s front end and CLAP's audio projection.

The LAION CLAP checkpoints (laion_clap's `HTSAT_Swin_Transformer` + `CLAP.audio_projection`) load into
`ClapAudioEncoder` through `magnet_jax.metrics.convert_clap`. Only the embedding path is built: HTS-AT's
class heads (`tscam_conv`, `head`) do not enter the embedding and are not parameters here.

Front end (torchlibrosa's, as HTS-AT uses it): a centred, reflect-padded STFT with a periodic Hann window
as two DFT matrices, the power spectrum, a Slaney mel filterbank, `10 log10(max(x, 1e-10))` (ref 1,
no top_db), a frozen BatchNorm over mel bins, then `reshape_wav2img`: a bicubic (align_corners, A=-0.75)
stretch of the time axis to `spec_size * freq_ratio` frames, folded into a `spec_size x spec_size` image
(`freq_ratio` time chunks stacked along frequency). The DFT and mel matrices are checkpoint tensors and
are loaded from it; the defaults computed here are what torchlibrosa computes with librosa.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from magnet_jax.nn.linear import Dense
from magnet_jax.nn.norms import LayerNorm


@dataclass(frozen=True)
class HTSATConfig:
    sample_rate: int = 48_000
    clip_samples: int = 480_000     # 10 s: longer audio is cropped, shorter repeat-padded to this
    n_fft: int = 1024               # laion_clap's `window_size`
    hop_size: int = 480
    mel_bins: int = 64
    fmin: float = 50.0
    fmax: float = 14_000.0
    spec_size: int = 256
    patch_size: int = 4             # = patch stride (HTS-AT's released models)
    embed_dim: int = 128
    depths: Tuple[int, ...] = (2, 2, 12, 2)
    num_heads: Tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 8            # Swin attention window
    mlp_ratio: float = 4.0
    ln_eps: float = 1e-5
    bn_eps: float = 1e-5

    @property
    def freq_ratio(self) -> int:
        return self.spec_size // self.mel_bins

    @property
    def num_features(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def n_frames(self) -> int:
        return self.clip_samples // self.hop_size + 1

    def check(self) -> None:
        fr = self.freq_ratio
        if fr < 1 or self.spec_size // fr != self.mel_bins:
            raise ValueError(f"spec_size {self.spec_size} must be a multiple of mel_bins {self.mel_bins}")
        if self.n_frames > self.spec_size * fr:
            raise ValueError(f"{self.n_frames} STFT frames do not fit the {self.spec_size * fr} of the image")
        if len(self.depths) != len(self.num_heads):
            raise ValueError("depths and num_heads differ in length")
        grid = self.spec_size // self.patch_size
        if grid % 2 ** (len(self.depths) - 1):
            raise ValueError(f"patch grid {grid} does not halve {len(self.depths) - 1} times")


# ----------------------------------------------------------------------------------------- front end


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window (scipy/librosa `get_window('hann', n, fftbins=True)`)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def stft_matrices(n_fft: int) -> Tuple[np.ndarray, np.ndarray]:
    """Windowed DFT matrices [n_fft, n_fft // 2 + 1] (real, imaginary) of torchlibrosa's STFT convs."""
    k = np.arange(n_fft)[:, None] * np.arange(n_fft // 2 + 1)[None, :]
    ang = -2.0 * np.pi * (k % n_fft) / n_fft
    win = hann_window(n_fft)[:, None]
    return (np.cos(ang) * win).astype(np.float32), (np.sin(ang) * win).astype(np.float32)


def _hz_to_mel(f):
    f = np.asarray(f, np.float64)
    lin = f / (200.0 / 3)
    return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), lin)


def _mel_to_hz(m):
    m = np.asarray(m, np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))


def slaney_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """[n_fft // 2 + 1, n_mels]: librosa.filters.mel (Slaney scale, Slaney area norm), transposed."""
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    tri = np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
    return (tri * (2.0 / (hi - lo))).T.astype(np.float32)


@functools.lru_cache(maxsize=None)
def bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """[n_out, n_in] matrix of torch's 1-D bicubic resize with align_corners=True (borders clamped)."""
    m = np.zeros((n_out, n_in), np.float64)
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    for i in range(n_out):
        src = scale * i
        i0 = math.floor(src)
        t = src - i0
        w = [((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
             ((a + 2) * t - (a + 3)) * t * t + 1,
             ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
             ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a]
        for j in range(4):
            m[i, min(max(i0 - 1 + j, 0), n_in - 1)] += w[j]
    return m.astype(np.float32)


# ------------------------------------------------------------------------------------------- layers


def normal_init(std: float = 0.02):
    """`init(key, shape, dtype)`: N(0, std) drawn with numpy from an nnx key: the weights come from a
    checkpoint, and one compiled jax.random kernel per parameter shape made building the model take tens
    of seconds."""
    def init(key, shape, dtype=jnp.float32):
        rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
        return jnp.asarray(rng.standard_normal(shape, np.float32) * std, dtype)

    return init


def init_normal(rngs: nnx.Rngs, shape, std: float = 0.02):
    return nnx.Param(normal_init(std)(rngs.params(), shape))


def linear(n_in: int, n_out: int, *, rngs: nnx.Rngs, bias: bool = True) -> Dense:
    """torch's Linear as nn/'s Dense: kernel [in, out] (the transposed torch weight), bias [out]."""
    return Dense((n_in,), (n_out,), in_axes=(None,), out_axes=(None,), use_bias=bias, kernel_init=normal_init(),
                 rngs=rngs)


class Projection(nnx.Module):
    """CLAP's `audio_projection` / `text_projection`: Linear, ReLU, Linear."""

    def __init__(self, n_in: int, n_out: int, *, rngs: nnx.Rngs):
        self.fc1 = linear(n_in, n_out, rngs=rngs)
        self.fc2 = linear(n_out, n_out, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.relu(self.fc1(x)))


@functools.lru_cache(maxsize=None)
def relative_position_index(w: int) -> np.ndarray:
    """[w*w, w*w] index into the (2w-1)^2 relative-position bias table (Swin)."""
    coords = np.stack(np.meshgrid(np.arange(w), np.arange(w), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (w - 1)
    return (rel[..., 0] * (2 * w - 1) + rel[..., 1]).astype(np.int32)


@functools.lru_cache(maxsize=None)
def shifted_window_mask(h: int, w: int, win: int, shift: int) -> np.ndarray:
    """[num_windows, win*win, win*win] additive mask (0 / -100) of shifted-window attention."""
    img = np.zeros((h, w), np.float32)
    cuts = (slice(0, -win), slice(-win, -shift), slice(-shift, None))
    for n, (hs, ws) in enumerate((a, b) for a in cuts for b in cuts):
        img[hs, ws] = n
    win_ids = img.reshape(h // win, win, w // win, win).transpose(0, 2, 1, 3).reshape(-1, win * win)
    diff = win_ids[:, None, :] - win_ids[:, :, None]
    return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


def _partition(x, win):
    b, h, w, c = x.shape
    x = x.reshape(b, h // win, win, w // win, win, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, win * win, c)


def _unpartition(x, win, h, w):
    c = x.shape[-1]
    x = x.reshape(-1, h // win, w // win, win, win, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


class SwinBlock(nnx.Module):
    def __init__(self, dim: int, resolution: Tuple[int, int], heads: int, window: int, shift: int,
                 cfg: HTSATConfig, *, rngs: nnx.Rngs):
        if min(resolution) <= window:  # window covers the whole map: no partition, no shift
            window, shift = min(resolution), 0
        self.dim, self.resolution, self.heads, self.window, self.shift = dim, resolution, heads, window, shift
        self.norm1 = LayerNorm(dim, eps=cfg.ln_eps, rngs=rngs)
        self.qkv = linear(dim, 3 * dim, rngs=rngs)
        self.rel_bias = init_normal(rngs, ((2 * window - 1) ** 2, heads))
        self.proj = linear(dim, dim, rngs=rngs)
        self.norm2 = LayerNorm(dim, eps=cfg.ln_eps, rngs=rngs)
        hidden = int(dim * cfg.mlp_ratio)
        self.fc1 = linear(dim, hidden, rngs=rngs)
        self.fc2 = linear(hidden, dim, rngs=rngs)

    def _attention(self, x):
        n_win, n, c = x.shape
        hd = c // self.heads
        qkv = self.qkv(x).reshape(n_win, n, 3, self.heads, hd).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * hd ** -0.5, qkv[1], qkv[2]
        attn = q @ jnp.swapaxes(k, -1, -2)
        index = relative_position_index(self.window).reshape(-1)
        bias = self.rel_bias[...][index].reshape(n, n, self.heads).transpose(2, 0, 1)
        attn = attn + bias[None]
        if self.shift:
            mask = shifted_window_mask(*self.resolution, self.window, self.shift)
            nw = mask.shape[0]
            attn = attn.reshape(n_win // nw, nw, self.heads, n, n) + jnp.asarray(mask)[None, :, None]
            attn = attn.reshape(n_win, self.heads, n, n)
        out = jax.nn.softmax(attn, axis=-1) @ v
        return self.proj(out.transpose(0, 2, 1, 3).reshape(n_win, n, c))

    def __call__(self, x):
        h, w = self.resolution
        b, _, c = x.shape
        y = self.norm1(x).reshape(b, h, w, c)
        if self.shift:
            y = jnp.roll(y, (-self.shift, -self.shift), axis=(1, 2))
        y = _unpartition(self._attention(_partition(y, self.window)), self.window, h, w)
        if self.shift:
            y = jnp.roll(y, (self.shift, self.shift), axis=(1, 2))
        x = x + y.reshape(b, h * w, c)
        return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False))


class PatchMerging(nnx.Module):
    def __init__(self, dim: int, resolution: Tuple[int, int], eps: float, *, rngs: nnx.Rngs):
        self.resolution = resolution
        self.norm = LayerNorm(4 * dim, eps=eps, rngs=rngs)
        self.reduction = linear(4 * dim, 2 * dim, rngs=rngs, bias=False)

    def __call__(self, x):
        h, w = self.resolution
        b, _, c = x.shape
        x = x.reshape(b, h, w, c)
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.reshape(b, -1, 4 * c)))


class SwinStage(nnx.Module):
    def __init__(self, cfg: HTSATConfig, i: int, *, rngs: nnx.Rngs):
        dim = cfg.embed_dim * 2 ** i
        res = cfg.spec_size // cfg.patch_size // 2 ** i
        self.blocks = nnx.List([
            SwinBlock(dim, (res, res), cfg.num_heads[i], cfg.window_size, 0 if j % 2 == 0 else cfg.window_size // 2,
                      cfg, rngs=rngs) for j in range(cfg.depths[i])])
        self.downsample = (PatchMerging(dim, (res, res), cfg.ln_eps, rngs=rngs)
                           if i < len(cfg.depths) - 1 else None)

    def __call__(self, x):
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


class HTSAT(nnx.Module):
    """Waveform [B, clip_samples] -> HTS-AT embedding [B, num_features] (laion_clap's `embedding` output)."""

    def __init__(self, cfg: HTSATConfig, *, rngs: nnx.Rngs):
        cfg.check()
        self.cfg = cfg
        real, imag = stft_matrices(cfg.n_fft)
        self.stft_real = nnx.Param(jnp.asarray(real))
        self.stft_imag = nnx.Param(jnp.asarray(imag))
        self.mel = nnx.Param(jnp.asarray(slaney_mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.mel_bins,
                                                               cfg.fmin, cfg.fmax)))
        self.bn_mean = nnx.Param(jnp.zeros((cfg.mel_bins,), jnp.float32))
        self.bn_var = nnx.Param(jnp.ones((cfg.mel_bins,), jnp.float32))
        self.bn_w = nnx.Param(jnp.ones((cfg.mel_bins,), jnp.float32))
        self.bn_b = nnx.Param(jnp.zeros((cfg.mel_bins,), jnp.float32))
        p = cfg.patch_size
        self.patch_w = init_normal(rngs, (p * p, cfg.embed_dim))  # Conv2d(1, E, p, stride p) as a matmul
        self.patch_b = nnx.Param(jnp.zeros((cfg.embed_dim,), jnp.float32))
        self.patch_norm = LayerNorm(cfg.embed_dim, eps=cfg.ln_eps, rngs=rngs)
        self.stages = nnx.List([SwinStage(cfg, i, rngs=rngs) for i in range(len(cfg.depths))])
        self.norm = LayerNorm(cfg.num_features, eps=cfg.ln_eps, rngs=rngs)

    def log_mel(self, wav):
        """[B, clip_samples] -> log-mel [B, frames, mel_bins] (before the BatchNorm)."""
        c = self.cfg
        half = c.n_fft // 2
        x = jnp.pad(wav, ((0, 0), (half, half)), mode="reflect")
        idx = c.hop_size * np.arange(c.n_frames)[:, None] + np.arange(c.n_fft)[None, :]
        frames = x[:, idx]
        power = jnp.square(frames @ self.stft_real[...]) + jnp.square(frames @ self.stft_imag[...])
        return 10.0 * jnp.log10(jnp.maximum(power @ self.mel[...], 1e-10))

    def image(self, wav):
        """[B, clip_samples] -> the [B, spec_size, spec_size] image the Swin transformer sees."""
        c = self.cfg
        x = self.log_mel(wav)
        x = (x - self.bn_mean[...]) * jax.lax.rsqrt(self.bn_var[...] + c.bn_eps) * self.bn_w[...] + self.bn_b[...]
        if c.n_frames < c.spec_size * c.freq_ratio:
            stretch = bicubic_matrix(c.n_frames, c.spec_size * c.freq_ratio)
            x = jnp.einsum("ot,btf->bof", jnp.asarray(stretch), x)
        b = x.shape[0]
        x = x.transpose(0, 2, 1).reshape(b, c.mel_bins, c.freq_ratio, c.spec_size)  # [B, F, chunk, t]
        return x.transpose(0, 2, 1, 3).reshape(b, c.spec_size, c.spec_size)

    def __call__(self, wav):
        c = self.cfg
        img = self.image(wav)
        b, p, g = img.shape[0], c.patch_size, c.spec_size // c.patch_size
        patches = img.reshape(b, g, p, g, p).transpose(0, 1, 3, 2, 4).reshape(b, g * g, p * p)
        x = self.patch_norm(patches @ self.patch_w[...] + self.patch_b[...])
        for stage in self.stages:
            x = stage(x)
        # laion_clap regroups the tokens before average-pooling them; a mean does not see the order.
        return jnp.mean(self.norm(x), axis=1)


class ClapAudioEncoder(nnx.Module):
    """Waveform [B, clip_samples] at cfg.sample_rate -> unit-norm CLAP audio embedding [B, joint_dim]."""

    def __init__(self, cfg: HTSATConfig, joint_dim: int, *, rngs: nnx.Rngs):
        self.htsat = HTSAT(cfg, rngs=rngs)
        self.projection = Projection(cfg.num_features, joint_dim, rngs=rngs)

    def __call__(self, wav):
        return l2_normalize(self.projection(self.htsat(wav)))


def l2_normalize(x, eps: float = 1e-12):
    """torch.nn.functional.normalize(x, dim=-1)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)

