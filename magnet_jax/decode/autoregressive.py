"""Autoregressive sampling for causal LMs (MusicGen checkpoints), as one compiled program.

    sampler = ARSampler(lm)      # a causal MagnetLM with codebook delays (a converted MusicGen LM)
    codes = sampler.generate(condition, condition_mask, key, ARSettings(), ARKnobs.create(), length=500)

The clip is laid out in the delay pattern (decode/delay_pattern.py) and generated one
sequence step at a time, as audiocraft's `LMModel.generate`: step i reads the tokens of
step i (all codebooks), runs every layer for that one position against a preallocated
key/value cache of the steps before, and samples the K tokens of step i + 1 from the last
position's logits. Under classifier-free guidance the batch holds [text; null text] rows
and the logits mix as null + (text - null) * cfg_coef; only the text rows cross-attend
(the null text's cross-attention output is a constant: zero without attention biases).
Prompt cells (continuation) and cells outside the clip keep their tokens; the steps before
the first free cell run the same program, their draws discarded (a prefill, one step at a
time). Everything runs in `lax.fori_loop` over steps inside one `jax.jit`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx, struct

from magnet_jax.decode.delay_pattern import from_pattern, sequence_steps, to_pattern
from magnet_jax.decode.interface import Sampler
from magnet_jax.decode.sampling import sample_tokens
from magnet_jax.models.magnet_lm import MagnetLM
from magnet_jax.nn.attention import _NEG
from magnet_jax.nn.positional import sin_embedding
from magnet_jax.nn.transformer import GuidedCross

UNKNOWN = -1  # a cell still to be sampled


@dataclasses.dataclass(frozen=True)
class ARSettings:
    """Static: changing any of these compiles a new program. Defaults: MusicGen's."""

    use_sampling: bool = True
    top_k: int = 250
    cfg: bool = True  # classifier-free guidance: [text; null text] rows

    def __post_init__(self):
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


@struct.dataclass
class ARKnobs:
    """Traced: any value reuses the compiled program. top_p > 0 wins over top_k (as in audiocraft)."""

    temperature: jnp.ndarray
    top_p: jnp.ndarray
    cfg_coef: jnp.ndarray

    @classmethod
    def create(cls, temperature: float = 1.0, top_p: float = 0.0, cfg_coef: float = 3.0) -> "ARKnobs":
        if temperature < 0 or not 0 <= top_p <= 1:
            raise ValueError(f"need temperature >= 0 and top_p in [0, 1], got {temperature}, {top_p}")
        f = lambda v: jnp.asarray(v, jnp.float32)
        return cls(f(temperature), f(top_p), f(cfg_coef))


class ARSampler(Sampler):
    def __init__(self, lm, params=None):
        """lm: a causal MagnetLM with codebook delays, or its graphdef with `params`."""
        self.split_lm(lm, params)
        c = self.config
        # A Hybrid-MAGNeT LM decodes its prefix causally too (its prefix queries are trained so).
        if not (c.causal or c.kind == "hybrid") or len(c.codebook_delays) != c.n_q:
            raise ValueError("autoregressive sampling needs a causal LM with one delay per codebook (a MusicGen "
                             f"checkpoint); this one has causal={c.causal}, codebook_delays={c.codebook_delays}")
        self._generate_jit = jax.jit(self._generate, static_argnames=("settings", "length", "report"))
        self._listener = None

    # -- one sequence step -----------------------------------------------------------------

    def _embed_step(self, lm: MagnetLM, column, position):
        """column [R, K] int -> [R, 1, D]: the summed codebook embeddings plus the position's."""
        c = lm.config
        table = lm.emb[...].astype(jnp.dtype(c.dtype))
        x = table[0][column[:, 0]]
        for k in range(1, c.n_q):
            x = x + table[k][column[:, k]]
        pos = sin_embedding(position[None], c.dim, c.max_period)
        return (x + (c.positional_scale * pos).astype(x.dtype))[:, None]

    def _forward_step(self, lm: MagnetLM, prepared: "_Prepared", caches, column, position, guided: bool):
        """Logits fp32 [R, K, card] of the next step, and the per-layer caches holding this step's
        keys/values. Layers are unrolled over per-layer weights and caches (slicing stacked ones
        inside the loop would copy them at every step)."""
        graph = nnx.graphdef(lm.transformer.layers)
        cross = prepared.cross
        x = self._embed_step(lm, column, position)
        seen = (jnp.arange(caches[0][0].shape[2]) <= position)[None, None, None, :]
        out = []
        for index, (layer_state, cache) in enumerate(zip(prepared.layers, caches)):
            layer = nnx.merge(graph, layer_state)

            def attend(src, layer=layer, cache=cache):
                y, cache = cached_attention(layer.self_attn, src, cache, position, seen)
                out.append(cache)
                return y

            y = layer.self_residual(x, attend)
            if cross is not None:
                kv = prepared.cross_kv[index]
                if guided:
                    null = None if cross.null_out is None else cross.null_out[index]
                    y = layer.guided_cross_block(y, x, GuidedCross(kv=kv, mask=cross.mask, null_out=null))
                else:
                    y = layer.cross_block(y, x, kv, cross.mask)
            x = layer.ffn_block(y)
        if lm.out_norm is not None:
            x = lm.out_norm(x)
        c = lm.config
        logits = jnp.einsum("rd,nd->rn", x[:, 0], prepared.heads.astype(x.dtype), preferred_element_type=jnp.float32)
        logits = logits.reshape(x.shape[0], c.n_q, c.card)
        if lm.heads_bias is not None:
            logits = logits + lm.heads_bias[...].astype(jnp.float32)
        return logits, tuple(out)

    # -- the program -----------------------------------------------------------------------

    def _generate(self, params, condition, condition_mask, prompt, key, knobs: ARKnobs, *, settings: ARSettings,
                  length: int, report: bool = False):
        lm = self._lm(params)
        c = lm.config
        delays = c.codebook_delays
        b = condition.shape[0]
        cross = lm.cross_context(condition, condition_mask)
        guided = settings.cfg and cross is not None
        prepared = _Prepared.build(lm, cross)
        codes = jnp.full((b, c.n_q, length), UNKNOWN, jnp.int32)
        if prompt is not None and prompt.shape[-1]:
            codes = codes.at[:, :, :prompt.shape[-1]].set(prompt.astype(jnp.int32))
        seq = to_pattern(codes, delays, c.mask_id)  # [B, K, S]: known cells and UNKNOWN ones
        steps = sequence_steps(length, delays)
        shape = (2 * b if guided else b, c.num_heads, steps, c.dim // c.num_heads)  # the layout the dots want
        caches = tuple((jnp.zeros(shape, jnp.dtype(c.dtype)), jnp.zeros(shape, jnp.dtype(c.dtype)))
                       for _ in range(c.num_layers))

        def step(i, carry):
            seq, caches = carry
            column = seq[:, :, i]
            if guided:
                column = jnp.concatenate([column, column], axis=0)
            logits, caches = self._forward_step(lm, prepared, caches, column, i, guided)
            if guided:
                logits = logits[b:] + (logits[:b] - logits[b:]) * knobs.cfg_coef
            tokens, _ = sample_tokens(jax.random.fold_in(key, i), logits, knobs.temperature,
                                      use_sampling=settings.use_sampling, top_k=settings.top_k, top_p=knobs.top_p)
            nxt = jax.lax.dynamic_index_in_dim(seq, i + 1, axis=2, keepdims=False)
            nxt = jnp.where(nxt == UNKNOWN, tokens, nxt)
            if report:  # progress from inside the program (its operand orders it after the step)
                jax.debug.callback(self._report, i + 1, steps - 1, nxt[0, 0])
            return jax.lax.dynamic_update_index_in_dim(seq, nxt, i + 1, axis=2), caches

        seq, _ = jax.lax.fori_loop(0, steps - 1, step, (seq, caches))
        return from_pattern(seq, delays, length)

    def _report(self, done, total, _):
        if self._listener is not None:
            self._listener(int(done), int(total))

    # -- driver ----------------------------------------------------------------------------

    def generate(self, condition, condition_mask, key, settings: Optional[ARSettings] = None,
                 knobs: Optional[ARKnobs] = None, *, length: int, prompt: Optional[jnp.ndarray] = None,
                 progress=None) -> jnp.ndarray:
        """codes int32 [B, K, length]. condition: the projected text condition [B, S, dim] with its
        mask [B, S]; prompt: codes [B, K, P] kept as they are (continuation). progress(done, total)
        is called after every sequence step, from inside the compiled program."""
        settings = ARSettings() if settings is None else settings
        knobs = ARKnobs.create() if knobs is None else knobs
        if length < 1:
            raise ValueError(f"length must be >= 1 frame, got {length}")
        condition_mask = self.check_inputs(condition, condition_mask, prompt, length=length)
        self._listener = progress
        try:
            codes = self._generate_jit(self.params, condition, condition_mask, prompt, key, knobs, settings=settings,
                                       length=length, report=progress is not None)
            if progress is not None:
                codes = jax.block_until_ready(codes)  # every callback has run before the listener goes
                jax.effects_barrier()
        finally:
            self._listener = None
        return codes

    def lower(self, condition, condition_mask, key, settings=None, knobs=None, *, length, prompt=None):
        """The jitted program lowered for these shapes (compile it to time compilation)."""
        settings = ARSettings() if settings is None else settings
        knobs = ARKnobs.create() if knobs is None else knobs
        return self._generate_jit.lower(self.params, condition, jnp.asarray(condition_mask).astype(bool), prompt,
                                        key, knobs, settings=settings, length=length)


@struct.dataclass
class _Prepared:
    """What every step reads, laid out once per generation outside the step loop: each layer's
    weights and cross-attention keys/values as separate arrays, and the heads as [K * card, dim]."""

    layers: tuple
    cross: Optional[GuidedCross]
    cross_kv: Optional[tuple]
    heads: jnp.ndarray

    @classmethod
    def build(cls, lm: MagnetLM, cross: Optional[GuidedCross]) -> "_Prepared":
        c = lm.config
        stacked = nnx.state(lm.transformer.layers)
        layers = tuple(jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(c.num_layers))
        cross_kv = None if cross is None else tuple(jax.tree.map(lambda a, i=i: a[i], cross.kv)
                                                    for i in range(c.num_layers))
        heads = jnp.swapaxes(lm.heads[...], 1, 2).reshape(c.n_q * c.card, c.dim)
        return cls(layers, cross, cross_kv, heads)


def cached_attention(attn, src, cache, position, seen):
    """One step of self-attention: src [R, 1, D] (normed) writes its key/value into the cache
    ([R, H, S, Dh] each) at `position`, then attends to the cached steps where `seen` [1, 1, 1, S]."""
    q = attn.query(src) * jnp.asarray(1.0 / math.sqrt(attn.head_dim), src.dtype)
    k, v = attn.key_value(src)
    ck, cv = (jax.lax.dynamic_update_slice(c, jnp.swapaxes(n, 1, 2).astype(c.dtype), (0, 0, position, 0))
              for c, n in zip(cache, (k, v)))
    scores = jnp.einsum("rqhd,rhsd->rhqs", q, ck.astype(q.dtype), preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(jnp.where(seen, scores, _NEG), axis=-1).astype(attn.dtype)
    return attn.out(jnp.einsum("rhqs,rhsd->rqhd", weights, cv.astype(attn.dtype))), (ck, cv)
