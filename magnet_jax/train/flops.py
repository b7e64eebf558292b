"""Analytic model FLOPs of a MAGNeT train step (for model FLOPs utilisation)."""
from __future__ import annotations

from magnet_jax.config import Config


def train_step_flops(cfg: Config, global_batch: int, cond_len: int) -> float:
    """Forward + backward (x3) matmul FLOPs of one step: projections, attention scores and
    mixing (full T x T, as computed), cross-attention, feed-forward, one output head, and
    the condition projection. Embedding gathers and norms are not counted."""
    lm = cfg.lm
    t, d, f, layers = cfg.data.num_frames, lm.dim, lm.ffn_dim, lm.num_layers
    tokens = global_batch * t
    per_token_layer = 2 * (4 * d * d) + 2 * 2 * t * d + 2 * (2 * d * f)  # self-attn, scores+mix, ffn
    if lm.cross_attention:
        per_token_layer += 2 * (2 * d * d) + 2 * 2 * cond_len * d  # q and out projections, scores+mix
    forward = tokens * (layers * per_token_layer + 2 * d * lm.card)
    if lm.cross_attention:  # cross keys/values of the condition, per layer
        forward += global_batch * cond_len * layers * 2 * (2 * d * d)
    forward += global_batch * cond_len * 2 * cfg.conditioner.output_dim * d
    return 3.0 * forward


# bf16 dense peak per chip, TFLOP/s (public spec sheets).
PEAK_TFLOPS = {
    "H100": 989.0, "H200": 989.0, "A100": 312.0, "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0,
    "TPU v5p": 459.0, "TPU v6 lite": 918.0, "TPU v6e": 918.0,
}


def peak_tflops(device_kind: str):
    for name, peak in PEAK_TFLOPS.items():
        if name.lower() in device_kind.lower():
            return peak
    return None
