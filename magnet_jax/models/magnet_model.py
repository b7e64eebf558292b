"""What MAGNeT trains: the text conditioner and the LM, in one NNX module."""
from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
from flax import nnx

from magnet_jax.config import Config
from magnet_jax.models.magnet_lm import MagnetLM
from magnet_jax.text.conditioner import TextConditioner


class MagnetModel(nnx.Module):
    def __init__(self, config: Config, *, rngs: nnx.Rngs):
        lm = config.lm
        self.conditioner = TextConditioner(config.conditioner, lm.dim, dtype=jnp.dtype(lm.dtype),
                                           param_dtype=jnp.dtype(lm.param_dtype), rngs=rngs)
        self.lm = MagnetLM(lm, rngs=rngs)

    def __call__(self, codes, text_ids, text_mask, *, stage=None, keep: Optional[jnp.ndarray] = None,
                 stage_logits_only: bool = False):
        cond, cond_mask = self.conditioner(text_ids, text_mask, keep)
        return self.lm(codes, cond, cond_mask, stage=stage, stage_logits_only=stage_logits_only)
