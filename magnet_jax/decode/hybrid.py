"""Hybrid-MAGNeT decoding as one compiled program: autoregressive for the first frames, then
MAGNeT's stages with that prefix fixed.

    sampler = HybridSampler(lm)                  # a MagnetLM with lm.kind = "hybrid"
    codes = sampler.generate(condition, condition_mask, key, HybridSettings(prefix_frames=150, magnet=...),
                             length=500)

The model is trained as train/hybrid.py describes: over the delay pattern, queries before
the prefix boundary p attend causally, the others as MAGNeT's stages. Decoding mirrors it:
1. the autoregressive sampler (decode/autoregressive.py, its KV cache, CFG and top-k) runs
   the pattern's first steps; the boundary keeps frames t < p - delay_k of codebook k, the
   staggered prefix the model was trained with (the few extra cells a full frame would need
   belong to the parallel part);
2. each stage s then decodes as MAGNeT (decode/stage.py: span re-masking, guidance,
   annealing), its codebook's prefix frames fixed, every forward over the whole pattern with
   the mixed attention mask of boundary p and stage s.
Both parts run inside one `jax.jit`.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from magnet_jax.decode.autoregressive import ARKnobs, ARSampler, ARSettings
from magnet_jax.decode.delay_pattern import predicting_steps, sequence_steps, to_pattern
from magnet_jax.decode.interface import Sampler
from magnet_jax.decode.sampler import output_length
from magnet_jax.decode.settings import DecodeKnobs, SamplerSettings
from magnet_jax.decode.stage import StageTables, StepModel, decode_step, initial_stage_state, step_key
from magnet_jax.models.magnet_lm import MagnetLM
from magnet_jax.nn.attention import hybrid_attention_mask


@dataclasses.dataclass(frozen=True)
class HybridSettings:
    """Static. prefix_frames: frames decoded autoregressively (duration x frame rate); `ar`: the
    prefix's sampling (audiocraft's hybrid branch: top-k 250, temperature 1, see ARKnobs);
    `magnet`: the stages' decoding after it."""

    prefix_frames: int
    magnet: SamplerSettings = SamplerSettings()
    ar: ARSettings = ARSettings()

    def __post_init__(self):
        if self.prefix_frames < 0:
            raise ValueError(f"prefix_frames must be >= 0, got {self.prefix_frames}")


class HybridSampler(Sampler):
    def __init__(self, lm: MagnetLM):
        c = lm.config
        if c.kind != "hybrid":
            raise ValueError(f"Hybrid-MAGNeT decoding needs an LM trained as one (lm.kind='hybrid'); this one is "
                             f"kind={c.kind!r}" + (" (causal: a MusicGen LM)" if c.causal else ""))
        self.split_lm(lm)
        self.ar = ARSampler(self.graphdef, self.params)
        self._generate_jit = jax.jit(self._generate, static_argnames=("settings", "length"))

    def _step_model(self, params, cross, stage: int, guided: bool, prefix: int, length: int) -> StepModel:
        """MAGNeT's step model over the pattern: the whole forward in `prefix`, the head at the
        asked positions (guidance mixed into the hidden state: the head is affine)."""
        c = self.config
        steps = sequence_steps(length, c.codebook_delays)
        mask = hybrid_attention_mask(jnp.asarray([prefix]), steps, stage, c.subcodes_context)[0, 0]
        frame_steps = predicting_steps(length, c.codebook_delays)[stage]
        two = guided and cross is not None

        def forward(codes):
            lm = self._lm(params)
            x = lm.embed(to_pattern(codes, c.codebook_delays, c.mask_id))
            if two:
                h = lm.transformer.guided(x, mask, cross)
            else:
                h = lm.transformer(x, mask, None if cross is None else cross.kv, None if cross is None else cross.mask)
            if lm.out_norm is not None:
                h = lm.out_norm(h)
            return h[:, frame_steps]  # [R, T, D]: the output that predicts each frame of this codebook

        def logits_at(hidden, positions, guidance):
            b = positions.shape[0]
            rows = jnp.concatenate([positions, positions]) if two else positions
            y = jnp.take_along_axis(hidden, rows[..., None], axis=1)
            if two:
                text, null = y[:b], y[b:]
                y = text if guidance is None else null + (text - null) * jnp.asarray(guidance, y.dtype)
            return self._lm(params).logits(y, stage)

        return StepModel(forward, logits_at)

    def _generate(self, params, condition, condition_mask, key, ar_knobs: ARKnobs, knobs: DecodeKnobs, *,
                  settings: HybridSettings, length: int):
        c = self.config
        b, prefix = condition.shape[0], settings.prefix_frames
        delays = np.asarray(c.codebook_delays)
        codes = jnp.full((b, c.n_q, length), c.mask_id, jnp.int32)
        if prefix:
            head = self.ar._generate(params, condition, condition_mask, None, jax.random.fold_in(key, c.n_q), ar_knobs,
                                     settings=settings.ar, length=prefix)
            kept = np.arange(prefix)[None, :] < prefix - delays[:, None]  # the staggered prefix
            codes = codes.at[:, :, :prefix].set(jnp.where(kept[None], head, c.mask_id))
        cross = self._lm(params).cross_context(condition, condition_mask)
        magnet = settings.magnet
        for stage, steps in enumerate(magnet.decoding_steps):
            fixed = max(prefix - int(delays[stage]), 0)
            tables = StageTables.build(magnet, steps, length, fixed)
            model = self._step_model(params, cross, stage, magnet.cfg, prefix, length)
            prompt = codes[:, :, :fixed]

            def body(i, state, stage=stage, tables=tables, model=model, prompt=prompt):
                return decode_step(model, state, i, step_key(key, stage, i), knobs, stage=stage, tables=tables,
                                   settings=magnet, mask_id=c.mask_id, prompt=prompt)

            codes = jax.lax.fori_loop(0, steps, body, initial_stage_state(codes, tables)).codes
        return codes

    def generate(self, condition, condition_mask, key, settings: HybridSettings,
                 knobs: Optional[DecodeKnobs] = None, ar_knobs: Optional[ARKnobs] = None, *,
                 length: int) -> jnp.ndarray:
        """codes int32 [B, K, T'] (T' = length, trimmed to whole spans when chunked). condition:
        the projected text condition [B, S, dim] with its mask [B, S]."""
        knobs = DecodeKnobs.create() if knobs is None else knobs
        ar_knobs = ARKnobs.create() if ar_knobs is None else ar_knobs
        mask = self.check_inputs(condition, condition_mask, length=length, settings=settings.magnet,
                                 settings_name="settings.magnet")
        out = output_length(settings.magnet, length)
        if settings.prefix_frames >= out:
            raise ValueError(f"the autoregressive prefix ({settings.prefix_frames} frames) must be shorter than the "
                             f"clip ({out} frames): ask for a shorter prefix or a longer duration")
        return self._generate_jit(self.params, condition, mask, key, ar_knobs, knobs, settings=settings, length=out)
