"""Official audiocraft LM checkpoints (`state_dict.bin`: `{'best_state', 'xp.cfg', 'version', 'exported'}`)
-> `(Config, MagnetModel)`.

MAGNeT (`lm_model: transformer_lm_magnet`) and MusicGen (`transformer_lm`, causal, delay pattern)
share the transformer, so both load into `MagnetModel`: the text conditioner's `output_proj`
plus the LM. The T5 encoder is not part of these files (audiocraft keeps it frozen and out of the
state dict); `xp.cfg` names it (`conditioner.t5_name`).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np
from flax import nnx

from magnet_jax.config import Config

# `torch_pickle.load_torch_file` is called through its module: tests replace it there.
from magnet_jax.convert import torch_pickle
from magnet_jax.convert.audiocraft_config import config_from_xp_cfg, parse_xp_cfg
from magnet_jax.convert.audiocraft_lm import lm_params_from_audiocraft
from magnet_jax.convert.common import ConversionError, load_into
from magnet_jax.models.magnet_model import MagnetModel

LM_FILE = "state_dict.bin"
_PROJ = "condition_provider.conditioners.description.output_proj."


def _resolve_file(path: Union[str, os.PathLike], filename: str) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / filename
    if not p.is_file():
        raise FileNotFoundError(f"no audiocraft checkpoint at {p}: pass the `{filename}` file or the folder holding it")
    return p


def read_audiocraft_package(path: Union[str, os.PathLike], filename: str = LM_FILE) -> Dict:
    """The exported dict of an audiocraft checkpoint file (read without torch, see `torch_pickle`)."""
    file = _resolve_file(path, filename)
    pkg = torch_pickle.load_torch_file(file)
    if not isinstance(pkg, Mapping):
        raise ConversionError(f"{file} holds a {type(pkg).__name__}, not an audiocraft export dict")
    return dict(pkg)


def lm_package_parts(pkg: Mapping, source: str = "checkpoint") -> Tuple[Dict, Dict[str, np.ndarray]]:
    """(parsed xp.cfg, best_state as numpy arrays) of an exported LM package."""
    missing = [k for k in ("best_state", "xp.cfg") if k not in pkg]
    if missing:
        hint = " (it points at a pretrained codec: a compression checkpoint?)" if "pretrained" in pkg else ""
        raise ConversionError(f"{source} lacks {missing}: not an exported audiocraft LM checkpoint{hint}")
    state = pkg["best_state"]
    if isinstance(state, Mapping) and "model" in state and not any(k.startswith("emb.") for k in state):
        state = state["model"]  # a training checkpoint rather than an export
    return parse_xp_cfg(pkg["xp.cfg"]), {k: np.asarray(v) for k, v in state.items()}


def params_from_state_dict(state: Mapping[str, np.ndarray], config: Config) -> Dict:
    """The pure param dict of `MagnetModel` (conditioner projection + LM); fails on leftovers."""
    lm, others = lm_params_from_audiocraft(state, config.lm)
    others = dict(others)
    w, b = others.pop(_PROJ + "weight", None), others.pop(_PROJ + "bias", None)
    if w is None or b is None:
        raise ConversionError(f"checkpoint lacks the text projection `{_PROJ}weight/bias`")
    if others:
        raise ConversionError(f"{len(others)} checkpoint tensors were not used, e.g. {sorted(others)[:5]}; "
                              "this checkpoint has parts magnet_jax does not convert")
    proj = {"kernel": np.asarray(w, np.float32).T, "bias": np.asarray(b, np.float32)}
    return {"conditioner": {"output_proj": proj}, "lm": lm}


def build_model(config: Config, params: Optional[Dict] = None, *, dtype: str = "float32", seed: int = 0) -> MagnetModel:
    """A `MagnetModel` for `config` (compute dtype `dtype`), filled with `params` when given."""
    config = dataclasses.replace(config, lm=dataclasses.replace(config.lm, dtype=dtype))
    model = MagnetModel(config, rngs=nnx.Rngs(seed))
    if params is not None:
        load_into(model, params)
    return model


def load_audiocraft_lm(path: Union[str, os.PathLike], *, frame_rate: Optional[float] = None,
                       dtype: str = "float32") -> Tuple[Config, MagnetModel]:
    """`state_dict.bin` (or its folder) -> (Config, MagnetModel with every parameter set).

    frame_rate: the codec's frame rate, as audiocraft passes it at load time (defaults to xp.cfg's).
    """
    file = _resolve_file(path, LM_FILE)
    cfg, state = lm_package_parts(read_audiocraft_package(file), str(file))
    config = config_from_xp_cfg(cfg, frame_rate=frame_rate, name=file.parent.name or "audiocraft")
    state = {k: v.astype(np.float32) if v.dtype != np.float32 else v for k, v in state.items()}
    model = build_model(config, params_from_state_dict(state, config), dtype=dtype)
    return config, model

