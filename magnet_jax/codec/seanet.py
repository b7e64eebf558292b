"""SEANet encoder/decoder layers of EnCodec, channels-last ([B, N, C]) for XLA.

Padding follows the reference: a conv pads `kernel - stride` in total (all on the left when
causal, else split with the extra sample on the left) plus what makes the last window whole;
reflect padding of an input shorter than the pad first zero-extends it. A transposed conv trims
the same total from its output.
"""
from __future__ import annotations

import math
from typing import List

import jax
import jax.numpy as jnp
from flax import nnx

from magnet_jax.codec.config import EncodecConfig


def _pad1d(x, left: int, right: int, mode: str):
    """x [B, N, C]."""
    if mode != "reflect":
        return jnp.pad(x, ((0, 0), (left, right), (0, 0)), mode="constant")
    n = x.shape[1]
    extra = max(0, max(left, right) - n + 1)  # reflect needs more samples than the pad
    if extra:
        x = jnp.pad(x, ((0, 0), (0, extra), (0, 0)))
    y = jnp.pad(x, ((0, 0), (left, right), (0, 0)), mode="reflect")
    return y[:, : y.shape[1] - extra]


class Conv1d(nnx.Module):
    def __init__(self, cfg: EncodecConfig, c_in: int, c_out: int, kernel: int, stride: int = 1, dilation: int = 1,
                 *, rngs: nnx.Rngs):
        self.kernel_size, self.stride, self.dilation = kernel, stride, dilation
        self.causal, self.pad_mode = cfg.use_causal_conv, cfg.pad_mode
        bound = 1.0 / math.sqrt(c_in * kernel)
        self.weight = nnx.Param(jax.random.uniform(rngs.params(), (kernel, c_in, c_out), jnp.float32, -bound, bound))
        self.bias = nnx.Param(jnp.zeros((c_out,), jnp.float32))
        self.norm = GroupNorm1(c_out) if cfg.norm_type == "time_group_norm" else None

    def __call__(self, x):
        k = (self.kernel_size - 1) * self.dilation + 1
        pad_total = k - self.stride
        n = x.shape[1]
        frames = math.ceil((n - k + pad_total) / self.stride + 1) - 1
        extra = frames * self.stride + k - pad_total - n
        if self.causal:
            x = _pad1d(x, pad_total, extra, self.pad_mode)
        else:
            right = pad_total // 2
            x = _pad1d(x, pad_total - right, right + extra, self.pad_mode)
        y = jax.lax.conv_general_dilated(x, self.weight[...], (self.stride,), "VALID", rhs_dilation=(self.dilation,),
                                         dimension_numbers=("NWC", "WIO", "NWC"))
        y = y + self.bias[...]
        return y if self.norm is None else self.norm(y)


class ConvTranspose1d(nnx.Module):
    def __init__(self, cfg: EncodecConfig, c_in: int, c_out: int, kernel: int, stride: int, *, rngs: nnx.Rngs):
        self.kernel_size, self.stride = kernel, stride
        self.causal, self.trim_right_ratio = cfg.use_causal_conv, cfg.trim_right_ratio
        bound = 1.0 / math.sqrt(c_out * kernel)
        # Stored as the equivalent forward-conv kernel [k, in, out] (flipped in time).
        self.weight = nnx.Param(jax.random.uniform(rngs.params(), (kernel, c_in, c_out), jnp.float32, -bound, bound))
        self.bias = nnx.Param(jnp.zeros((c_out,), jnp.float32))
        self.norm = GroupNorm1(c_out) if cfg.norm_type == "time_group_norm" else None

    def __call__(self, x):
        k, s = self.kernel_size, self.stride
        y = jax.lax.conv_general_dilated(x, self.weight[...], (1,), [(k - 1, k - 1)], lhs_dilation=(s,),
                                         dimension_numbers=("NWC", "WIO", "NWC"))
        y = y + self.bias[...]
        if self.norm is not None:
            y = self.norm(y)
        pad_total = k - s
        right = math.ceil(pad_total * self.trim_right_ratio) if self.causal else pad_total // 2
        return y[:, pad_total - right: y.shape[1] - right]


class GroupNorm1(nnx.Module):
    """GroupNorm with one group over (time, channels), per example."""

    def __init__(self, c: int, eps: float = 1e-5):
        self.scale = nnx.Param(jnp.ones((c,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((c,), jnp.float32))
        self.eps = eps

    def __call__(self, x):
        mean = jnp.mean(x, axis=(1, 2), keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


class LSTM(nnx.Module):
    """Stacked LSTM over time with a skip connection (gate order i, f, g, o as torch)."""

    def __init__(self, dim: int, layers: int, *, rngs: nnx.Rngs):
        bound = 1.0 / math.sqrt(dim)
        u = lambda *shape: nnx.Param(jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound))
        self.w_ih = u(layers, dim, 4 * dim)
        self.w_hh = u(layers, dim, 4 * dim)
        self.b = u(layers, 4 * dim)  # bias_ih + bias_hh
        self.layers = layers

    def __call__(self, x):
        h_seq = x
        for layer in range(self.layers):
            w_hh = self.w_hh[...][layer]
            gates_in = h_seq @ self.w_ih[...][layer] + self.b[...][layer]  # [B, N, 4D], all steps at once

            def step(carry, g_in, w_hh=w_hh):
                h, c = carry
                i, f, g, o = jnp.split(g_in + h @ w_hh, 4, axis=-1)
                c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
                h = jax.nn.sigmoid(o) * jnp.tanh(c)
                return (h, c), h

            zeros = jnp.zeros((x.shape[0], x.shape[2]), x.dtype)
            _, hs = jax.lax.scan(step, (zeros, zeros), jnp.swapaxes(gates_in, 0, 1))
            h_seq = jnp.swapaxes(hs, 0, 1)
        return h_seq + x


class ResBlock(nnx.Module):
    def __init__(self, cfg: EncodecConfig, dim: int, dilation: int, *, rngs: nnx.Rngs):
        hidden = dim // cfg.compress
        self.conv1 = Conv1d(cfg, dim, hidden, cfg.residual_kernel_size, dilation=dilation, rngs=rngs)
        self.conv2 = Conv1d(cfg, hidden, dim, 1, rngs=rngs)
        self.shortcut = Conv1d(cfg, dim, dim, 1, rngs=rngs) if cfg.use_conv_shortcut else None

    def __call__(self, x):
        y = self.conv2(jax.nn.elu(self.conv1(jax.nn.elu(x))))
        return (x if self.shortcut is None else self.shortcut(x)) + y


class Encoder(nnx.Module):
    def __init__(self, cfg: EncodecConfig, *, rngs: nnx.Rngs):
        self.conv_in = Conv1d(cfg, cfg.audio_channels, cfg.num_filters, cfg.kernel_size, rngs=rngs)
        blocks: List[nnx.Module] = []
        downs: List[nnx.Module] = []
        scale = 1
        for ratio in reversed(cfg.upsampling_ratios):
            ch = scale * cfg.num_filters
            blocks.append(nnx.List([ResBlock(cfg, ch, cfg.dilation_growth_rate ** j, rngs=rngs)
                                    for j in range(cfg.num_residual_layers)]))
            downs.append(Conv1d(cfg, ch, ch * 2, ratio * 2, stride=ratio, rngs=rngs))
            scale *= 2
        self.blocks, self.downs = nnx.List(blocks), nnx.List(downs)
        self.lstm = LSTM(scale * cfg.num_filters, cfg.num_lstm_layers, rngs=rngs)
        self.conv_out = Conv1d(cfg, scale * cfg.num_filters, cfg.hidden_size, cfg.last_kernel_size, rngs=rngs)

    def __call__(self, x):
        x = self.conv_in(x)
        for res, down in zip(self.blocks, self.downs):
            for block in res:
                x = block(x)
            x = down(jax.nn.elu(x))
        return self.conv_out(jax.nn.elu(self.lstm(x)))


class Decoder(nnx.Module):
    def __init__(self, cfg: EncodecConfig, *, rngs: nnx.Rngs):
        scale = 2 ** len(cfg.upsampling_ratios)
        self.conv_in = Conv1d(cfg, cfg.hidden_size, scale * cfg.num_filters, cfg.kernel_size, rngs=rngs)
        self.lstm = LSTM(scale * cfg.num_filters, cfg.num_lstm_layers, rngs=rngs)
        ups: List[nnx.Module] = []
        blocks: List[nnx.Module] = []
        for ratio in cfg.upsampling_ratios:
            ch = scale * cfg.num_filters
            ups.append(ConvTranspose1d(cfg, ch, ch // 2, ratio * 2, ratio, rngs=rngs))
            blocks.append(nnx.List([ResBlock(cfg, ch // 2, cfg.dilation_growth_rate ** j, rngs=rngs)
                                    for j in range(cfg.num_residual_layers)]))
            scale //= 2
        self.ups, self.blocks = nnx.List(ups), nnx.List(blocks)
        self.conv_out = Conv1d(cfg, cfg.num_filters, cfg.audio_channels, cfg.last_kernel_size, rngs=rngs)

    def __call__(self, x):
        x = self.lstm(self.conv_in(x))
        for up, res in zip(self.ups, self.blocks):
            x = up(jax.nn.elu(x))
            for block in res:
                x = block(x)
        return self.conv_out(jax.nn.elu(x))

