"""Masking for MAGNeT: schedules gamma(t), span masks for training, sampler span counts."""
from magnet_jax.masking.schedules import (
    available_schedules,
    get_schedule,
    register_schedule,
    schedule_np,
)
from magnet_jax.masking.spans import (
    decoding_mask_rates,
    mask_rate_to_span_starts_lut,
    num_masked_spans_schedule,
    span_mask,
)

__all__ = [
    "available_schedules",
    "get_schedule",
    "register_schedule",
    "schedule_np",
    "decoding_mask_rates",
    "mask_rate_to_span_starts_lut",
    "num_masked_spans_schedule",
    "span_mask",
]
