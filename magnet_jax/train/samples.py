"""Sampling from a model in training (the quickstart ends by generating from captions)."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from magnet_jax.config import Config
from magnet_jax.decode.sampler import MagnetSampler
from magnet_jax.decode.settings import DecodeKnobs, SamplerSettings


def generate_from_text(cfg: Config, graphdef, params, text_ids, text_mask, key, *, length: int, **decode_overrides):
    """Codes [B, K, T'] for tokenised captions, with the config's decoding settings."""
    model = nnx.merge(graphdef, params)
    # The parameters go in as arguments: they may span other processes' devices.
    cond, mask = jax.jit(lambda p, i, m: nnx.merge(graphdef, p).conditioner(i, m))(
        params, jnp.asarray(text_ids), jnp.asarray(text_mask))
    settings = SamplerSettings.from_config(cfg.decode, cfg.lm.span_len, **decode_overrides)
    knobs = DecodeKnobs.from_config(cfg.decode, **decode_overrides)
    if cfg.lm.kind == "hybrid":
        from magnet_jax.decode.hybrid import HybridSampler, HybridSettings

        # decode.hybrid_prefix seconds, at most half the clip (a training run's clips may be short)
        prefix = min(int(cfg.decode.hybrid_prefix * cfg.data.frame_rate), length // 2)
        return HybridSampler(model.lm).generate(cond, mask, key, HybridSettings(prefix, settings), knobs,
                                                length=length)
    return MagnetSampler(model.lm).generate(cond, mask, key, settings, knobs, length=length)


def sample_synthetic_captions(cfg: Config, graphdef, params, data, captions: Sequence[str], seed: int = 0):
    """Generates one clip per caption from the synthetic dataset's vocabulary; returns
    (codes, per-stage structure agreement). In a multi-process job every process calls it
    (the parameters may be sharded across processes)."""
    from magnet_jax.data.synthetic import encode_captions

    ids, mask = encode_captions(list(captions), cfg.conditioner.max_text_len)
    codes = generate_from_text(cfg, graphdef, params, ids, mask, jax.random.key(seed), length=cfg.data.num_frames)
    return codes, data.structure_agreement(host_array(codes), captions)


def host_array(x: jax.Array):
    """A numpy copy of a global array on every process, also when its shards live on other
    processes (FSDP across hosts): then every process must call this."""
    if x.is_fully_addressable:
        return jax.device_get(x)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(x, tiled=True)
