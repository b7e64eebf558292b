"""torchvggish checkpoints -> `magnet_jax.metrics.vggish.VGGish`.

Weights: torchvggish's `vggish-10086976.pth`, a state dict of its `VGG` module: `features.{0,3,6,8,11,13}`
(the six 3x3 convolutions; the other indices are ReLUs and max-pools) and `embeddings.{0,2,4}` (the three
linear layers), each `.weight` and `.bias`. Optional PCA parameters: torchvggish's
`vggish_pca_params-970ea276.pth` or TF's `vggish_pca_params.npz` (`pca_eigen_vectors` [128, 128],
`pca_means` [128] or [128, 1]); a state dict that carries them as `pproc.pca_eigen_vectors` /
`pproc.pca_means` (torchvggish's later `VGGish` module) also works. Every tensor is consumed and every
parameter set, or the load fails naming what is left.

Files are read without torch. The official torchvggish release files predate torch 1.6's zip format
(`vggish-10086976.pth`'s size, 288,567,937 bytes, is the legacy layout's; the PCA file is a legacy pickle
of float64 numpy arrays): those go to `convert/torch_legacy.py`, zip-format files and safetensors to
`load_state_dict_file`, `.npz` to numpy.
"""
from __future__ import annotations

import os
import zipfile
from typing import Dict, Mapping, Optional, Union

import jax.numpy as jnp
import numpy as np
from flax import nnx

from magnet_jax.convert.audiocraft_lm import ConversionError, load_into
from magnet_jax.convert.torch_legacy import read_legacy_torch_file
from magnet_jax.convert.torch_pickle import load_state_dict_file
from magnet_jax.metrics.vggish import EMBEDDING_SIZE, PCAPostprocessor, VGGish

_CONV_INDICES = {"conv1": 0, "conv2": 3, "conv3_1": 6, "conv3_2": 8, "conv4_1": 11, "conv4_2": 13}
_FC_INDICES = {"fc1_1": 0, "fc1_2": 2, "fc2": 4}
_PCA_KEYS = ("pca_eigen_vectors", "pca_means")
_PPROC_PREFIX = "pproc."

Source = Union[str, os.PathLike, Mapping[str, np.ndarray]]


def _read(source: Source, what: str) -> Dict[str, np.ndarray]:
    """A name -> array dict from a dict, a `.npz`, a legacy or zip `torch.save` file, or a safetensors file."""
    if isinstance(source, Mapping):
        tensors = dict(source)
    else:
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such {what} file: {path}")
        with open(path, "rb") as f:
            head = f.read(2)
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                tensors = {k: z[k] for k in z.files}
        elif head[:1] == b"\x80" and not zipfile.is_zipfile(path):  # a bare pickle: the legacy format
            tensors = read_legacy_torch_file(path)
        else:
            tensors = load_state_dict_file(path)
    if not isinstance(tensors, Mapping):
        raise ConversionError(f"the {what} hold a {type(tensors).__name__}, not a dict of arrays")
    out = {}
    for k, v in tensors.items():
        a = np.asarray(v)
        if a.dtype == object:
            raise ConversionError(f"the {what} entry {k!r} is not an array ({type(v).__name__})")
        out[str(k)] = a
    return out


def vggish_params_from_torch(state_dict: Mapping[str, np.ndarray]) -> Dict:
    """torchvggish `VGG` state dict (no `pproc.*` entries) -> the param tree of `VGGish`."""
    src = {k: np.asarray(v, np.float32) for k, v in state_dict.items()}
    missing = []

    def pop(name):
        if name not in src:
            missing.append(name)
            return None
        return src.pop(name)

    params = {}
    for name, i in _CONV_INDICES.items():
        w, b = pop(f"features.{i}.weight"), pop(f"features.{i}.bias")
        params[name] = {"kernel": None if w is None else np.transpose(w, (2, 3, 1, 0)), "bias": b}  # OIHW -> HWIO
    for name, i in _FC_INDICES.items():
        w, b = pop(f"embeddings.{i}.weight"), pop(f"embeddings.{i}.bias")
        params[name] = {"kernel": None if w is None else w.T, "bias": b}  # [out, in] -> [in, out]
    if missing:
        raise ConversionError(f"the VGGish checkpoint lacks {len(missing)} tensors, e.g. {missing[:4]}; is it "
                              "torchvggish's vggish-10086976.pth (features.*, embeddings.*)?")
    if src:
        raise ConversionError(f"{len(src)} VGGish checkpoint tensors were not used, e.g. {sorted(src)[:4]}; "
                              "the file is not torchvggish's VGG state dict")
    return params


def _pca_arrays(tensors: Dict[str, np.ndarray], what: str):
    lacking = [k for k in _PCA_KEYS if k not in tensors]
    if lacking:
        raise ConversionError(f"{what} lacks {lacking}; expected {list(_PCA_KEYS)} "
                              "(vggish_pca_params-970ea276.pth or vggish_pca_params.npz)")
    extra = sorted(set(tensors) - set(_PCA_KEYS))
    if extra:
        raise ConversionError(f"{len(extra)} entries of {what} were not used, e.g. {extra[:4]}")
    vectors = np.asarray(tensors["pca_eigen_vectors"], np.float32)
    means = np.asarray(tensors["pca_means"], np.float32)
    if vectors.shape != (EMBEDDING_SIZE, EMBEDDING_SIZE):
        raise ConversionError(f"{what}: pca_eigen_vectors has shape {vectors.shape}, expected "
                              f"{(EMBEDDING_SIZE, EMBEDDING_SIZE)}")
    if means.size != EMBEDDING_SIZE or means.ndim not in (1, 2):
        raise ConversionError(f"{what}: pca_means has shape {means.shape}, expected ({EMBEDDING_SIZE},) "
                              f"or ({EMBEDDING_SIZE}, 1)")
    return vectors, means.reshape(EMBEDDING_SIZE)


def load_pca_postprocessor(pca_params: Source) -> PCAPostprocessor:
    """torchvggish's `vggish_pca_params-970ea276.pth` (or TF's .npz, or a dict) -> `PCAPostprocessor`."""
    vectors, means = _pca_arrays(_read(pca_params, "PCA params"), "the PCA params")
    post = PCAPostprocessor(EMBEDDING_SIZE)
    post.eigen_vectors.set_value(jnp.asarray(vectors))
    post.means.set_value(jnp.asarray(means))
    return post


def build_vggish(params: Dict, *, dtype=jnp.float32) -> VGGish:
    """A `VGGish` holding `params`, built abstractly (no random initialisation of its 72M parameters)."""
    model = nnx.eval_shape(lambda: VGGish(dtype=dtype, rngs=nnx.Rngs(0)))
    load_into(model, params)
    return model


def load_vggish(weights: Source, *, pca_params: Optional[Source] = None, dtype=jnp.float32) -> VGGish:
    """torchvggish weights (a path to `vggish-10086976.pth` or its state dict) -> `VGGish`.

    With `pca_params` (a path or dict), or `pproc.*` PCA entries in the state dict, the model's
    `postprocessor` is set (used by `vggish_embeddings(..., postprocess=True)`; FAD does not use it)."""
    tensors = _read(weights, "VGGish weights")
    pproc = {k[len(_PPROC_PREFIX):]: tensors.pop(k) for k in [k for k in tensors if k.startswith(_PPROC_PREFIX)]}
    if pproc and pca_params is not None:
        raise ConversionError("the VGGish state dict carries its own PCA parameters (pproc.*) and pca_params "
                              "was given too: pass only one")
    model = build_vggish(vggish_params_from_torch(tensors), dtype=dtype)
    if pproc:
        vectors, means = _pca_arrays(pproc, "the state dict's pproc.* entries")
        post = PCAPostprocessor(EMBEDDING_SIZE)
        post.eigen_vectors.set_value(jnp.asarray(vectors))
        post.means.set_value(jnp.asarray(means))
        model.postprocessor = post
    elif pca_params is not None:
        model.postprocessor = load_pca_postprocessor(pca_params)
    return model
