"""The text condition as audiocraft's T5 conditioner applies it: encoder hidden states,
a linear projection to the LM width (`output_proj`, with bias), padded positions zeroed.

Classifier-free guidance's null condition is an empty text: all-zero embeddings with an
all-zero mask. The encoder is pluggable: `embedding` is a learned table over a small word
vocabulary (the embedded synthetic dataset); with `t5` the frozen T5 encoder runs outside
this module (as in audiocraft, it is not trained and not saved with the LM) and the
conditioner takes its hidden states.
"""
from __future__ import annotations

from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from magnet_jax.config import ConditionerConfig
from magnet_jax.nn.initializers import torch_linear_default_init
from magnet_jax.nn.linear import Dense, param
from magnet_jax.parallel.logical import constrain


class EmbeddingTextEncoder(nnx.Module):
    """A learned token table `[vocab, output_dim]`: the stand-in text encoder."""

    def __init__(self, vocab_size: int, dim: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        init = lambda k, s, d: (jax.random.normal(k, s, jnp.float32)).astype(d)
        self.table = param(rngs, init, (vocab_size, dim), ("cond_vocab", "embed"), param_dtype)

    def __call__(self, ids: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
        del mask
        # Gathered whole before the lookup (FSDP-style): its gradient is then summed per device
        # and reduce-scattered, instead of resharding the batch-sharded cotangent onto the table.
        return constrain(self.table[...], (None, None))[ids]


class TextConditioner(nnx.Module):
    def __init__(self, cfg: ConditionerConfig, lm_dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.config = cfg
        if cfg.encoder == "embedding":
            self.encoder = EmbeddingTextEncoder(cfg.vocab_size, cfg.output_dim, param_dtype=param_dtype, rngs=rngs)
        elif cfg.encoder == "t5":
            self.encoder = None
        else:
            raise ValueError(f"conditioner.encoder={cfg.encoder!r}: expected 'embedding' or 't5'.")
        self.output_proj = Dense((cfg.output_dim,), (lm_dim,), in_axes=(None,), out_axes=("embed",), use_bias=True,
                                 kernel_init=torch_linear_default_init(cfg.output_dim), dtype=dtype,
                                 param_dtype=param_dtype, rngs=rngs)

    def __call__(self, text: jnp.ndarray, mask: jnp.ndarray, keep: Optional[jnp.ndarray] = None
                 ) -> Tuple[jnp.ndarray, jnp.ndarray]:
        """text, mask `[B, S]` -> (condition `[B, S, dim]`, mask `[B, S]`).

        text: token ids `[B, S]` for the `embedding` encoder; T5 hidden states `[B, S, output_dim]`
        for `t5`. keep: optional bool `[B]`; False rows become the null condition (CFG dropout).
        """
        mask = mask.astype(bool)
        if keep is not None:
            mask = mask & keep.astype(bool)[:, None]
        hidden = text if self.encoder is None else self.encoder(text, mask)
        cond = self.output_proj(hidden)
        cond = cond * mask[..., None].astype(cond.dtype)
        return cond, mask


def cfg_dropout_keep(key: jax.Array, batch: int, p: float) -> jnp.ndarray:
    """Bool `[B]`: True keeps the condition; each row is dropped with probability p."""
    return jax.random.uniform(key, (batch,)) >= p
