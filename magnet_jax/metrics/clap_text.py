"""CLAP's text branch in Flax NNX: a RoBERTa encoder, its pooler (tanh(dense(h[<s>]))) and CLAP's text
projection (Linear, ReLU, Linear), L2-normalised, as laion_clap's `CLAP.get_text_embedding` with the
`roberta` text model. Token ids come from the `roberta-base` tokenizer (see `magnet_jax.metrics.clap`).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from magnet_jax.metrics.clap_audio import Projection, init_normal, l2_normalize, linear
from magnet_jax.nn.norms import LayerNorm


@dataclass(frozen=True)
class RobertaConfig:
    vocab_size: int = 50265
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1


ROBERTA_BASE = RobertaConfig()


def position_ids(input_ids: jnp.ndarray, pad_id: int) -> jnp.ndarray:
    """RoBERTa's positions: pad_id + 1, pad_id + 2, ... over non-pad tokens, pad_id on pads."""
    keep = (input_ids != pad_id).astype(jnp.int32)
    return jnp.cumsum(keep, axis=1) * keep + pad_id


class RobertaLayer(nnx.Module):
    def __init__(self, cfg: RobertaConfig, *, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.heads = cfg.num_heads
        self.q = linear(d, d, rngs=rngs)
        self.k = linear(d, d, rngs=rngs)
        self.v = linear(d, d, rngs=rngs)
        self.o = linear(d, d, rngs=rngs)
        self.attn_norm = LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs)
        self.fc1 = linear(d, cfg.intermediate_size, rngs=rngs)
        self.fc2 = linear(cfg.intermediate_size, d, rngs=rngs)
        self.ff_norm = LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs)

    def __call__(self, x, bias):
        b, s, d = x.shape
        hd = d // self.heads
        q, k, v = (t.reshape(b, s, self.heads, hd) for t in (self.q(x), self.k(x), self.v(x)))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * hd ** -0.5 + bias
        attn = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v).reshape(b, s, d)
        x = self.attn_norm(x + self.o(attn))
        return self.ff_norm(x + self.fc2(jax.nn.gelu(self.fc1(x), approximate=False)))


class RobertaEncoder(nnx.Module):
    """(input_ids, attention_mask) [B, S] -> pooler output [B, hidden] (Hugging Face RobertaModel)."""

    def __init__(self, cfg: RobertaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.hidden_size
        self.word = init_normal(rngs, (cfg.vocab_size, d))
        self.pos = init_normal(rngs, (cfg.max_position_embeddings, d))
        self.token_type = init_normal(rngs, (cfg.type_vocab_size, d))
        self.embed_norm = LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs)
        self.layers = nnx.List([RobertaLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.pooler = linear(d, d, rngs=rngs)

    def __call__(self, input_ids, attention_mask):
        c = self.cfg
        ids = jnp.asarray(input_ids, jnp.int32)
        if ids.shape[1] > c.max_position_embeddings - c.pad_token_id - 1:
            raise ValueError(f"{ids.shape[1]} tokens exceed RoBERTa's {c.max_position_embeddings} positions")
        x = (self.word[...][ids] + self.pos[...][position_ids(ids, c.pad_token_id)]
             + self.token_type[...][0])
        x = self.embed_norm(x)
        keep = jnp.asarray(attention_mask).astype(bool)
        bias = jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        return jnp.tanh(self.pooler(x[:, 0]))


class ClapTextEncoder(nnx.Module):
    """Token ids [B, S] (+ attention mask) -> unit-norm CLAP text embedding [B, joint_dim]."""

    def __init__(self, cfg: RobertaConfig, joint_dim: int, *, rngs: nnx.Rngs):
        self.roberta = RobertaEncoder(cfg, rngs=rngs)
        self.projection = Projection(cfg.hidden_size, joint_dim, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None):
        if attention_mask is None:
            attention_mask = np.ones(np.shape(input_ids), np.int32)
        return l2_normalize(self.projection(self.roberta(input_ids, attention_mask)))
