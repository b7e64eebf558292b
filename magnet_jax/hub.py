"""Where a pretrained model's files come from: a local folder (offline) or the Hugging Face hub.

An official MAGNeT repo (`facebook/magnet-small-10secs`, ...) holds audiocraft's `state_dict.bin`
(the LM, with its `xp.cfg`) and `compression_state_dict.bin` (the codec, usually only a pointer to
`facebook/encodec_32khz`); the T5 encoder is named inside `xp.cfg` (`t5-base`, `t5-large`).
Offline, a local folder with those two files works; the codec and T5 folders are then looked up,
in order: the explicit argument, a sub-folder of the model folder (`codec/` or `t5/`, or the
repo's last name part such as `encodec_32khz/`, `t5-base/`), an environment variable
(MAGNET_JAX_CODEC_DIR, MAGNET_JAX_T5_DIR), and last the hub (or its local cache).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

OFFICIAL_MODELS = (
    "facebook/magnet-small-10secs",
    "facebook/magnet-medium-10secs",
    "facebook/magnet-small-30secs",
    "facebook/magnet-medium-30secs",
    "facebook/audio-magnet-small",
    "facebook/audio-magnet-medium",
)
LM_FILES = ("state_dict.bin", "compression_state_dict.bin")
T5_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json", "spiece.model", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json"]
CODEC_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json", "preprocessor_config.json"]


class ModelNotFoundError(FileNotFoundError):
    pass


def _looks_like_repo(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def looks_like_path(name: str) -> bool:
    """A local path rather than a hub id ('org/name' or a legacy 'name' such as t5-base)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name \
        or name.endswith((".bin", ".pt", ".th", ".safetensors", ".json"))


def _download(repo_id: str, patterns: Sequence[str], *, cache_dir: Optional[str], local_files_only: bool,
              what: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import RepositoryNotFoundError
    except ImportError as e:  # pragma: no cover - a dependency of magnet_jax
        raise ModelNotFoundError(f"huggingface_hub is needed to download {repo_id!r}: pip install huggingface-hub") from e
    try:
        path = snapshot_download(repo_id, allow_patterns=list(patterns), cache_dir=cache_dir,
                                 local_files_only=local_files_only)
    except RepositoryNotFoundError as e:
        raise ModelNotFoundError(f"{what} {repo_id!r} does not exist on the Hugging Face hub") from e
    except Exception as e:  # offline, proxy, ...: say what to do instead
        raise ModelNotFoundError(
            f"could not get {what} {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). {_offline_hint(repo_id)}"
        ) from e
    return Path(path)


def _offline_hint(repo_id: str) -> str:
    """What to fetch for an offline run: a model needs its LM, its codec and its T5."""
    return (f"A MAGNeT model has three parts: the LM ({', '.join(LM_FILES)}), its EnCodec and its T5 encoder. "
            f"With network, download each once: `hf download {repo_id}`, then the codec that "
            "compression_state_dict.bin points to and the T5 that xp.cfg names (the music models: "
            "`hf download facebook/encodec_32khz` and `hf download t5-base`). Offline, pass the three folders: "
            f"--model DIR (holding {' and '.join(LM_FILES)}), --codec DIR and --t5 DIR (Hugging Face folders with "
            "config.json), or place them as DIR/encodec_32khz/ and DIR/t5-base/ beside the LM files.")


def _training_run_hint(path: Path) -> Optional[str]:
    """A magnet-jax training directory is not an exported model: say what it is instead."""
    if not ((path / "config.txt").is_file() and (path / "checkpoints").is_dir()):
        return None
    config = (path / "config.txt").read_text(errors="replace")
    if "synthetic" in config:
        return (f"{path} is a magnet-jax training run on the embedded synthetic data (the quickstart): that model "
                "learned token streams with no codec behind them, so it has no audio to generate. The run already "
                "scored its samples against the data's rules. To hear music, use an official model "
                "(--model facebook/magnet-small-10secs) or train on audio tokens (docs/training.md: Training on your own audio).")
    return (f"{path} is a magnet-jax training run (config.txt, checkpoints/), not an exported audiocraft model "
            f"folder ({' and '.join(LM_FILES)}); generating from training checkpoints is not supported yet.")


def resolve_model_dir(name_or_dir: str, *, cache_dir: Optional[str] = None, local_files_only: bool = False) -> Path:
    """The folder holding `state_dict.bin` and `compression_state_dict.bin`."""
    path = Path(os.path.expanduser(str(name_or_dir)))
    if path.is_dir():
        missing = [f for f in LM_FILES if not (path / f).is_file()]
        if missing and _training_run_hint(path):
            raise ModelNotFoundError(_training_run_hint(path))
        if missing:
            raise ModelNotFoundError(f"{path} lacks {missing}: a MAGNeT model folder holds {list(LM_FILES)} "
                                     "(audiocraft's export layout)")
        return path
    if path.exists():
        raise ModelNotFoundError(f"{path} is a file: pass the folder holding {list(LM_FILES)}")
    name = str(name_or_dir)
    if not _looks_like_repo(name):
        raise ModelNotFoundError(f"unknown model {name!r}: neither a local folder nor a hub name. Official models: "
                                 f"{', '.join(OFFICIAL_MODELS)}")
    folder = _download(name, LM_FILES, cache_dir=cache_dir, local_files_only=local_files_only, what="model")
    missing = [f for f in LM_FILES if not (folder / f).is_file()]
    if missing:
        raise ModelNotFoundError(f"hub repo {name!r} has no {missing}: not an audiocraft MAGNeT/MusicGen export")
    return folder


def resolve_component(name: str, *, explicit: Optional[str], model_dir: Optional[Path], subfolder: str,
                      env_var: str, patterns: Sequence[str], cache_dir: Optional[str] = None,
                      local_files_only: bool = False, what: str) -> Path:
    """A Hugging Face folder (T5 or EnCodec) named `name`, found locally first (see the module doc)."""
    candidates = []
    if explicit:
        candidates.append(Path(os.path.expanduser(explicit)))
    if Path(os.path.expanduser(name)).is_dir():
        candidates.append(Path(os.path.expanduser(name)))
    if model_dir is not None:
        candidates += [model_dir / subfolder, model_dir / name.split("/")[-1]]
    if os.environ.get(env_var):
        candidates.append(Path(os.environ[env_var]))
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    if explicit:
        raise ModelNotFoundError(f"{what} folder {explicit} has no config.json (a Hugging Face folder is expected)")
    if looks_like_path(name):  # a path that does not exist: not a hub id to ask the hub about
        raise ModelNotFoundError(f"{what} {name}: no such folder (and not a hub name like facebook/encodec_32khz)")
    return _download(name, patterns, cache_dir=cache_dir, local_files_only=local_files_only, what=what)
