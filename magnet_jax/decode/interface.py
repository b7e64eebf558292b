"""The one sampler interface: `MagnetSampler`, `ARSampler` and `HybridSampler` are `Sampler`s.

    codes = sampler.generate(condition, condition_mask, key, settings, knobs, length=500)

Every sampler holds an LM as (graphdef, params) with its `config`, and takes the projected text
condition [B, S, dim] with its mask [B, S], a PRNG key, static settings, traced knobs and the
length in frames; it returns codes int32 [B, K, T]. `check_inputs` is the input check they all
share (condition, mask, prompt, and MAGNeT's per-codebook settings where they have them).
"""
from __future__ import annotations

import abc

import jax
import jax.numpy as jnp
from flax import nnx

from magnet_jax.models.magnet_lm import MagnetLM


class Sampler(abc.ABC):
    """The declared interface; subclasses set `graphdef`, `params` and `config` (`split_lm`)."""

    graphdef: nnx.GraphDef
    params: nnx.State

    def split_lm(self, lm, params=None) -> None:
        """lm: a MagnetLM module, or its graphdef together with `params` (an nnx.State of Params)."""
        if isinstance(lm, MagnetLM):
            self.graphdef, self.params = nnx.split(lm, nnx.Param)
            self.config = lm.config
        else:
            if params is None:
                raise ValueError("pass a MagnetLM module, or a graphdef together with params")
            self.graphdef, self.params = lm, params
            self.config = nnx.merge(lm, params).config

    def _lm(self, params) -> MagnetLM:
        # Fresh Variables at the current trace level (params may be closed over from an outer trace).
        return nnx.merge(self.graphdef, jax.tree.map(lambda x: x, params))

    @abc.abstractmethod
    def generate(self, condition, condition_mask, key, settings, knobs=None, *, length: int, **kwargs) -> jnp.ndarray:
        """codes int32 [B, K, T]."""

    def check_inputs(self, condition, condition_mask, prompt=None, *, length: int, settings=None,
                     settings_name: str = "settings") -> jnp.ndarray:
        """The shared input check; returns the mask as bool. settings: MAGNeT's `SamplerSettings`
        (one step count per codebook, the LM's span_len), named `settings_name` in errors."""
        c = self.config
        if settings is not None:
            if len(settings.decoding_steps) != c.n_q:
                raise ValueError(f"decoding_steps has {len(settings.decoding_steps)} entries, the LM has n_q={c.n_q} "
                                 "codebooks: give one step count per codebook")
            if settings.span_len != c.span_len:
                raise ValueError(f"{settings_name}.span_len={settings.span_len} differs from the LM's "
                                 f"span_len={c.span_len}")
        if condition.ndim != 3 or condition.shape[-1] != c.dim:
            raise ValueError(f"condition must be the projected text condition [B, S, {c.dim}], got {condition.shape}")
        condition_mask = jnp.asarray(condition_mask).astype(bool)
        if condition_mask.shape != condition.shape[:2]:
            raise ValueError(f"condition_mask must be [B, S] = {condition.shape[:2]}, got {condition_mask.shape}")
        if prompt is not None:
            b = condition.shape[0]
            if prompt.ndim != 3 or prompt.shape[:2] != (b, c.n_q):
                raise ValueError(f"prompt must be codes [B={b}, K={c.n_q}, P], got {prompt.shape}")
            if prompt.shape[-1] >= length:
                raise ValueError(f"the prompt ({prompt.shape[-1]} frames) must be shorter than length={length}")
        return condition_mask
