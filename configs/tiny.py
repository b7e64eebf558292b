"""A very small model for tests and CPU smoke runs: 4 x 64 tokens, T = 30 frames."""
from magnet_jax.config import (
    ConditionerConfig, Config, DataConfig, DecodeConfig, LMConfig, MaskingConfig, OptimConfig, TrainConfig,
)


def get_config() -> Config:
    return Config(
        name="tiny",
        lm=LMConfig(n_q=4, card=64, dim=32, num_heads=2, num_layers=2, span_len=3),
        conditioner=ConditionerConfig(encoder="embedding", vocab_size=64, max_text_len=8, output_dim=32,
                                      cfg_dropout=0.3),
        masking=MaskingConfig(schedule="cosine"),
        decode=DecodeConfig(decoding_steps=(4, 2, 2, 2)),
        optim=OptimConfig(optimizer="adamw", lr=3e-3, warmup_steps=5, schedule="cosine"),
        train=TrainConfig(num_steps=20, global_batch_size=8, eval_every=10, log_every=5,
                          checkpoint_every=10, workdir="runs/tiny"),
        data=DataConfig(source="synthetic", segment_duration=0.6, frame_rate=50),  # 30 frames
    )
