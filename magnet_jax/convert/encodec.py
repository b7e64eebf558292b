"""EnCodec checkpoints -> `EncodecModel`, with weight normalisation folded.

`load_encodec(path)` takes a Hugging Face `EncodecModel` folder (config.json + safetensors or
pytorch_model.bin: what audiocraft loads for `facebook/encodec_32khz`) or an audiocraft
`compression_state_dict.bin` that points at such a codec by name (`{'pretrained': name}`,
resolved through `magnet_jax.hub`). The config comes from the checkpoint. Every tensor is
consumed (the quantizer's training statistics `inited`, `cluster_size`, `embed_avg` are
skipped on purpose) and every parameter set, or the load fails naming what is left.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
from flax import nnx

from magnet_jax.codec import EncodecConfig, EncodecModel
from magnet_jax.convert.audiocraft_lm import ConversionError, load_into
from magnet_jax.convert.t5 import read_hf_weights

_VQ_STATS = ("inited", "cluster_size", "embed_avg")


class _Tensors:
    def __init__(self, tensors: Dict[str, np.ndarray]):
        self.t = {k: np.asarray(v, np.float32) for k, v in tensors.items()}
        self.missing = []

    def pop(self, name: str):
        if name not in self.t:
            self.missing.append(name)
            return None
        return self.t.pop(name)

    def conv_weight(self, prefix: str) -> Optional[np.ndarray]:
        """torch layout weight of `prefix` (e.g. `encoder.layers.0.conv.`), weight norm folded (dim 0)."""
        if prefix + "weight" in self.t:
            return self.pop(prefix + "weight")
        for g_key, v_key in (("parametrizations.weight.original0", "parametrizations.weight.original1"),
                             ("weight_g", "weight_v")):
            if prefix + v_key in self.t:
                g, v = self.pop(prefix + g_key), self.pop(prefix + v_key)
                if g is None:
                    return None
                norm = np.sqrt(np.sum(v.astype(np.float64) ** 2, axis=tuple(range(1, v.ndim)), keepdims=True))
                return (g * (v / norm)).astype(np.float32)
        self.missing.append(prefix + "weight")
        return None


def _conv(src: _Tensors, prefix: str, cfg: EncodecConfig, transposed: bool = False) -> Dict:
    w = src.conv_weight(prefix + "conv.")
    if w is not None:
        # forward conv [out, in, k] -> [k, in, out]; transposed [in, out, k] -> flipped [k, in, out]
        w = w[:, :, ::-1].transpose(2, 0, 1) if transposed else w.transpose(2, 1, 0)
    p = {"weight": w, "bias": src.pop(prefix + "conv.bias")}
    if cfg.norm_type == "time_group_norm":
        p["norm"] = {"scale": src.pop(prefix + "norm.weight"), "bias": src.pop(prefix + "norm.bias")}
    return p


def _lstm(src: _Tensors, prefix: str, cfg: EncodecConfig) -> Dict:
    w_ih, w_hh, b = [], [], []
    for n in range(cfg.num_lstm_layers):
        wi, wh = src.pop(f"{prefix}weight_ih_l{n}"), src.pop(f"{prefix}weight_hh_l{n}")
        bi, bh = src.pop(f"{prefix}bias_ih_l{n}"), src.pop(f"{prefix}bias_hh_l{n}")
        if any(x is None for x in (wi, wh, bi, bh)):
            return {"w_ih": None, "w_hh": None, "b": None}
        w_ih.append(wi.T)
        w_hh.append(wh.T)
        b.append(bi + bh)
    return {"w_ih": np.stack(w_ih), "w_hh": np.stack(w_hh), "b": np.stack(b)}


def _res(src: _Tensors, prefix: str, cfg: EncodecConfig) -> Dict:
    p = {"conv1": _conv(src, prefix + "block.1.", cfg), "conv2": _conv(src, prefix + "block.3.", cfg)}
    if cfg.use_conv_shortcut:
        p["shortcut"] = _conv(src, prefix + "shortcut.", cfg)
    return p


def params_from_hf(tensors: Dict[str, np.ndarray], cfg: EncodecConfig) -> Dict:
    src = _Tensors(tensors)
    r = cfg.num_residual_layers
    # encoder.layers: conv, per ratio ([res] * r, ELU, down conv), LSTM, ELU, conv
    enc, i = {"conv_in": _conv(src, "encoder.layers.0.", cfg), "blocks": {}, "downs": {}}, 1
    for n in range(len(cfg.upsampling_ratios)):
        enc["blocks"][n] = {j: _res(src, f"encoder.layers.{i + j}.", cfg) for j in range(r)}
        enc["downs"][n] = _conv(src, f"encoder.layers.{i + r + 1}.", cfg)
        i += r + 2
    enc["lstm"] = _lstm(src, f"encoder.layers.{i}.lstm.", cfg)
    enc["conv_out"] = _conv(src, f"encoder.layers.{i + 2}.", cfg)
    # decoder.layers: conv, LSTM, per ratio (ELU, up conv, [res] * r), ELU, conv
    dec, i = {"conv_in": _conv(src, "decoder.layers.0.", cfg), "lstm": _lstm(src, "decoder.layers.1.lstm.", cfg),
              "ups": {}, "blocks": {}}, 2
    for n in range(len(cfg.upsampling_ratios)):
        dec["ups"][n] = _conv(src, f"decoder.layers.{i + 1}.", cfg, transposed=True)
        dec["blocks"][n] = {j: _res(src, f"decoder.layers.{i + 2 + j}.", cfg) for j in range(r)}
        i += r + 2
    dec["conv_out"] = _conv(src, f"decoder.layers.{i + 1}.", cfg)
    books = [src.pop(f"quantizer.layers.{q}.codebook.embed") for q in range(cfg.num_quantizers)]
    for key in [k for k in src.t if k.startswith("quantizer.layers.")]:
        tail = key.split(".")
        if tail[-1] in _VQ_STATS or int(tail[2]) >= cfg.num_quantizers:  # training stats, unused stages
            src.t.pop(key)
    if src.missing:
        raise ConversionError(f"the EnCodec checkpoint lacks {len(src.missing)} tensors, e.g. {src.missing[:4]}; "
                              "is config.json the checkpoint's?")
    if src.t:
        raise ConversionError(f"{len(src.t)} EnCodec tensors were not used, e.g. {sorted(src.t)[:4]}; config.json "
                              "does not describe this checkpoint")
    return {"encoder": enc, "decoder": dec, "codebooks": np.stack(books)}


def load_hf_encodec(folder: Union[str, os.PathLike]) -> Tuple[EncodecConfig, EncodecModel]:
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: pass a Hugging Face EnCodec folder "
                                "(e.g. a download of facebook/encodec_32khz)")
    raw = json.loads((folder / "config.json").read_text())
    if raw.get("model_type", "encodec") != "encodec":
        raise ConversionError(f"{folder}/config.json describes a {raw.get('model_type')!r} model, not EnCodec")
    cfg = EncodecConfig.from_hf_dict(raw)
    model = EncodecModel(cfg, rngs=nnx.Rngs(0))
    load_into(model, params_from_hf(read_hf_weights(folder), cfg))
    return cfg, model


def load_encodec(path: Union[str, os.PathLike], **resolve_kwargs) -> Tuple[EncodecConfig, EncodecModel]:
    """A Hugging Face EnCodec folder, or an audiocraft `compression_state_dict.bin` pointing at one."""
    path = Path(path)
    if path.is_dir():
        if (path / "config.json").is_file():
            return load_hf_encodec(path)
        path = path / "compression_state_dict.bin"
    if not path.is_file():
        raise FileNotFoundError(f"no EnCodec checkpoint at {path}")
    from magnet_jax import hub
    from magnet_jax.convert.torch_pickle import load_torch_file

    pkg = load_torch_file(path)
    if not isinstance(pkg, dict) or not ("pretrained" in pkg or "best_state" in pkg):
        raise ConversionError(f"{path} is not an audiocraft compression checkpoint")
    if "pretrained" not in pkg:
        raise ConversionError(f"{path} holds audiocraft's own EnCodec weights (best_state + xp.cfg); magnet_jax "
                              "loads the Hugging Face layout only: convert the codec to a transformers "
                              "EncodecModel folder first")
    folder = hub.resolve_component(str(pkg["pretrained"]), explicit=resolve_kwargs.get("codec_dir"),
                                   model_dir=path.parent, subfolder="codec", env_var="MAGNET_JAX_CODEC_DIR",
                                   patterns=hub.CODEC_FILES, cache_dir=resolve_kwargs.get("cache_dir"),
                                   local_files_only=resolve_kwargs.get("local_files_only", False), what="codec")
    return load_hf_encodec(folder)
