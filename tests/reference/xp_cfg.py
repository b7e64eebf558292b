"""`xp.cfg` texts in the shape audiocraft exports them (Hydra's merged config, interpolations kept).

The sections and keys follow audiocraft 1.3.0's config/solver/magnet/magnet_32khz.yaml and
audio_magnet_16khz.yaml over config/model/lm/{default,musicgen_lm}.yaml and
config/conditioner/text2music.yaml, as an exported checkpoint carries them; only the
sizes are made tiny.
"""
from __future__ import annotations

from typing import Sequence


def magnet_xp_cfg(*, dim: int = 32, num_heads: int = 4, num_layers: int = 2, n_q: int = 4, card: int = 32,
                  subcodes_context: int = 5, span_len: int = 3, segment_duration: float = 1.0,
                  t5_name: str = "t5-base", lm_model: str = "transformer_lm_magnet", causal: bool = False,
                  delays: Sequence[int] = (0, 1, 2, 3), decoding_steps: Sequence[int] = (6, 3, 3, 2),
                  temp: float = 3.0, top_p: float = 0.9, max_cfg_coef: float = 10.0, bias: bool = False,
                  layer_scale=None, norm_first: bool = True, sample_rate: int = 32000) -> str:
    modeling = "parallel" if lm_model == "transformer_lm_magnet" else "delay"
    ls = "null" if layer_scale is None else layer_scale
    b = "true" if bias else "false"
    steps = ", ".join(str(int(s)) for s in decoding_steps)
    magnet_only = (f"  subcodes_context: {subcodes_context}\n  compression_model_framerate: 50\n  segment_duration: 0\n"
                   f"  span_len: -1\nmasking:\n  span_len: {span_len}\n") if modeling == "parallel" else ""
    return f"""\
device: cuda
dtype: float32
autocast: true
autocast_dtype: float16
seed: 2036
sample_rate: {sample_rate}
channels: 1
lm_model: {lm_model}
solver: magnet
compression_model_checkpoint: //pretrained/facebook/encodec_32khz
efficient_attention_backend: xformers
dataset:
  batch_size: 192
  num_workers: 10
  segment_duration: {segment_duration}
  sample_rate: ${{sample_rate}}
  channels: ${{channels}}
  train:
    num_samples: 1000000
    merge_text_p: 0.25
    drop_desc_p: 0.5
    drop_other_p: 0.5
classifier_free_guidance:
  training_dropout: 0.3
  inference_coef: 3.0
attribute_dropout: {{}}
fuser:
  cross_attention_pos_emb: false
  cross_attention_pos_emb_scale: 1
  sum: []
  prepend: []
  cross:
  - description
  input_interpolate: []
conditioners:
  description:
    model: t5
    t5:
      name: {t5_name}
      finetune: false
      word_dropout: 0.3
      normalize_text: false
codebooks_pattern:
  modeling: {modeling}
  delay:
    delays: [{", ".join(str(d) for d in delays)}]
    flatten_first: 0
    empty_initial: 0
  unroll:
    flattening: [0, 1, 2, 3]
    delays: [0, 0, 0, 0]
  music_lm:
    group_by: 2
  coarse_first:
    delays: [0, 0, 0]
  parallel:
    empty_initial: -1
transformer_lm:
  dim: {dim}
  num_heads: {num_heads}
  num_layers: {num_layers}
  hidden_scale: 4
  n_q: {n_q}
  card: {card}
  dropout: 0.0
  emb_lr: null
  activation: gelu
  norm_first: {"true" if norm_first else "false"}
  bias_ff: {b}
  bias_attn: {b}
  bias_proj: {b}
  past_context: null
  causal: {"true" if causal else "false"}
  custom: false
  memory_efficient: true
  attention_as_float32: false
  layer_scale: {ls}
  positional_embedding: sin
  xpos: false
  checkpointing: none
  weight_init: gaussian
  depthwise_init: current
  zero_bias_init: true
  norm: layer_norm
  cross_attention: false
  qk_layer_norm: false
  qk_layer_norm_cross: false
  attention_dropout: null
  kv_repeat: 1
  two_step_cfg: false
{magnet_only}optim:
  epochs: 500
  optimizer: dadam
  lr: 1
generate:
  lm:
    max_prompt_len: null
    max_gen_len: null
    remove_prompts: false
    use_sampling: true
    temp: {temp}
    top_k: 0
    top_p: {top_p}
    max_cfg_coef: {max_cfg_coef}
    min_cfg_coef: 1.0
    decoding_steps: [{steps}]
    anneal_temp: true
    span_scoring: max
    span_arrangement: nonoverlap
"""
