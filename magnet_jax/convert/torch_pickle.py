"""Reads `torch.save` files (the zip format of torch >= 1.6) into numpy, without torch.

Official checkpoints (`state_dict.bin`, `compression_state_dict.bin`, `pytorch_model.bin`) are
pickles of dicts of tensors. The unpickler here is restricted to an allow-list (tensor and
storage rebuilders, OrderedDict, plain containers): anything else in the file is refused, so
reading a checkpoint never runs code from it.
"""
from __future__ import annotations

import collections
import os
import pickle
import zipfile
from typing import Any, Dict, Union

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class TorchFileError(ValueError):
    pass


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *_ignored) -> np.ndarray:
    size, stride = tuple(size), tuple(stride)
    if not size:
        return np.array(storage[offset], dtype=storage.dtype).reshape(())
    if any(s == 0 for s in size):
        return np.zeros(size, storage.dtype)
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=[s * item for s in stride])
    return np.array(view)  # own the memory: independent of views sharing the storage


def _rebuild_parameter(data, *_ignored):
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, source: str):
        super().__init__(file)
        self._archive, self._prefix, self._source = archive, prefix, source
        self._storages: Dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name == "Size":
            return tuple
        raise TorchFileError(
            f"{self._source} contains a pickled {module}.{name}, which this torch-free reader does not load "
            "(it only rebuilds tensors and plain containers). Load the file with PyTorch instead: "
            "pip install 'magnet_jax[convert]'")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise TorchFileError(f"{self._source}: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if key not in self._storages:
            dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else None
            if dtype is None:
                raise TorchFileError(f"{self._source}: storage of unsupported type {storage_type!r}")
            raw = self._archive.read(f"{self._prefix}data/{key}")
            self._storages[key] = np.frombuffer(raw, dtype=dtype, count=int(numel)).copy()
        return self._storages[key]


def load_torch_file(path: Union[str, os.PathLike]) -> Any:
    """The object `torch.save` wrote, with tensors as numpy arrays (bfloat16 as ml_dtypes.bfloat16)."""
    source = str(path)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"no such checkpoint file: {source}")
    if not zipfile.is_zipfile(source):
        raise TorchFileError(f"{source} is not a zip-format torch file (a legacy torch < 1.6 pickle, or not a "
                             "checkpoint at all); load it with PyTorch: pip install 'magnet_jax[convert]'")
    with zipfile.ZipFile(source) as archive:
        pkls = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pkls) != 1:
            raise TorchFileError(f"{source}: expected one data.pkl in the archive, found {len(pkls)}")
        prefix = pkls[0][: -len("data.pkl")]
        order = archive.read(prefix + "byteorder").decode() if prefix + "byteorder" in archive.namelist() else "little"
        if order != "little":
            raise TorchFileError(f"{source} was written big-endian; not supported")
        with archive.open(pkls[0]) as f:
            try:
                return _Unpickler(f, archive, prefix, source).load()
            except (pickle.UnpicklingError, EOFError, KeyError) as e:
                raise TorchFileError(f"{source} is damaged: {e}") from e


def load_state_dict_file(path: Union[str, os.PathLike]) -> Dict[str, np.ndarray]:
    """A flat name -> array dict from `.safetensors` or a torch file."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return dict(load_file(path))
    obj = load_torch_file(path)
    if not isinstance(obj, dict):
        raise TorchFileError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return dict(obj)
