"""Embedded synthetic-data demo: trains on 2 CPU cores in a few minutes and shows the loss falling.

    magnet-jax train --config configs/quickstart.py
"""
from magnet_jax.config import (
    ConditionerConfig, Config, DataConfig, DecodeConfig, LMConfig, MaskingConfig, OptimConfig, TrainConfig,
)


def get_config() -> Config:
    return Config(
        name="quickstart",
        lm=LMConfig(n_q=4, card=128, dim=128, num_heads=4, num_layers=4, span_len=3),
        conditioner=ConditionerConfig(encoder="embedding", vocab_size=64, output_dim=128, max_text_len=12,
                                      cfg_dropout=0.3),
        masking=MaskingConfig(schedule="cosine"),
        decode=DecodeConfig(decoding_steps=(20, 10, 10, 10)),  # music sampling defaults otherwise
        optim=OptimConfig(optimizer="adamw", lr=2e-3, b1=0.9, b2=0.95, weight_decay=0.01, max_norm=1.0,
                          schedule="cosine", warmup_steps=100, ema_decay=0.99, ema_every=10),
        train=TrainConfig(num_steps=1000, global_batch_size=16, log_every=20, eval_every=100,
                          checkpoint_every=400, keep_checkpoints=2, workdir="runs/quickstart",
                          smoke_test=True),  # exit 1 unless the verdict says it learned
        data=DataConfig(source="synthetic", segment_duration=2.0, frame_rate=50),  # T = 100 frames
    )
