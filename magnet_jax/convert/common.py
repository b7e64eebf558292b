"""What every converter shares: `ConversionError`, `TensorSource` (tensors popped by name, with
the missing/unused-tensors error), `load_into` (a param dict into a module, every parameter set
with its shape) and `read_hf_weights` (a Hugging Face folder's tensors, without torch).

A converter pops each tensor it needs from a `TensorSource`, then calls `check`: a tensor the
config needs that the checkpoint lacks, or one the checkpoint has that nothing used, fails the
conversion naming them.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from magnet_jax.convert.torch_pickle import load_state_dict_file


class ConversionError(ValueError):
    pass


class TensorSource:
    """Pops tensors (float32) by name so leftovers can be reported."""

    def __init__(self, tensors: Mapping[str, np.ndarray]):
        self.tensors = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
        self.missing: list[str] = []

    def pop(self, name: str, transpose: bool = False) -> np.ndarray | None:
        """The tensor `name` (transposed: a torch Linear weight -> a kernel), or None, noted missing."""
        if name not in self.tensors:
            self.missing.append(name)
            return None
        v = self.tensors.pop(name)
        return v.T if transpose else v

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def check(self, missing: str, unused: str, shown: int = 4) -> None:
        """The missing/unused-tensors error. missing / unused: its wording, with {n} for the count
        and {names} for the first `shown` names."""
        if self.missing:
            raise ConversionError(missing.format(n=len(self.missing), names=self.missing[:shown]))
        if self.tensors:
            raise ConversionError(unused.format(n=len(self.tensors), names=sorted(self.tensors)[:shown]))


def load_into(model: nnx.Module, params: dict) -> None:
    """Writes a pure param dict into `model`, checking every parameter is set with its shape."""
    state = nnx.state(model, nnx.Param)
    flat_target = dict(nnx.to_flat_state(state))
    flat_src = {}

    def walk(tree, path):
        for k, v in tree.items():
            if isinstance(v, dict):
                walk(v, path + (k,))
            else:
                flat_src[path + (k,)] = v

    walk(params, ())
    unset = sorted("/".join(map(str, p)) for p in flat_target if p not in flat_src)
    extra = sorted("/".join(map(str, p)) for p in flat_src if p not in flat_target)
    if unset or extra:
        raise ConversionError(f"parameters left unset: {unset[:5]}; converted tensors with no parameter: {extra[:5]}")
    for path, var in flat_target.items():
        value = flat_src[path]
        if value is None or tuple(value.shape) != tuple(var.get_value().shape):
            got = None if value is None else tuple(value.shape)
            raise ConversionError(f"parameter {'/'.join(map(str, path))}: expected shape "
                                  f"{tuple(var.get_value().shape)}, checkpoint gives {got}")
        var.set_value(jnp.asarray(value, dtype=var.get_value().dtype))


def read_hf_weights(folder: Path) -> dict[str, np.ndarray]:
    """All tensors of a Hugging Face folder: model.safetensors (maybe sharded) or pytorch_model.bin."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    elif (folder / "pytorch_model.bin").is_file():
        files = ["pytorch_model.bin"]
    else:
        raise FileNotFoundError(f"{folder} has no model.safetensors or pytorch_model.bin")
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        tensors.update(load_state_dict_file(folder / f))
    return tensors
