"""Reads `torch.save` files (the zip format of torch >= 1.6) into numpy, without torch.

Official checkpoints (`state_dict.bin`, `compression_state_dict.bin`, `pytorch_model.bin`) are
pickles of dicts of tensors. The unpickler here is restricted to an allow-list (tensor and
storage rebuilders, OrderedDict, plain containers): anything else in the file is refused, so
reading a checkpoint never runs code from it.

Layout of such a file: a zip holding `<prefix>/data.pkl` (the pickle; tensors in it refer to storages
by a persistent id `('storage', <torch.XStorage>, key, location, numel)`), `<prefix>/data/<key>` (each
storage's raw little-endian bytes, stored uncompressed), `<prefix>/byteorder` and `<prefix>/version`.
"""
from __future__ import annotations

import builtins
import collections
import json
import os
import pickle
import struct
import zipfile
from typing import Any, Dict, Union

import ml_dtypes
import numpy as np

# What helps: PyTorch rewriting the file as a zip of plain tensors and containers, which this reader loads.
_FIX = ("re-save it with PyTorch (which does run its code) holding only tensors, dicts, lists, numbers and "
        "strings, e.g. python -c \"import torch; torch.save(torch.load('IN', weights_only=False), 'OUT')\" "
        "once any other objects in it are replaced, then give OUT")

# torch.<Name>Storage -> element type (the storage types torch >= 1.6 pickles for the classic dtypes)
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64, "ComplexDoubleStorage": np.complex128,
}
# torch.<dtype> globals: newer dtypes are saved as bytes (an UntypedStorage) plus the dtype, rebuilt by
# `_rebuild_tensor_v3`. bfloat16 and float8 come back as ml_dtypes types (what jax uses).
_TORCH_DTYPES = {
    "float32": np.float32, "float64": np.float64, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64, "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8,
    "bool": np.bool_, "complex64": np.complex64, "complex128": np.complex128,
    "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e5m2": ml_dtypes.float8_e5m2,
    "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz, "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    "float8_e8m0fnu": ml_dtypes.float8_e8m0fnu,
}


class TorchFileError(ValueError):
    """A checkpoint file this reader cannot or will not load; the message says why and what to do."""


class _StorageType:
    """What `torch.FloatStorage` & co. unpickle to here: only their element type matters."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


class _Dtype:
    """What a `torch.<dtype>` global unpickles to (an argument of `_rebuild_tensor_v3`)."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


def _ints(values, what: str) -> tuple:
    out = tuple(values)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in out):
        raise TorchFileError(f"a tensor's {what} {values!r} is not a tuple of non-negative integers")
    return out


def _strided_copy(storage: np.ndarray, offset, size, stride) -> np.ndarray:
    """The tensor torch would view into `storage`, as an array that owns its memory (so tensors sharing a
    storage stay independent). The view is bounds-checked first: `as_strided` itself would read past the
    end of the buffer, and the numbers come from the file."""
    (offset,), size, stride = _ints((offset,), "storage offset"), _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride):
        raise TorchFileError(f"a tensor has size {size} but stride {stride}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise TorchFileError(f"a tensor (offset {offset}, size {size}, stride {stride}) reaches element {last} "
                             f"of a storage of {storage.size}: the file is damaged")
    item = storage.itemsize
    # strided over opaque items of the same width: as_strided rebuilds arrays from __array_interface__,
    # which cannot spell ml_dtypes' float8 types
    raw = storage.view(f"V{item}")[offset:]
    out = np.empty(size, storage.dtype)
    out.view(f"V{item}")[...] = np.lib.stride_tricks.as_strided(raw, shape=size, strides=[s * item for s in stride])
    return out


def _rebuild_tensor_v2(storage, offset, size, stride, *_requires_grad_hooks_metadata):
    return _strided_copy(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, _requires_grad, _hooks, dtype, *_metadata):
    # the storage is raw bytes (UntypedStorage); offset and strides count elements of `dtype`
    if storage.dtype != np.uint8 or not isinstance(dtype, _Dtype):
        raise TorchFileError(f"_rebuild_tensor_v3 got a {storage.dtype} storage and dtype {dtype!r}")
    usable = storage.size - storage.size % dtype.dtype.itemsize
    return _strided_copy(storage[:usable].view(dtype.dtype), offset, size, stride)


def _rebuild_parameter(data, *_requires_grad_hooks_state):
    return data  # an nn.Parameter is its tensor here


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):  # the only codec pickle uses for bytes
        raise TorchFileError(f"unexpected _codecs.encode(..., {encoding!r}) in the pickle")
    return text.encode("latin1")


_NUMERIC_KINDS = "biufc"


def _numpy_dtype(spec, align=False, copy=True):
    """`numpy.dtype('f8', ...)` of a pickle: numeric dtypes only (the BUILD that follows sets byte order)."""
    dtype = np.dtype(spec, align=bool(align), copy=True) if isinstance(spec, str) else None
    if dtype is None or dtype.kind not in _NUMERIC_KINDS:
        raise TorchFileError(f"the pickle holds a numpy dtype {spec!r}; only numeric ones are read")
    return dtype


def _numpy_scalar(dtype, data=None):
    """A numpy scalar (e.g. an epoch count or a score saved beside the weights): numeric ones only."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS or not isinstance(data, (bytes, bytearray)) \
            or len(data) != dtype.itemsize:
        raise TorchFileError(f"the pickle holds a numpy scalar of dtype {dtype!r}; only numeric ones are read")
    return np.frombuffer(bytes(data), dtype)[0]


def _allowed(module: str, name: str):
    """The object a pickle GLOBAL may resolve to, or None if it is not on the allow-list."""
    if module == "torch._utils":
        return {"_rebuild_tensor_v2": _rebuild_tensor_v2, "_rebuild_tensor": _rebuild_tensor_v2,
                "_rebuild_tensor_v3": _rebuild_tensor_v3, "_rebuild_parameter": _rebuild_parameter,
                "_rebuild_parameter_with_state": _rebuild_parameter}.get(name)
    if module == "torch":
        if name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if name in _TORCH_DTYPES:
            return _Dtype(_TORCH_DTYPES[name])
        if name == "UntypedStorage":
            return _StorageType(np.uint8)
        if name == "Size":
            return tuple
    if module == "torch.storage" and name == "UntypedStorage":
        return _StorageType(np.uint8)
    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    # protocol 2 (torch's default) spells builtins '__builtin__' and pickles bytes via _codecs.encode
    if module in ("builtins", "__builtin__") and name in ("set", "frozenset", "complex", "bytearray"):
        return getattr(builtins, name)
    if module == "_codecs" and name == "encode":
        return _latin1_encode
    # numpy scalars and their dtypes (laion_clap's checkpoints keep numbers beside the weights)
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
        return _numpy_scalar
    if module == "numpy" and name == "dtype":
        return _numpy_dtype
    return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, source: str):
        super().__init__(file)
        self._archive, self._prefix, self._source = archive, prefix, source
        self._storages: Dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        found = _allowed(module, name)
        if found is None:
            raise TorchFileError(
                f"{self._source} contains a pickled {module}.{name}, which this torch-free reader does not load "
                f"(it only rebuilds tensors and plain containers, and never runs code from a file); if you "
                f"trust the file, {_FIX}")
        return found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise TorchFileError(f"{self._source}: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid  # location ('cpu', 'cuda:0') is irrelevant to numpy
        if not isinstance(storage_type, _StorageType):
            raise TorchFileError(f"{self._source}: storage of unsupported type {storage_type!r}")
        if key not in self._storages:
            raw = _record_bytes(self._archive, f"{self._prefix}data/{key}", self._source)
            dtype = storage_type.dtype
            if not isinstance(numel, int) or numel < 0 or numel * dtype.itemsize > raw.size:
                raise TorchFileError(f"{self._source}: storage {key} should hold {numel} x {dtype} but its record "
                                     f"has {raw.size} bytes: the file is damaged (an interrupted download?)")
            self._storages[key] = raw[: numel * dtype.itemsize].view(dtype)
        return self._storages[key]


def _record_bytes(archive: zipfile.ZipFile, name: str, source: str) -> np.ndarray:
    """A record's bytes as a read-only uint8 array. Records torch stored uncompressed (all of them, unless
    the file was re-zipped) are memory-mapped rather than read: a multi-GB checkpoint then costs its
    tensors' memory once, not twice."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise TorchFileError(f"{source} lacks the record {name}: the file is damaged or incomplete") from None
    if info.file_size == 0:
        return np.zeros(0, np.uint8)
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        return np.frombuffer(archive.read(name), np.uint8)
    with open(source, "rb") as f:  # the local file header: its name and extra field lengths may differ
        f.seek(info.header_offset)  # from the central directory's copy
        header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise TorchFileError(f"{source}: bad zip header for {name}: the file is damaged")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.file_size > os.path.getsize(source):
        raise TorchFileError(f"{source} is truncated ({name} runs past its end): download it again")
    return np.memmap(source, np.uint8, "r", offset=start, shape=(info.file_size,)).view(np.ndarray)


def _what_is_it(source: str) -> str:
    """What a file that is not a readable zip probably is, for error messages."""
    with open(source, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80":  # a bare pickle: torch < 1.6 or _use_new_zipfile_serialization=False
        return "a legacy (non-zip) torch file, from torch < 1.6 or _use_new_zipfile_serialization=False"
    if head[:2] == b"PK":
        return "a damaged or truncated zip (an interrupted download?)"
    return "not a torch.save zip file at all"


def _not_zip_error(source: str) -> TorchFileError:
    return TorchFileError(f"{source} is {_what_is_it(source)}; this torch-free reader only reads zip-format "
                          f"checkpoints: {_FIX}")


def load_torch_file(path: Union[str, os.PathLike]) -> Any:
    """The object `torch.save` wrote, with tensors (and nn.Parameters) as numpy arrays that own their memory.

    bfloat16 and float8 tensors come back as ml_dtypes arrays (`.astype(np.float32)` converts them); dicts
    and OrderedDicts keep their order. Raises FileNotFoundError for a missing file and TorchFileError for
    anything this reader refuses: legacy or damaged files, or objects other than tensors and containers.
    """
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"no such checkpoint file: {source}")
    if not zipfile.is_zipfile(source):
        raise _not_zip_error(source)
    try:
        with zipfile.ZipFile(source) as archive:
            pkls = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if len(pkls) != 1:
                raise TorchFileError(f"{source}: expected one data.pkl in the archive, found {len(pkls)}; is it a "
                                     "torch.save file?")
            prefix = pkls[0][: -len("data.pkl")]
            names = set(archive.namelist())
            order = archive.read(prefix + "byteorder").decode() if prefix + "byteorder" in names else "little"
            if order != "little":
                raise TorchFileError(f"{source} was written on a {order}-endian machine, which this reader does "
                                     f"not support; {_FIX}")
            with archive.open(pkls[0]) as f:
                return _Unpickler(f, archive, prefix, source).load()
    except TorchFileError as e:
        if source in str(e):
            raise
        raise TorchFileError(f"{source}: {e}") from e  # e.g. from a rebuilder, which cannot name the file
    except (pickle.UnpicklingError, EOFError, KeyError, IndexError, TypeError, ValueError, AttributeError,
            zipfile.BadZipFile, struct.error, OSError) as e:
        raise TorchFileError(f"{source} is damaged or not a plain torch.save checkpoint "
                             f"({type(e).__name__}: {e})") from e


# ------------------------------------------------------------------------------------- safetensors

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}


_NUMPY_NATIVE = {"F64", "F32", "F16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"}


def _safetensors_header(source: str):
    """(header length, header dict) of a safetensors file: 8 bytes of little-endian length, then JSON."""
    size = os.path.getsize(source)
    try:
        with open(source, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError("the header runs past the end of the file")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (ValueError, struct.error) as e:
        raise TorchFileError(f"{source} is not a readable safetensors file ({e}): is it damaged?") from e
    return n, header


def _load_safetensors(source: str) -> Dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    n, header = _safetensors_header(source)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if all(isinstance(v, dict) and v.get("dtype") in _NUMPY_NATIVE for v in tensors.values()):
        try:
            return dict(load_file(source))
        except SafetensorError as e:
            raise TorchFileError(f"{source} is not a readable safetensors file ({e}): is it damaged?") from e
    # safetensors.numpy cannot make bfloat16 / float8 arrays (numpy lacks them): read those files here
    size = os.path.getsize(source)
    data = np.zeros(0, np.uint8)
    if size > 8 + n:
        data = np.memmap(source, np.uint8, "r", offset=8 + n, shape=(size - 8 - n,))
    out = {}
    for name, meta in tensors.items():
        try:
            dtype = np.dtype(_SAFETENSORS_DTYPES[meta["dtype"]])
            (begin, end), shape = meta["data_offsets"], tuple(meta["shape"])
            ok = 0 <= begin <= end <= data.size and end - begin == int(np.prod(shape)) * dtype.itemsize
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise TorchFileError(f"{source}: tensor {name} has an unknown dtype or a bad byte range ({meta})")
        out[name] = np.array(data[begin:end].view(dtype).reshape(shape))
    return out


def load_state_dict_file(path: Union[str, os.PathLike]) -> Dict[str, np.ndarray]:
    """A name -> array dict from a `.safetensors` file or a `torch.save` zip of a dict (e.g.
    `pytorch_model.bin`); the file's contents, not only its name, decide which."""
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"no such checkpoint file: {source}")
    if source.endswith(".safetensors"):
        return _load_safetensors(source)
    if zipfile.is_zipfile(source):
        obj = load_torch_file(source)
        if not isinstance(obj, dict):
            raise TorchFileError(f"{source} holds a {type(obj).__name__}, not a state dict")
        return dict(obj)
    with open(source, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then a JSON object
        return _load_safetensors(source)
    raise TorchFileError(f"{source} is neither a safetensors file nor a torch.save zip: it is "
                         f"{_what_is_it(source)}")
