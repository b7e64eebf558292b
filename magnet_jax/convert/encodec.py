"""EnCodec checkpoints -> `EncodecModel`, with weight normalisation folded.

`load_encodec(path)` takes
  * a Hugging Face `EncodecModel` folder (config.json + safetensors or pytorch_model.bin: what
    audiocraft loads for `facebook/encodec_32khz`);
  * an audiocraft `compression_state_dict.bin` (or its folder) that points at such a codec by name
    (`{'pretrained': name}`, resolved through `magnet_jax.hub`);
  * an audiocraft `compression_state_dict.bin` holding its own EnCodec (`{'best_state', 'xp.cfg'}`,
    as `audiocraft.utils.export.export_encodec` writes a codec trained with audiocraft): the config
    comes from xp.cfg's `encodec`/`seanet`/`rvq` sections, see `audiocraft_encodec`.
The config always comes from the checkpoint. Both tensor layouts (Hugging Face's
`encoder.layers.{i}.conv.*` and audiocraft's `encoder.model.{i}.conv.conv.*`) go through
`encodec_params.params_from_hf`, which describes them with a `KeyLayout`. Convolution weights may
be plain, or weight-normed in either torch style (`weight_g`/`weight_v`,
`parametrizations.weight.original0/1`). Every tensor is consumed (the quantizer's training
statistics `inited`, `cluster_size`, `embed_avg` are skipped on purpose) and every parameter set,
or the load fails naming what is left.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Tuple, Union

from magnet_jax import hub
from magnet_jax.codec import EncodecConfig, EncodecModel

# `torch_pickle.load_torch_file` is called through its module: tests replace it there.
from magnet_jax.convert import torch_pickle
from magnet_jax.convert.audiocraft_encodec import encodec_from_package
from magnet_jax.convert.common import ConversionError, read_hf_weights
from magnet_jax.convert.encodec_params import build_encodec, params_from_hf


def load_hf_encodec(folder: Union[str, os.PathLike]) -> Tuple[EncodecConfig, EncodecModel]:
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: pass a Hugging Face EnCodec folder "
                                "(e.g. a download of facebook/encodec_32khz)")
    raw = json.loads((folder / "config.json").read_text())
    if raw.get("model_type", "encodec") != "encodec":
        raise ConversionError(f"{folder}/config.json describes a {raw.get('model_type')!r} model, not EnCodec")
    cfg = EncodecConfig.from_hf_dict(raw)
    return cfg, build_encodec(cfg, params_from_hf(read_hf_weights(folder), cfg))


def load_encodec(path: Union[str, os.PathLike], **resolve_kwargs) -> Tuple[EncodecConfig, EncodecModel]:
    """A Hugging Face EnCodec folder, or an audiocraft `compression_state_dict.bin` (its own EnCodec,
    or a pointer to a Hugging Face one)."""
    path = Path(path)
    if path.is_dir():
        if (path / "config.json").is_file():
            return load_hf_encodec(path)
        path = path / "compression_state_dict.bin"
    if not path.is_file():
        raise FileNotFoundError(f"no EnCodec checkpoint at {path}")
    pkg = torch_pickle.load_torch_file(path)
    if not isinstance(pkg, dict) or not ("pretrained" in pkg or "best_state" in pkg):
        raise ConversionError(f"{path} is not an audiocraft compression checkpoint")
    if "pretrained" not in pkg:
        return encodec_from_package(pkg, str(path))
    folder = hub.resolve_component(str(pkg["pretrained"]), explicit=resolve_kwargs.get("codec_dir"),
                                   model_dir=path.parent, subfolder="codec", env_var="MAGNET_JAX_CODEC_DIR",
                                   patterns=hub.CODEC_FILES, cache_dir=resolve_kwargs.get("cache_dir"),
                                   local_files_only=resolve_kwargs.get("local_files_only", False), what="codec")
    return load_hf_encodec(folder)
