"""Hugging Face T5 folders (config.json + safetensors or pytorch_model.bin) -> `T5Encoder`.

Both `T5EncoderModel` and full `T5ForConditionalGeneration` checkpoints (t5-base on the hub is
one) load: the decoder and `lm_head` are not part of the encoder and are skipped on purpose;
`encoder.embed_tokens.weight` is tied to `shared.weight` and may be absent. Every encoder
tensor is consumed and every parameter set, or the load fails naming what is left.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Tuple, Union

import jax.numpy as jnp
import numpy as np
from flax import nnx

from magnet_jax.convert.common import ConversionError, TensorSource, load_into, read_hf_weights
from magnet_jax.text.t5 import T5Config, T5Encoder

_SKIPPED = ("decoder.", "lm_head.")


def t5_params_from_hf(tensors: Dict[str, np.ndarray], cfg: T5Config) -> Dict:
    src = TensorSource({k: v for k, v in tensors.items() if not k.startswith(_SKIPPED)})
    if "encoder.embed_tokens.weight" in src and "shared.weight" in src:
        src.tensors.pop("encoder.embed_tokens.weight")  # tied to shared.weight
    pop = src.pop

    embed = pop("shared.weight") if "shared.weight" in src else pop("encoder.embed_tokens.weight")
    blocks = []
    for i in range(cfg.num_layers):
        pre = f"encoder.block.{i}.layer."
        b = {
            "attn_norm": {"scale": pop(pre + "0.layer_norm.weight")},
            "q": pop(pre + "0.SelfAttention.q.weight", True),
            "k": pop(pre + "0.SelfAttention.k.weight", True),
            "v": pop(pre + "0.SelfAttention.v.weight", True),
            "o": pop(pre + "0.SelfAttention.o.weight", True),
            "ff_norm": {"scale": pop(pre + "1.layer_norm.weight")},
            "wo": pop(pre + "1.DenseReluDense.wo.weight", True),
        }
        if cfg.gated:
            b["wi_0"] = pop(pre + "1.DenseReluDense.wi_0.weight", True)
            b["wi_1"] = pop(pre + "1.DenseReluDense.wi_1.weight", True)
        else:
            b["wi_0"] = pop(pre + "1.DenseReluDense.wi.weight", True)
        blocks.append(b)
    params = {
        "embed": embed,
        "relative_bias": pop("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
        "blocks": {i: b for i, b in enumerate(blocks)},
        "final_norm": {"scale": pop("encoder.final_layer_norm.weight")},
    }
    src.check("the T5 checkpoint lacks {n} encoder tensors, e.g. {names}; is config.json (num_layers, "
              "feed_forward_proj) the checkpoint's?",
              "{n} T5 encoder tensors were not used, e.g. {names}; config.json does not describe this checkpoint")
    return params


def load_t5_encoder(folder: Union[str, os.PathLike], *, dtype=jnp.float32) -> Tuple[T5Config, T5Encoder]:
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: pass a Hugging Face T5 folder "
                                "(config.json + model.safetensors, e.g. a download of t5-base)")
    raw = json.loads((folder / "config.json").read_text())
    if raw.get("model_type", "t5") != "t5":
        raise ConversionError(f"{folder}/config.json describes a {raw.get('model_type')!r} model, not T5")
    cfg = T5Config.from_hf_dict(raw)
    model = T5Encoder(cfg, dtype=dtype, rngs=nnx.Rngs(0))
    load_into(model, t5_params_from_hf(read_hf_weights(folder), cfg))
    return cfg, model
