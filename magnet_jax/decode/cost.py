"""Analytic matmul FLOPs of one decoding forward (for the sampler's roofline)."""
from __future__ import annotations

from magnet_jax.config import LMConfig


def decode_forward_flops(lm: LMConfig, batch: int, length: int, cond_len: int, stage: int, guided: bool = True
                         ) -> float:
    """FLOPs of the matmuls one decoding step needs (what `MagnetLM.decode_logits` computes):
    projections, attention scores and mixing over the keys a query may see (all T at stage 0,
    2 * subcodes_context + 1 at stages > 0), the text rows' cross-attention, the feed-forward
    and one head. Under guidance the batch is doubled, except the first layer's
    self-attention (shared) and the cross-attention (text rows only)."""
    d, f, t, layers = lm.dim, lm.ffn_dim, length, lm.num_layers
    keys = t if stage == 0 or lm.subcodes_context < 0 else min(t, 2 * lm.subcodes_context + 1)
    rows = 2 * batch if guided else batch
    self_attn = 2 * 4 * d * d + 2 * 2 * keys * d
    cross = 2 * 2 * d * d + 2 * 2 * cond_len * d if lm.cross_attention else 0
    ffn = 2 * 2 * d * f
    per_row = layers * (self_attn + ffn) + 2 * d * lm.card
    flops = rows * t * per_row + batch * t * layers * cross
    if guided:  # the first self-attention runs once for both halves
        flops -= batch * t * self_attn
    return float(flops)
