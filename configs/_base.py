"""Shared pieces of the named configs (not a config itself: names starting with `_` are skipped).

The released MAGNeT setups follow audiocraft 1.3.0:
  config/solver/magnet/magnet_32khz.yaml        (music, EnCodec 32 kHz, 50 Hz, 4 x 2048)
  config/solver/magnet/audio_magnet_16khz.yaml  (sound, EnCodec 16 kHz, 50 Hz, 4 x 2048)
  config/solver/musicgen/default.yaml, config/solver/audiogen/default.yaml (optimiser)
  config/model/lm/{default,musicgen_lm,audiogen_lm}.yaml, model_scale/{small,medium}.yaml
  config/conditioner/{text2music,text2sound}.yaml
"""
from magnet_jax.config import (
    ConditionerConfig,
    Config,
    DataConfig,
    DecodeConfig,
    LMConfig,
    MaskingConfig,
    OptimConfig,
    TrainConfig,
)

# model_scale/*.yaml: (dim, num_heads, num_layers); medium layers are rematerialised.
SCALES = {
    "small": dict(dim=1024, num_heads=16, num_layers=24, remat=False),  # ~300M
    "medium": dict(dim=1536, num_heads=24, num_layers=48, remat=True),  # ~1.5B
}


def released_lm(scale: str) -> LMConfig:
    """musicgen_lm / audiogen_lm switches + transformer_lm_magnet (bidirectional, restricted context)."""
    return LMConfig(
        n_q=4,
        card=2048,
        hidden_scale=4.0,
        activation="gelu",
        norm_first=True,
        bias_attn=False,
        bias_ff=False,
        bias_proj=False,
        layer_scale=None,
        cross_attention=True,
        causal=False,
        subcodes_context=5,
        span_len=3,
        weight_init="gaussian",
        depthwise_init="current",
        dtype="bfloat16",  # audiocraft autocasts to float16; bfloat16 on TPU/H100
        param_dtype="float32",
        **SCALES[scale],
    )


def _released(name: str, scale: str, segment_duration: float, conditioner: ConditionerConfig,
              optim: OptimConfig, decode: DecodeConfig, batch: int, num_steps: int, data: dict) -> Config:
    return Config(
        name=name,
        lm=released_lm(scale),
        conditioner=conditioner,
        masking=MaskingConfig(schedule="cosine"),
        decode=decode,
        optim=optim,
        train=TrainConfig(
            num_steps=num_steps,
            global_batch_size=batch,
            log_every=100,
            eval_every=2000,  # one audiocraft epoch (updates_per_epoch: 2000)
            checkpoint_every=2000,
            workdir=f"runs/{name}",
        ),
        data=DataConfig(segment_duration=segment_duration, frame_rate=50, **data),
    )


def _optim(**values) -> OptimConfig:
    """musicgen/audiogen default.yaml optimiser: betas (0.9, 0.95), wd 0.1, clip 1.0, EMA 0.99 every 10."""
    common = dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, max_norm=1.0, lr_min_ratio=0.0, ema_decay=0.99,
                  ema_every=10)
    return OptimConfig(**{**common, **values})


def _decode(**values) -> DecodeConfig:
    """The released generation defaults shared by music and sound (generate.lm in the solver yamls)."""
    common = dict(anneal_temperature=True, top_k=0, use_sampling=True, min_cfg_coef=1.0, span_scoring="max",
                  span_arrangement="nonoverlap", schedule="cosine")
    return DecodeConfig(**{**common, **values})


def music(name: str, scale: str, segment_duration: float = 10.0) -> Config:
    """magnet_32khz.yaml: D-Adaptation Adam, cosine(4000), batch 192 on 32 GPUs, 500 x 2000 updates."""
    return _released(
        name,
        scale,
        segment_duration,
        # text2music.yaml: t5-base, CFG dropout 0.3, word dropout 0.3.
        conditioner=ConditionerConfig(encoder="t5", t5_name="t5-base", output_dim=768, max_text_len=256,
                                      cfg_dropout=0.3, word_dropout=0.3),
        optim=_optim(optimizer="dadam", lr=1.0, schedule="cosine", warmup_steps=4000),
        decode=_decode(decoding_steps=(60, 10, 10, 10), temperature=3.0, top_p=0.9, max_cfg_coef=10.0),
        batch=192,
        num_steps=500 * 2000,
        # musicgen/default.yaml crops (min_segment_ratio 0.8); text2music.yaml's metadata captions.
        data=dict(min_segment_ratio=0.8, merge_text_p=0.25, drop_desc_p=0.5, drop_other_p=0.5),
    )


def audio(name: str, scale: str, segment_duration: float = 10.0) -> Config:
    """audio_magnet_16khz.yaml: AdamW 5e-4, inverse_sqrt(3000), 100 x 2000 updates.

    Batch: audiocraft loads 256 items and mixes pairs with mix_p=0.5, so the effective
    train batch is 256 * 0.5 = 128; without mixing augmentation we train on 128 directly.
    """
    return _released(
        name,
        scale,
        segment_duration,
        # text2sound.yaml: t5-large (width 1024), CFG dropout 0.1.
        conditioner=ConditionerConfig(encoder="t5", t5_name="t5-large", output_dim=1024, max_text_len=256,
                                      cfg_dropout=0.1),
        optim=_optim(optimizer="adamw", lr=5e-4, schedule="inverse_sqrt", warmup_steps=3000),
        decode=_decode(decoding_steps=(20, 10, 10, 10), temperature=3.5, top_p=0.8, max_cfg_coef=20.0),
        batch=128,
        num_steps=100 * 2000,
        data=dict(min_segment_ratio=1.0),  # whole segments, captions only (no metadata merging)
    )
