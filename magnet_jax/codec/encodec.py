"""EnCodec: SEANet encoder -> residual vector quantisation -> SEANet decoder.

    codes = codec.encode(wav)      # wav float32 [B, C, N] at codec.sample_rate -> int32 [B, K, T]
    wav = codec.decode(codes)      # -> float32 [B, C, T * hop]

Both are jitted once per input shape; `encode_long`/`decode_long` process long audio in fixed
chunks with context on each side, so one compiled program serves any length.
"""
from __future__ import annotations

import weakref
from typing import List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from magnet_jax.codec.config import EncodecConfig
from magnet_jax.codec.seanet import Decoder, Encoder

# Jitted encode/decode per model, kept outside the module (an nnx.Module must not hold its own state).
_JITTED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class EncodecModel(nnx.Module):
    def __init__(self, config: EncodecConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = Encoder(config, rngs=rngs)
        self.decoder = Decoder(config, rngs=rngs)
        self.codebooks = nnx.Param(jax.random.normal(
            rngs.params(), (config.num_quantizers, config.codebook_size, config.codebook_dim), jnp.float32))

    # -- facts ------------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return self.config.sampling_rate

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def num_codebooks(self) -> int:
        return self.config.num_quantizers

    @property
    def cardinality(self) -> int:
        return self.config.codebook_size

    @property
    def channels(self) -> int:
        return self.config.audio_channels

    # -- pure pieces ------------------------------------------------------------------------

    def quantize(self, z):
        """z [B, T, D] -> codes [B, K, T]: per stage the nearest code of the residual."""
        residual, codes = z, []
        for q in range(self.config.num_quantizers):
            embed = self.codebooks[...][q]  # [V, D]
            # The reference's ordering of the distance terms (ties and rounding alike).
            dist = -(jnp.sum(residual ** 2, -1, keepdims=True) - 2 * residual @ embed.T
                     + jnp.sum(embed ** 2, -1)[None, None])
            idx = jnp.argmax(dist, axis=-1)
            residual = residual - embed[idx]
            codes.append(idx)
        return jnp.stack(codes, axis=1).astype(jnp.int32)

    def dequantize(self, codes):
        """codes [B, K, T] -> z [B, T, D] (sum of the code embeddings)."""
        table = self.codebooks[...]
        return sum(table[q][codes[:, q]] for q in range(codes.shape[1]))

    def _encode(self, wav):
        return self.quantize(self.encoder(jnp.swapaxes(wav.astype(jnp.float32), 1, 2)))

    def _decode(self, codes):
        return jnp.swapaxes(self.decoder(self.dequantize(codes)), 1, 2).astype(jnp.float32)

    # -- jitted API -------------------------------------------------------------------------

    def _jit(self, name: str, dtype=None):
        """The jitted method; with a `dtype` (e.g. bfloat16) its weights and activations run in it."""
        cache = _JITTED.setdefault(self, {})
        key = (name, None if dtype is None else jnp.dtype(dtype).name)
        if key not in cache:
            graphdef, state = nnx.split(self)
            method = {"encode": EncodecModel._encode, "decode": EncodecModel._decode}[name]
            cast = (lambda s: s) if dtype is None else (lambda s: jax.tree.map(
                lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, s))
            cache[key] = (jax.jit(lambda s, x: method(nnx.merge(graphdef, cast(s)), x)), state)
        fn, state = cache[key]
        return lambda x: fn(state, x)

    def encode(self, wav) -> jnp.ndarray:
        """wav float32 [B, C, N] -> codes int32 [B, K, ceil(N / hop)]."""
        wav = jnp.asarray(wav)
        if wav.ndim != 3 or wav.shape[1] != self.channels:
            raise ValueError(f"EnCodec takes audio [B, {self.channels}, N], got shape {tuple(wav.shape)}")
        return self._jit("encode")(wav)

    def decode(self, codes, dtype=None) -> jnp.ndarray:
        """codes int [B, K, T] -> wav float32 [B, C, T * hop]; `dtype`: compute dtype (default float32)."""
        codes = jnp.asarray(codes, jnp.int32)
        if codes.ndim != 3 or codes.shape[1] > self.num_codebooks:
            raise ValueError(f"codes must be [B, K<={self.num_codebooks}, T], got shape {tuple(codes.shape)}")
        return self._jit("decode", dtype)(codes)

    def encode_batch(self, waves: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        """Variable-length waveforms [C, N_i] -> (codes [B, K, T_max] zero-padded, frames per item)."""
        hop = self.config.hop_length
        n_max = max(w.shape[-1] for w in waves)
        n_max = -(-n_max // hop) * hop  # whole frames: fewer distinct compiled shapes
        batch = np.zeros((len(waves), self.channels, n_max), np.float32)
        for i, w in enumerate(waves):
            batch[i, :, : w.shape[-1]] = w
        codes = np.array(self.encode(batch))
        frames = np.array([-(-w.shape[-1] // hop) for w in waves])
        for i, t in enumerate(frames):
            codes[i, :, t:] = 0
        return codes, frames

    def encode_long(self, wav, chunk_frames: int = 1500, context_frames: int = 25) -> np.ndarray:
        """Encodes long audio [B, C, N] chunk by chunk (`chunk_frames` frames each, with
        `context_frames` frames of audio on each side whose codes are discarded), so every chunk
        has one compiled shape; codes differ from a whole-file encode only near the joins (the
        LSTM's memory is cut to the context) and in the first frames (zero context, where a
        whole-file encode pads by reflection)."""
        wav = np.asarray(wav, np.float32)
        hop = self.config.hop_length
        t = -(-wav.shape[-1] // hop)
        if t <= chunk_frames:
            return np.asarray(self.encode(wav))
        c = context_frames
        padded = np.pad(wav, ((0, 0), (0, 0), (c * hop, (c + chunk_frames) * hop)))
        out = [np.asarray(self.encode(padded[..., start * hop: (start + chunk_frames + 2 * c) * hop]))[..., c: c + chunk_frames]
               for start in range(0, t, chunk_frames)]
        return np.concatenate(out, axis=-1)[..., :t]

    def decode_long(self, codes, chunk_frames: int = 500, context_frames: int = 25) -> np.ndarray:
        """Decodes long code sequences chunk by chunk with `context_frames` of context on each side
        (discarded), so every chunk has the same compiled shape and the joins have no seams beyond
        the decoder's receptive-field effects (the LSTM's memory is cut to the context)."""
        codes = np.asarray(codes)
        b, k, t = codes.shape
        if t <= chunk_frames:
            return np.asarray(self.decode(codes))
        hop, c = self.config.hop_length, context_frames
        padded = np.pad(codes, ((0, 0), (0, 0), (c, c + chunk_frames)), mode="edge")
        out: List[np.ndarray] = []
        for start in range(0, t, chunk_frames):
            window = padded[:, :, start: start + chunk_frames + 2 * c]
            wav = np.asarray(self.decode(window))
            out.append(wav[:, :, c * hop: (c + chunk_frames) * hop])
        return np.concatenate(out, axis=-1)[:, :, : t * hop]
