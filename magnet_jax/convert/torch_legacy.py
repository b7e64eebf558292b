"""Legacy `torch.save` files (torch < 1.6, or `_use_new_zipfile_serialization=False`), read without
torch: torchvggish's released weights and PCA parameters are in this format, which
`torch_pickle.load_state_dict_file` (the zip format) does not read. Same rules as that reader: an
allow-list of globals (tensor rebuilders, storage types, plain containers, numeric numpy arrays);
nothing from the file is ever run.
"""
from __future__ import annotations

import os
import pickle
import struct
from typing import Any, Dict, Union

import numpy as np

from magnet_jax.convert import torch_pickle
from magnet_jax.convert.torch_pickle import TorchFileError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001


class _LegacyTensor:
    """A tensor of a legacy file before its storage (which follows the pickle) is read."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class _LegacyStorage:
    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


def _legacy_rebuild_tensor(storage, offset, size, stride, *_rest):
    if not isinstance(storage, _LegacyStorage):
        raise TorchFileError(f"a tensor refers to {type(storage).__name__}, not a storage")
    return _LegacyTensor(storage, offset, size, stride)


def _legacy_rebuild_parameter(data, *_rest):
    return data


def _numpy_reconstruct(cls, shape, typecode):
    if cls is not np.ndarray:
        raise TorchFileError(f"the pickle rebuilds a {cls!r}, not a numpy array")
    return np.ndarray(shape=(0,), dtype=np.uint8)  # the BUILD that follows sets shape, dtype and data


class _LegacyUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self._source = source
        self.storages: Dict[str, _LegacyStorage] = {}

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _legacy_rebuild_tensor
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return _legacy_rebuild_parameter
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _numpy_reconstruct
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        found = None if module == "torch._utils" else torch_pickle._allowed(module, name)
        if found is None:
            raise TorchFileError(f"{self._source} contains a pickled {module}.{name}, which this torch-free reader "
                                 "does not load (it only rebuilds tensors, numeric numpy arrays and plain "
                                 "containers, and never runs code from a file)")
        return found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise TorchFileError(f"{self._source}: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel, view = pid
        if not isinstance(storage_type, torch_pickle._StorageType) or not isinstance(numel, int) or view is not None:
            raise TorchFileError(f"{self._source}: unsupported storage {pid!r}")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _LegacyStorage(key, storage_type.dtype, numel)
        return self.storages[key]


def _resolve(obj: Any, data: Dict[str, np.ndarray]) -> Any:
    if isinstance(obj, _LegacyTensor):
        return torch_pickle._strided_copy(data[obj.storage.key], obj.offset, obj.size, obj.stride)
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v, data)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v, data) for v in obj)
    return obj


def read_legacy_torch_file(path: Union[str, os.PathLike]) -> Any:
    """What a legacy (torch < 1.6, or `_use_new_zipfile_serialization=False`) `torch.save` file holds, with
    tensors as numpy arrays: a header of three small pickles, the object's pickle (storages as persistent
    ids), the list of storage keys, then each storage as an int64 element count and its raw bytes."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            magic = pickle.load(f)
            protocol = pickle.load(f)
            sys_info = pickle.load(f)
            if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL or not isinstance(sys_info, dict):
                raise TorchFileError(f"{source} is not a legacy torch.save file (bad magic number or header)")
            if not sys_info.get("little_endian", True):
                raise TorchFileError(f"{source} was written on a big-endian machine, which is not supported")
            unpickler = _LegacyUnpickler(f, source)
            obj = unpickler.load()
            keys = [str(k) for k in pickle.load(f)]
            if set(keys) != set(unpickler.storages):
                raise TorchFileError(f"{source}: its storage list does not match the storages its tensors use")
            data = {}
            for key in keys:
                storage = unpickler.storages[key]
                (numel,) = struct.unpack("<q", f.read(8))
                raw = f.read(numel * storage.dtype.itemsize)
                if numel != storage.numel or len(raw) != numel * storage.dtype.itemsize:
                    raise TorchFileError(f"{source} is truncated or damaged (storage {key})")
                data[key] = np.frombuffer(raw, storage.dtype)
    except TorchFileError:
        raise
    except (pickle.UnpicklingError, EOFError, KeyError, IndexError, TypeError, ValueError, AttributeError,
            struct.error, OSError) as e:
        raise TorchFileError(f"{source} is damaged or not a plain torch.save checkpoint "
                             f"({type(e).__name__}: {e})") from e
    return _resolve(obj, data)
