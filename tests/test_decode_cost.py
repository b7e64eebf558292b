"""The analytic FLOPs of a decoding forward (the sampler roofline's numerator) against XLA's
count of the compiled forward."""
import dataclasses

import jax.numpy as jnp
from flax import nnx

from magnet_jax.config import LMConfig
from magnet_jax.decode.cost import decode_forward_flops
from magnet_jax.models.magnet_lm import MagnetLM


def test_decode_forward_flops_match_xla_count():
    # layers unrolled: XLA's cost analysis counts a scanned body once, not once per layer
    cfg = LMConfig(n_q=4, card=512, dim=128, num_heads=2, num_layers=3, scan_unroll=3, subcodes_context=-1)
    lm = MagnetLM(cfg, rngs=nnx.Rngs(0))
    b, t, s = 2, 96, 8
    cond = jnp.ones((b, s, cfg.dim))
    cross = lm.cross_context(cond, jnp.ones((b, s), bool))
    codes = jnp.zeros((b, cfg.n_q, t), jnp.int32)
    fwd = nnx.jit(lambda m, x: m.decode_logits(x, cross, stage=0, guided=True))
    cost = fwd.lower(lm, codes).compile().cost_analysis()
    counted = (cost[0] if isinstance(cost, list) else cost)["flops"]
    ours = decode_forward_flops(cfg, b, t, s, stage=0)
    # XLA also counts the elementwise work (norms, GELU, softmax): a few percent more
    assert ours <= counted <= 1.2 * ours, (ours, counted)
    # the same forward unguided (the doubled batch, every row cross-attending) needs more
    assert decode_forward_flops(dataclasses.replace(cfg), 2 * b, t, s, 0, guided=False) > ours
