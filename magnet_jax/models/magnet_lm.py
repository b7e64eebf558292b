"""The MAGNeT LM: audiocraft's `MagnetLMModel` transformer in Flax NNX.

K codebook embeddings of `card + 1` rows (row `card` is the mask token) are summed, a
sinusoidal position is added, a stack of pre-norm layers (self-attention, cross-attention
to the projected text condition, GELU feed-forward) runs, then a final norm and K heads.
Self-attention is full for stage 0 and limited to |t_q - t_k| <= subcodes_context for
stages > 0; the model can also run causally (rescoring, Hybrid-MAGNeT).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import jax
import jax.numpy as jnp
from flax import nnx, struct

from magnet_jax.config import LMConfig
from magnet_jax.nn.attention import LocalWindow, causal_mask, local_window_mask
from magnet_jax.nn.attention_kernels import KernelMask
from magnet_jax.nn.initializers import lm_init
from magnet_jax.nn.linear import param
from magnet_jax.nn.norms import LayerNorm
from magnet_jax.nn.positional import sin_embedding
from magnet_jax.nn.transformer import GuidedCross, TransformerStack
from magnet_jax.parallel.logical import constrain

Stage = Union[int, jnp.ndarray, None]


@struct.dataclass
class DecodePrefix:
    """What a decoding step computes over the whole sequence: the last layer's input
    `[R, T, D]` (R = 2B under guidance: text rows, then null-text rows) and that layer's
    self-attention keys and values over all T (of the B text rows alone when a one-layer
    guided stack shares them)."""

    hidden: jnp.ndarray
    key_value: Tuple[jnp.ndarray, jnp.ndarray]


class MagnetLM(nnx.Module):
    def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
        self.config = config
        c = config
        pdtype = jnp.dtype(c.param_dtype)
        self.emb = param(rngs, lm_init(c.weight_init, c.dim), (c.n_q, c.card + 1, c.dim),
                         ("codebooks", "vocab", "embed"), pdtype)
        self.transformer = TransformerStack(c, rngs=rngs)
        self.out_norm = (
            LayerNorm(c.dim, eps=c.norm_eps, dtype=jnp.dtype(c.dtype), param_dtype=pdtype, rngs=rngs)
            if c.norm_first else None
        )
        self.heads = param(rngs, lm_init(c.weight_init, c.dim), (c.n_q, c.dim, c.card),
                           ("codebooks", "embed", "vocab"), pdtype)
        self.heads_bias = (
            param(rngs, lambda k, s, d: jnp.zeros(s, d), (c.n_q, c.card), ("codebooks", "vocab"), pdtype)
            if c.bias_proj else None
        )

    # -- pieces the sampler reuses -------------------------------------------------------

    def cross_key_values(self, condition: jnp.ndarray):
        """Cross-attention keys/values of every layer for a projected condition `[B, S, dim]`:
        compute once per generation, pass as `cross_kv=` to every step."""
        return self.transformer.cross_key_values(condition.astype(jnp.dtype(self.config.dtype)))

    def cross_context(self, condition: jnp.ndarray, condition_mask: Optional[jnp.ndarray]) -> Optional[GuidedCross]:
        """What every decoding step needs of the text condition, computed once per generation:
        per-layer keys/values, the cross-attention mask, and the null text's cross-attention
        output per layer (None when it is exactly zero: no attention biases, since the null
        condition is all zeros). None for an LM without cross-attention."""
        c = self.config
        if not c.cross_attention:
            return None
        mask = None
        if c.cross_attention_mask and condition_mask is not None:
            mask = condition_mask.astype(bool)[:, None, None, :]
        null_out = None
        if c.bias_attn:  # keys and values are the biases: every query averages the same values
            null = jnp.zeros((1,) + condition.shape[1:], jnp.dtype(c.dtype))
            null_kv = self.transformer.cross_key_values(null)
            null_mask = jnp.zeros((1, 1, 1, null.shape[1]), bool) if c.cross_attention_mask else None

            @nnx.vmap(in_axes=(0, 0), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def outputs(layer, kv):
                return layer.cross_attn(jnp.zeros((1, 1, c.dim), null.dtype), kv=kv, mask=null_mask)[0, 0]

            null_out = outputs(self.transformer.layers, null_kv)
        return GuidedCross(kv=self.cross_key_values(condition), mask=mask, null_out=null_out)

    def self_attention_mask(self, length: int, stage: Stage, causal: Optional[bool] = None):
        """Boolean `[T, T]` mask (True = attend), a LocalWindow (static stage > 0, banded), or
        None for full attention; with `lm.attention_impl` 'cudnn' or 'splash', a KernelMask."""
        c = self.config
        causal = c.causal if causal is None else causal
        mask = self._einsum_self_attention_mask(length, stage, causal)
        if c.attention_impl == "xla":
            return mask
        return KernelMask(c.attention_impl, stage, c.subcodes_context if stage is not None else -1, causal, mask)

    def _einsum_self_attention_mask(self, length: int, stage: Stage, causal: bool):
        c = self.config
        mask = causal_mask(length) if causal else None
        if stage is not None and c.subcodes_context >= 0:
            local = local_window_mask(length, c.subcodes_context)
            if isinstance(stage, int):
                if stage > 0 and mask is None and c.banded_local_attention:
                    return LocalWindow(c.subcodes_context)  # same result, no T x T scores
                stage_mask = local if stage > 0 else None
            else:  # traced stage (training draws it per step)
                stage_mask = local | (jnp.asarray(stage) == 0)
            if stage_mask is not None:
                mask = stage_mask if mask is None else mask & stage_mask
        return mask

    def embed(self, codes: jnp.ndarray) -> jnp.ndarray:
        c = self.config
        # Gathered whole before the lookups (FSDP-style; see EmbeddingTextEncoder).
        table = constrain(self.emb[...], (None, None, None)).astype(jnp.dtype(c.dtype))
        # One [B, T, D] lookup per codebook, added in the reference's order (a gathered
        # [B, K, T, D] reduced over K is several times slower on CPU).
        x = table[0][codes[:, 0]]
        for k in range(1, c.n_q):
            x = x + table[k][codes[:, k]]
        pos = sin_embedding(jnp.arange(codes.shape[-1]), c.dim, c.max_period)
        return x + (c.positional_scale * pos).astype(x.dtype)[None]

    def logits(self, hidden: jnp.ndarray, stage: Stage = None) -> jnp.ndarray:
        """fp32 logits: `[B, K, T, card]`, or `[B, T, card]` for one `stage` only."""
        w = self.heads[...]
        b = None if self.heads_bias is None else self.heads_bias[...]
        if stage is not None:
            w = w[stage]
            out = jnp.einsum("btd,dc->btc", hidden, w.astype(hidden.dtype), preferred_element_type=jnp.float32)
            return out if b is None else out + b[stage].astype(jnp.float32)
        out = jnp.einsum("btd,kdc->bktc", hidden, w.astype(hidden.dtype), preferred_element_type=jnp.float32)
        return out if b is None else out + b.astype(jnp.float32)[None, :, None, :]

    # -- forward -------------------------------------------------------------------------

    def __call__(
        self,
        codes: jnp.ndarray,
        condition: Optional[jnp.ndarray] = None,
        condition_mask: Optional[jnp.ndarray] = None,
        *,
        stage: Stage = None,
        stage_logits_only: bool = False,
        causal: Optional[bool] = None,
        cross_kv=None,
    ) -> jnp.ndarray:
        """codes `[B, K, T]` int (mask id = card) -> logits float32 `[B, K, T, card]`.

        stage: codebook being predicted (None: unrestricted attention, as the reference's -1);
          an int or a traced scalar. With `stage_logits_only`, only that head runs: `[B, T, card]`.
        condition: projected text condition `[B, S, dim]` (or precomputed `cross_kv`).
        """
        if stage_logits_only and stage is None:
            raise ValueError("stage_logits_only=True needs a stage")
        x = self.hidden_states(codes, condition, condition_mask, stage=stage, causal=causal, cross_kv=cross_kv)
        return self.logits(x, stage if stage_logits_only else None)

    def hidden_states(self, codes: jnp.ndarray, condition: Optional[jnp.ndarray] = None,
                      condition_mask: Optional[jnp.ndarray] = None, *, stage: Stage = None,
                      causal: Optional[bool] = None, cross_kv=None, attention_mask=None) -> jnp.ndarray:
        """The forward up to the heads (after the final norm): `[B, T, dim]`; see `__call__`.
        attention_mask: a self-attention mask (True = attend, broadcasting to [B, H, T, T]) in
        place of the one `stage` and `causal` select (Hybrid-MAGNeT's mixed mask)."""
        c = self.config
        if codes.ndim != 3 or codes.shape[1] != c.n_q:
            raise ValueError(f"codes must be [B, K={c.n_q}, T], got shape {codes.shape}")
        if c.cross_attention and cross_kv is None:
            if condition is None:
                raise ValueError("this LM cross-attends to a text condition: pass condition= or cross_kv=")
            if condition.shape[-1] != c.dim:
                raise ValueError(f"condition must be projected to lm.dim={c.dim}, got width {condition.shape[-1]}")
            cross_kv = self.cross_key_values(condition)
        cross_mask = None
        if c.cross_attention_mask and condition_mask is not None:
            cross_mask = condition_mask.astype(bool)[:, None, None, :]
        x = self.embed(codes)
        x = constrain(x, ("batch", "length", "embed"))
        if attention_mask is None:
            attention_mask = self.self_attention_mask(codes.shape[-1], stage, causal)
        x = self.transformer(x, attention_mask, cross_kv, cross_mask)
        if self.out_norm is not None:
            x = self.out_norm(x)
        return x

    def decode_logits(self, codes: jnp.ndarray, cross: Optional[GuidedCross], *, stage: Stage, guided: bool,
                      pattern_stage: Optional[int] = None):
        """The sampler's forward: fp32 logits `[B, T, card]` of one `stage`, or with `guided`
        (classifier-free guidance) the pair (text, null text) computed from one [2B] batch in
        which the rows share their first self-attention and only the text rows cross-attend.
        `cross` comes from `cross_context`. A traced `stage` (the sampler's later stages in one
        loop) takes its attention pattern from the static `pattern_stage`."""
        b = codes.shape[0]
        x = constrain(self.embed(codes), ("batch", "length", "embed"))
        self_mask = self.self_attention_mask(codes.shape[-1], _pattern(stage, pattern_stage))
        if guided and cross is not None:
            x = self.transformer.guided(x, self_mask, cross)
        else:  # without cross-attention both halves are the same rows
            x = self.transformer(x, self_mask, None if cross is None else cross.kv,
                                 None if cross is None else cross.mask)
        if self.out_norm is not None:
            x = self.out_norm(x)
        logits = self.logits(x, stage)
        if not guided:
            return logits
        return (logits[:b], logits[b:]) if cross is not None else (logits, logits)

    # -- the same forward, split so that the last layer runs at chosen positions only ------

    def _shares_last_self_attention(self, cross, guided: bool) -> bool:
        return guided and cross is not None and self.config.num_layers == 1

    def decode_prefix(self, codes: jnp.ndarray, cross: Optional[GuidedCross], *, stage: Stage, guided: bool,
                      pattern_stage: Optional[int] = None) -> DecodePrefix:
        """Every layer but the last over all positions, then the last one's keys/values: the
        part of `decode_logits` that every position needs (keys see the whole sequence)."""
        last = self.config.num_layers - 1
        b = codes.shape[0]
        x = constrain(self.embed(codes), ("batch", "length", "embed"))
        self_mask = self.self_attention_mask(codes.shape[-1], _pattern(stage, pattern_stage))
        if guided and cross is not None:
            x = self.transformer.guided(x, self_mask, cross, layers=last)
        elif last:
            x = self.transformer(x, self_mask, None if cross is None else cross.kv,
                                 None if cross is None else cross.mask, layers=last)
        layer = self.transformer.layer(last)
        source = x[:b] if self._shares_last_self_attention(cross, guided) else x
        return DecodePrefix(hidden=x, key_value=layer.self_key_value(source))

    def decode_logits_at(self, prefix: DecodePrefix, positions: jnp.ndarray, cross: Optional[GuidedCross], *,
                         stage: Stage, guided: bool, guidance=None, pattern_stage: Optional[int] = None):
        """`decode_logits` at positions [B, C] only (in [0, T)): [B, C, card], or the (text, null
        text) pair with `guided`. The last layer, the final norm and the head run for those
        positions alone; `prefix` is `decode_prefix` of the same codes.

        guidance: with `guided`, the classifier-free guidance coefficient g (may be traced):
        returns the guided logits null + (text - null) * g, computed as the head of the
        guided hidden state (the head is affine, so it runs once instead of twice)."""
        c = self.config
        last = c.num_layers - 1
        b, t = positions.shape[0], prefix.hidden.shape[1]
        two = guided and cross is not None
        rows = jnp.concatenate([positions, positions]) if two else positions
        x = jnp.take_along_axis(prefix.hidden, rows[..., None], axis=1)  # [R, C, D]
        layer = self.transformer.layer(last)
        self_mask = self.self_attention_mask(t, _pattern(stage, pattern_stage))
        if self._shares_last_self_attention(cross, guided):
            y = layer.self_block(x[:b], self_mask, kv=prefix.key_value, positions=positions)
            y = jnp.concatenate([y, y], axis=0)
        else:
            y = layer.self_block(x, self_mask, kv=prefix.key_value, positions=rows)
        if cross is not None:
            kv = jax.tree.map(lambda a: a[last], cross.kv)
            if two:
                null_out = None if cross.null_out is None else cross.null_out[last]
                y = layer.guided_cross_block(y, x, GuidedCross(kv=kv, mask=cross.mask, null_out=null_out))
            else:
                y = layer.cross_block(y, x, kv, cross.mask)
        y = layer.ffn_block(y)
        if self.out_norm is not None:
            y = self.out_norm(y)
        if guided and guidance is not None:
            if two:
                text, null = y[:b], y[b:]
                y = null + (text - null) * jnp.asarray(guidance, y.dtype)
            return self.logits(y, stage)
        logits = self.logits(y, stage)
        if not guided:
            return logits
        return (logits[:b], logits[b:]) if two else (logits, logits)


def _pattern(stage: Stage, pattern_stage: Optional[int]) -> Stage:
    """The stage whose attention pattern applies: `pattern_stage` when given (static, standing
    for a traced `stage` of the same kind: 0, or any later stage)."""
    if pattern_stage is None:
        return stage
    if not isinstance(pattern_stage, int):
        raise TypeError(f"pattern_stage must be a Python int, got {type(pattern_stage).__name__}")
    return pattern_stage
