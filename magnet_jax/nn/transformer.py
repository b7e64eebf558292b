"""audiocraft's `StreamingTransformerLayer` (self-attention, cross-attention, feed-forward,
pre- or post-norm, optional LayerScale), stacked over depth and scanned."""
from __future__ import annotations

from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from flax import nnx, struct

from magnet_jax.config import LMConfig
from magnet_jax.nn.attention import MultiHeadAttention
from magnet_jax.nn.initializers import depth_scale, lm_init
from magnet_jax.nn.mlp import FeedForward
from magnet_jax.nn.norms import LayerNorm
from magnet_jax.parallel.logical import constrain


class LayerScale(nnx.Module):
    def __init__(self, dim: int, init: float, param_dtype, rngs: nnx.Rngs):
        del rngs
        self.scale = nnx.Param(jnp.full((dim,), init, param_dtype), out_sharding=("embed",), eager_sharding=False)

    def __call__(self, x):
        return x * self.scale[...].astype(x.dtype)


def _maybe_scale(cfg: LMConfig, rngs) -> Optional[LayerScale]:
    if cfg.layer_scale is None:
        return None
    return LayerScale(cfg.dim, cfg.layer_scale, jnp.dtype(cfg.param_dtype), rngs)


class TransformerLayer(nnx.Module):
    """One layer; `init_scale` is audiocraft's depthwise 1/sqrt(2 depth) (a traced scalar under vmap)."""

    def __init__(self, cfg: LMConfig, init_scale, *, rngs: nnx.Rngs):
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.norm_first = cfg.norm_first
        d, f = cfg.dim, cfg.ffn_dim
        norm = lambda: LayerNorm(d, eps=cfg.norm_eps, dtype=dtype, param_dtype=pdtype, rngs=rngs)
        attn = lambda: MultiHeadAttention(
            d, cfg.num_heads, use_bias=cfg.bias_attn, out_init=lm_init(cfg.weight_init, d, init_scale),
            dtype=dtype, param_dtype=pdtype, rngs=rngs)
        self.norm1 = norm()
        self.self_attn = attn()
        self.layer_scale_1 = _maybe_scale(cfg, rngs)
        if cfg.cross_attention:
            self.norm_cross = norm()
            self.cross_attn = attn()
            self.layer_scale_cross = _maybe_scale(cfg, rngs)
        else:
            self.norm_cross = self.cross_attn = self.layer_scale_cross = None
        self.norm2 = norm()
        self.ffn = FeedForward(
            d, f, activation=cfg.activation, use_bias=cfg.bias_ff,
            init_in=lm_init(cfg.weight_init, d, init_scale), init_out=lm_init(cfg.weight_init, f, init_scale),
            dtype=dtype, param_dtype=pdtype, rngs=rngs)
        self.layer_scale_2 = _maybe_scale(cfg, rngs)

    @staticmethod
    def _scaled(scale: Optional[LayerScale], x):
        return x if scale is None else scale(x)

    def cross_key_value(self, condition: jnp.ndarray):
        if self.cross_attn is None:
            raise ValueError("this model has no cross-attention (lm.cross_attention=False)")
        return self.cross_attn.key_value(condition)

    # The layer as three residual blocks, so classifier-free guidance can run the first
    # self-attention once for both halves and the cross-attention on the text half only.

    def self_key_value(self, x):
        """The self-attention's keys and values over a whole layer input x [B, T, D]."""
        return self.self_attn.key_value(self.norm1(x) if self.norm_first else x)

    def self_block(self, x, self_mask=None, kv=None, positions=None):
        """With `kv` (from `self_key_value` of the whole input) and `positions` [B, C], x holds
        only those positions: the block runs for them alone."""
        return self.self_residual(x, lambda h: self.self_attn(h, kv=kv, mask=self_mask, positions=positions))

    def self_residual(self, x, attend):
        """The self-attention block around any `attend(normed x) -> [B, T, D]` (a cached step's)."""
        if self.norm_first:
            return x + self._scaled(self.layer_scale_1, attend(self.norm1(x)))
        return self.norm1(x + self._scaled(self.layer_scale_1, attend(x)))

    def cross_block(self, x, src, cross_kv, cross_mask=None):
        """src: the layer input, which audiocraft's post-norm branch queries (not the updated x);
        kept for checkpoint fidelity."""
        if self.norm_first:
            return x + self._scaled(self.layer_scale_cross, self.cross_attn(self.norm_cross(x), kv=cross_kv,
                                                                            mask=cross_mask))
        return self.norm_cross(x + self._scaled(self.layer_scale_cross, self.cross_attn(src, kv=cross_kv,
                                                                                        mask=cross_mask)))

    def guided_cross_block(self, x, src, cross: "GuidedCross"):
        """x [2B, T, D]: text rows, then null-text rows. The cross-attention runs on the text rows
        only; a null row's output is the constant `cross.null_out` (the attention of any query
        to the all-zero null condition), exactly zero without attention biases."""
        b = cross.kv[0].shape[0]
        text = self.cross_block(x[:b], src[:b], cross.kv, cross.mask)
        null = x[b:]
        if cross.null_out is not None:
            null = null + self._scaled(self.layer_scale_cross, cross.null_out.astype(x.dtype))
        if not self.norm_first:
            null = self.norm_cross(null)
        return jnp.concatenate([text, null], axis=0)

    def ffn_block(self, x):
        if self.norm_first:
            return x + self._scaled(self.layer_scale_2, self.ffn(self.norm2(x)))
        return self.norm2(x + self._scaled(self.layer_scale_2, self.ffn(x)))

    def __call__(self, x, self_mask=None, cross_kv: Optional[Tuple] = None, cross_mask=None):
        x = constrain(x, ("batch", "length", "embed"))
        src = x
        x = self.self_block(x, self_mask)
        if self.cross_attn is not None and cross_kv is not None:
            x = self.cross_block(x, src, cross_kv, cross_mask)
        return self.ffn_block(x)


@struct.dataclass
class GuidedCross:
    """Cross-attention context of a guided forward: keys/values of the text condition only
    (`[L, B, S, H, Dh]` each, or one layer's `[B, S, H, Dh]`), its mask `[B, 1, 1, S]` or
    None, and the null-text output per layer (`[L, D]`; None when it is exactly zero)."""

    kv: Tuple[jnp.ndarray, jnp.ndarray]
    mask: Optional[jnp.ndarray]
    null_out: Optional[jnp.ndarray]


def checkpoint_policy(name: str):
    """A remat policy by name (config_checks.REMAT_POLICIES): jax.checkpoint_policies' own, or
    offload_dots_with_no_batch_dims (saved weight-matmul outputs live in pinned host memory)."""
    if name == "offload_dots_with_no_batch_dims":
        return jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host")
    return getattr(jax.checkpoint_policies, name)


class TransformerStack(nnx.Module):
    """`num_layers` layers with parameters stacked on a leading `layers` axis, run by `nnx.scan`
    (one compiled body whatever the depth)."""

    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs):
        self.num_layers, self.unroll, self.remat = cfg.num_layers, cfg.scan_unroll, cfg.remat
        self.remat_policy = cfg.remat_policy
        scales = depth_scale(cfg.depthwise_init, jnp.arange(cfg.num_layers), cfg.num_layers)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0, 0), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make(scale, rngs):
            return TransformerLayer(cfg, scale, rngs=rngs)

        self.layers = make(scales, rngs)

    def cross_key_values(self, condition: jnp.ndarray):
        """Per-layer cross-attention keys/values, each `[L, B, S, H, Dh]`."""

        @nnx.vmap(in_axes=(0, None), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def kv(layer, cond):
            return layer.cross_key_value(cond)

        return kv(self.layers, condition)

    def layer(self, index: int) -> TransformerLayer:
        """Layer `index` on its own (its parameters sliced out of the stack)."""
        graph, state = nnx.split(self.layers)
        return nnx.merge(graph, jax.tree.map(lambda x: x[index], state))

    def _over_layers(self, body, x, xs, layers: Optional[int]):
        """x through body(h, xs_i) for layers i < `layers` (all by default; xs stacked per layer)."""
        if layers is None or layers == self.num_layers:
            return jax.lax.scan(lambda h, xi: (body(h, xi), None), x, xs, unroll=self.unroll)[0]
        # The first layers only: index the stacked weights as a scan does (a slice of the stack,
        # or a cond skipping the rest, would copy weights at every step).
        at = lambda i: jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), xs)
        return jax.lax.fori_loop(0, layers, lambda i, h: body(h, at(i)), x)

    def __call__(self, x, self_mask=None, cross_kv=None, cross_mask=None, layers: Optional[int] = None):
        """layers: run only the first this many (default: all)."""
        if layers is not None:
            graph, state = nnx.split(self.layers)

            def run(h, xs):
                layer_state, kv = xs
                return nnx.merge(graph, layer_state)(h, self_mask, kv, cross_mask)

            return self._over_layers(run, x, (state, cross_kv), layers)

        def body(h, layer_and_kv):
            layer, kv = layer_and_kv
            return layer(h, self_mask, kv, cross_mask)

        if self.remat:
            body = nnx.remat(body, policy=checkpoint_policy(self.remat_policy))

        def step(h, layer_and_kv):
            return body(h, layer_and_kv), None

        scan = nnx.scan(step, in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0), length=self.num_layers,
                        unroll=self.unroll, transform_metadata={nnx.PARTITION_NAME: "layers"})
        x, _ = scan(x, (self.layers, cross_kv))
        return x

    def guided(self, x, self_mask, cross: Optional[GuidedCross], layers: Optional[int] = None):
        """The stack under classifier-free guidance: x [B, T, D] is the embedding both halves
        share; returns [2B, T, D] (text rows, then null-text rows). The first layer's
        self-attention runs once for both halves, every cross-attention on the text rows only.
        One scan over all layers (slicing the stacked weights would copy them); `layers`: run
        only the first this many."""
        graph, state = nnx.split(self.layers)
        b = x.shape[0]

        def one_layer(h, layer_state, layer_kv, layer_null, index):
            layer = lambda: nnx.merge(graph, layer_state)
            shared = lambda h: jnp.concatenate([layer().self_block(h[:b], self_mask)] * 2, axis=0)
            y = jax.lax.cond(index == 0, shared, lambda h: layer().self_block(h, self_mask), h)
            if cross is not None:
                y = layer().guided_cross_block(y, h, GuidedCross(kv=layer_kv, mask=cross.mask, null_out=layer_null))
            return layer().ffn_block(y)

        xs = (state, None if cross is None else cross.kv, None if cross is None else cross.null_out,
              jnp.arange(self.num_layers))
        return self._over_layers(lambda h, xi: one_layer(h, *xi), jnp.concatenate([x, x], axis=0), xs, layers)

