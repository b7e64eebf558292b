"""Sampling from a model in training (the quickstart ends by generating from captions)."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from magnet_jax.config import Config
from magnet_jax.decode.sampler import MagnetSampler
from magnet_jax.decode.settings import DecodeKnobs, SamplerSettings


class TextSampler:
    """Codes from tokenised captions with a trained model's parameters. One compiled program per
    static decoding setting: reuse one TextSampler across a sweep of traced knobs (temperature,
    CFG coefficients, top-p)."""

    def __init__(self, cfg: Config, graphdef, params):
        self.cfg, self.params = cfg, params
        model = nnx.merge(graphdef, params)
        # The parameters go in as arguments: they may span other processes' devices.
        self._condition = jax.jit(lambda p, i, m: nnx.merge(graphdef, p).conditioner(i, m))
        if cfg.lm.kind == "hybrid":
            from magnet_jax.decode.hybrid import HybridSampler

            self.sampler = HybridSampler(model.lm)
        else:
            self.sampler = MagnetSampler(model.lm)

    def generate(self, text_ids, text_mask, key, *, length: int, **decode_overrides):
        """Codes [B, K, T'] with the config's decoding settings, changed by `decode_overrides`."""
        cfg = self.cfg
        cond, mask = self._condition(self.params, jnp.asarray(text_ids), jnp.asarray(text_mask))
        settings = SamplerSettings.from_config(cfg.decode, cfg.lm.span_len, **decode_overrides)
        knobs = DecodeKnobs.from_config(cfg.decode, **decode_overrides)
        if cfg.lm.kind == "hybrid":
            from magnet_jax.decode.hybrid import HybridSettings

            # decode.hybrid_prefix seconds, at most half the clip (a training run's clips may be short)
            prefix = min(int(cfg.decode.hybrid_prefix * cfg.data.frame_rate), length // 2)
            return self.sampler.generate(cond, mask, key, HybridSettings(prefix, settings), knobs, length=length)
        return self.sampler.generate(cond, mask, key, settings, knobs, length=length)


def sample_synthetic_captions(cfg: Config, graphdef, params, data, captions: Sequence[str], seed: int = 0,
                              sampler: "TextSampler | None" = None, **decode_overrides):
    """Generates one clip per caption from the synthetic dataset's vocabulary; returns
    (codes, per-stage structure agreement). In a multi-process job every process calls it
    (the parameters may be sharded across processes). sampler: reuse its compiled programs."""
    from magnet_jax.data.synthetic import encode_captions

    ids, mask = encode_captions(list(captions), cfg.conditioner.max_text_len)
    sampler = sampler or TextSampler(cfg, graphdef, params)
    codes = sampler.generate(ids, mask, jax.random.key(seed), length=cfg.data.num_frames, **decode_overrides)
    return codes, data.structure_agreement(host_array(codes), captions)


def host_array(x: jax.Array):
    """A numpy copy of a global array on every process, also when its shards live on other
    processes (FSDP across hosts): then every process must call this."""
    if x.is_fully_addressable:
        return jax.device_get(x)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(x, tiled=True)
