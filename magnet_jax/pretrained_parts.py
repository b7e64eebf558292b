"""A pretrained pipeline's parts: files (hub.py) -> converted modules, with a converted cache.

`load_pipeline_parts` returns them as `PipelineParts`; `loading.load_pretrained` builds the
pipeline (`MAGNeT` or `MusicGen`) from them.

The first load reads audiocraft's pickles and the Hugging Face folders and converts them; the
result (configs, tokenizer files and every parameter as an Orbax checkpoint) is cached under
`<cache>/converted/<model>-<fingerprint>`, so the next load restores arrays directly, without
reading a pickle. The fingerprint covers the model's two files (path, size, mtime), the
explicit T5/codec folders, the compute dtype and the magnet_jax version (convert again with
`use_cache=False` after changing a T5 or codec folder in place); a cache entry is written to a temporary folder and renamed
into place, so an interrupted conversion never leaves a half-written entry.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, NamedTuple, Optional

import jax.numpy as jnp
from flax import nnx

from magnet_jax import hub
from magnet_jax.caches import cache_root
from magnet_jax.codec import EncodecConfig, EncodecModel
from magnet_jax.config import Config
from magnet_jax.config_io import config_from_dict, config_to_dict, dataclass_from_dict

# `torch_pickle.load_torch_file` is called through its module: tests replace it there.
from magnet_jax.convert import torch_pickle
from magnet_jax.convert.audiocraft_checkpoint import build_model, load_audiocraft_lm
from magnet_jax.convert.encodec import load_encodec
from magnet_jax.convert.t5 import load_t5_encoder
from magnet_jax.models.magnet_model import MagnetModel
from magnet_jax.text.t5 import T5Config, T5Encoder
from magnet_jax.text.tokenizer import T5Tokenizer
from magnet_jax.version import __version__

log = logging.getLogger(__name__)
_TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "config.json")
_FORMAT = 1


def _fingerprint(files, extra: str) -> str:
    h = hashlib.sha256(f"{_FORMAT}|{__version__}|{extra}".encode())
    for f in sorted(Path(p).resolve() for p in files):
        st = f.stat()
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _pure(module) -> Dict:
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


def _read_codec_package(file: Path) -> Dict:
    pkg = torch_pickle.load_torch_file(file)
    if not isinstance(pkg, dict):
        raise ValueError(f"{file} is not an audiocraft compression checkpoint")
    return pkg


def convert_sources(model_dir: Path, *, t5_dir: Optional[str], codec_dir: Optional[str], cache_dir: Optional[str],
                    local_files_only: bool, dtype: str):
    """Reads and converts every part from its original files: (config, model, t5, tokenizer, codec, t5 folder)."""
    comp_file = model_dir / hub.LM_FILES[1]
    pkg = _read_codec_package(comp_file)
    if "pretrained" in pkg:  # audiocraft's pointer to a Hugging Face EnCodec (e.g. facebook/encodec_32khz)
        codec_folder = hub.resolve_component(str(pkg["pretrained"]), explicit=codec_dir, model_dir=model_dir,
                                             subfolder="codec", env_var="MAGNET_JAX_CODEC_DIR",
                                             patterns=hub.CODEC_FILES, cache_dir=cache_dir,
                                             local_files_only=local_files_only, what="codec")
        _, codec = load_encodec(codec_folder)
    else:  # audiocraft's own codec, inside the checkpoint
        if codec_dir:
            log.warning("%s holds its own codec: the codec folder %s is not used", comp_file, codec_dir)
        _, codec = load_encodec(comp_file)
    config, model = load_audiocraft_lm(model_dir, frame_rate=float(codec.frame_rate), dtype=dtype)
    t5_folder = hub.resolve_component(config.conditioner.t5_name, explicit=t5_dir, model_dir=model_dir,
                                      subfolder="t5", env_var="MAGNET_JAX_T5_DIR", patterns=hub.T5_FILES,
                                      cache_dir=cache_dir, local_files_only=local_files_only, what="T5 encoder")
    t5_config, t5 = load_t5_encoder(t5_folder, dtype=jnp.dtype(dtype))
    t5_config.check_feeds(config.conditioner.output_dim, where=f" at {t5_folder}")
    return config, model, t5, T5Tokenizer(t5_folder), codec, t5_folder


def _save_cache(entry: Path, config: Config, model, t5, codec, t5_folder: Path) -> None:
    import orbax.checkpoint as ocp

    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".tmp-", dir=entry.parent))
    try:
        meta = {"format": _FORMAT, "config": config_to_dict(config), "t5": dataclasses.asdict(t5.config),
                "codec": dataclasses.asdict(codec.config)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        tok = tmp / "tokenizer"
        tok.mkdir()
        for name in _TOKENIZER_FILES:
            if (t5_folder / name).is_file():
                shutil.copy2(t5_folder / name, tok / name)
        params = {"model": _pure(model), "t5": _pure(t5), "codec": _pure(codec)}
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(tmp / "params", params)
        os.replace(tmp, entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_cache(entry: Path, dtype: str):
    import orbax.checkpoint as ocp

    meta = json.loads((entry / "meta.json").read_text())
    config = config_from_dict(meta["config"])
    model = nnx.eval_shape(lambda: build_model(config, dtype=dtype))
    t5 = nnx.eval_shape(lambda: T5Encoder(dataclass_from_dict(T5Config, meta["t5"], ignore_unknown=True), dtype=jnp.dtype(dtype),
                                          rngs=nnx.Rngs(0)))
    codec = nnx.eval_shape(lambda: EncodecModel(dataclass_from_dict(EncodecConfig, meta["codec"], ignore_unknown=True), rngs=nnx.Rngs(0)))
    target = {"model": _pure(model), "t5": _pure(t5), "codec": _pure(codec)}
    with ocp.StandardCheckpointer() as ckpt:
        restored = ckpt.restore(entry / "params", target)
    for module, name in ((model, "model"), (t5, "t5"), (codec, "codec")):
        state = nnx.state(module, nnx.Param)
        nnx.replace_by_pure_dict(state, restored[name])
        nnx.update(module, state)
    return config, model, t5, T5Tokenizer(entry / "tokenizer"), codec


class PipelineParts(NamedTuple):
    """What a text-to-audio pipeline is built from (`MAGNeT(*parts.modules(), name=parts.name)`)."""

    config: Config
    model: MagnetModel  # the text projection and the LM
    t5: T5Encoder
    tokenizer: T5Tokenizer
    codec: EncodecModel
    name: str

    def modules(self) -> tuple:
        """(config, model, t5, tokenizer, codec): the pipelines' positional arguments."""
        return self.config, self.model, self.t5, self.tokenizer, self.codec


def load_pipeline_parts(name_or_dir: str, *, t5: Optional[str] = None, codec: Optional[str] = None,
                        cache_dir: Optional[str] = None, local_files_only: bool = False, dtype: str = "float32",
                        use_cache: bool = True) -> PipelineParts:
    """The parts of the pipeline `name_or_dir` holds, and its name.

    t5 / codec: local Hugging Face folders overriding where those parts come from.
    use_cache: read and write the converted cache (False always converts from the originals).
    """
    model_dir = hub.resolve_model_dir(name_or_dir, cache_dir=cache_dir, local_files_only=local_files_only)
    name = str(name_or_dir).rstrip("/").split("/")[-1]
    parts = convert_or_restore(model_dir, name, t5_dir=t5, codec_dir=codec, cache_dir=cache_dir,
                               local_files_only=local_files_only, dtype=dtype, use_cache=use_cache)
    return PipelineParts(*parts, name)


def _cache_entry(model_dir: Path, name: str, dtype: str, t5_dir, codec_dir, cache_dir) -> Path:
    """The cache folder of one conversion: keyed by the LM files and by where T5 and the codec come
    from (arguments and the environment variables that can name them)."""
    where = f"{dtype}|{t5_dir}|{codec_dir}|{os.environ.get('MAGNET_JAX_T5_DIR')}|" \
            f"{os.environ.get('MAGNET_JAX_CODEC_DIR')}"
    return cache_root(cache_dir) / "converted" / f"{name}-{_fingerprint([model_dir / f for f in hub.LM_FILES], where)}"


def convert_or_restore(model_dir: Path, name: str, *, t5_dir=None, codec_dir=None, cache_dir=None,
                       local_files_only=False, dtype="float32", use_cache=True):
    entry = _cache_entry(model_dir, name, dtype, t5_dir, codec_dir, cache_dir)
    if use_cache and (entry / "meta.json").is_file():
        log.info("loading converted %s from %s", name, entry)
        try:
            return _load_cache(entry, dtype)
        except Exception as e:  # a damaged entry: convert again (and rewrite it)
            log.warning("the converted cache at %s is unreadable (%s: %s); converting again", entry,
                        type(e).__name__, e)
            shutil.rmtree(entry, ignore_errors=True)  # only a cache: rewritten below
    config, model, t5, tokenizer, codec, t5_folder = convert_sources(
        model_dir, t5_dir=t5_dir, codec_dir=codec_dir, cache_dir=cache_dir, local_files_only=local_files_only,
        dtype=dtype)
    if use_cache:
        try:
            _save_cache(entry, config, model, t5, codec, t5_folder)
        except OSError as e:  # a read-only cache must not stop generation
            log.warning("could not write the converted cache at %s: %s", entry, e)
    return config, model, t5, tokenizer, codec


def convert_to_cache(name_or_dir: str, **kwargs) -> Path:
    """Converts a checkpoint folder once (the `magnet-jax convert` command); returns the cache entry."""
    load_pipeline_parts(name_or_dir, **kwargs)
    model_dir = hub.resolve_model_dir(name_or_dir, cache_dir=kwargs.get("cache_dir"),
                                      local_files_only=kwargs.get("local_files_only", False))
    name = str(name_or_dir).rstrip("/").split("/")[-1]
    entry = _cache_entry(model_dir, name, kwargs.get("dtype", "float32"), kwargs.get("t5"), kwargs.get("codec"),
                         kwargs.get("cache_dir"))
    if not (entry / "meta.json").is_file():
        raise OSError(f"the converted checkpoint could not be written to {entry} (see the warning above): "
                      "give a writable --cache-dir")
    return entry
