"""Loading, overriding, serialising and printing `magnet_jax.config.Config`.

A named setup is a python file with `get_config() -> Config` (see `configs/`); any leaf
can then be overridden from the command line:

    cfg = load_config("configs/quickstart.py", ["--config.optim.lr=1e-3", "train.plot=false"])

Override values are parsed by the field's declared type: int, float, str, bool,
Optional[X] ("none"/"null"), tuples ("60,10,10,10", "[60, 10, 10, 10]") and nested tuples
(python literals). All overrides are applied together, then the top-level Config is
rebuilt once, so its cross-section validations run on the final values only.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import importlib.util
import os
import sys
import typing
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from magnet_jax.config import Config

__all__ = [
    "load_config",
    "apply_overrides",
    "config_to_dict",
    "config_from_dict",
    "dataclass_from_dict",
    "diff_configs",
    "format_config",
]

_NONE_WORDS = ("none", "null")
_TRUE_WORDS = ("true", "1", "yes", "y", "on")
_FALSE_WORDS = ("false", "0", "no", "n", "off")


# --------------------------------------------------------------------------- loading


def load_config(path: str, overrides: Sequence[str] = ()) -> Config:
    """Imports the python file at `path`, calls its `get_config()` and applies `overrides`.

    The file's directory is put on `sys.path` while it runs, so a config may import a
    sibling helper module (e.g. `from _base import music_small`).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        if not path.endswith(".py") and os.path.isfile(path + ".py"):
            path = path + ".py"
        else:
            raise FileNotFoundError(
                f"config file {path!r} not found. Pass a python file defining get_config(), "
                f"e.g. configs/quickstart.py.{_available_configs_hint(path)}"
            )
    path = os.path.abspath(path)
    module = _exec_config_file(path)
    get_config = getattr(module, "get_config", None)
    if get_config is None or not callable(get_config):
        raise ValueError(
            f"config file {path!r} does not define get_config(); add "
            "`def get_config() -> magnet_jax.config.Config: ...` returning the Config."
        )
    cfg = get_config()
    if not isinstance(cfg, Config):
        raise ValueError(
            f"get_config() in {path!r} returned {type(cfg).__name__}, not magnet_jax.config.Config."
        )
    return apply_overrides(cfg, overrides)


def parse_args_and_overrides(parser, example: str = "--config.train.global_batch_size=8"):
    """(args, overrides) of a script's command line: its own flags, plus `--config.x.y=v` overrides;
    anything else is a usage error that shows what an override looks like."""
    args, rest = parser.parse_known_args()
    bad = [o for o in rest if not o.startswith("--config.")]
    if bad:
        parser.error(f"unknown arguments {bad}; config overrides look like {example}")
    return args, rest


def _available_configs_hint(path: str) -> str:
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        directory = "configs"
    if not os.path.isdir(directory):
        return ""
    names = sorted(f for f in os.listdir(directory) if f.endswith(".py") and not f.startswith("_"))
    if not names:
        return ""
    return f" Available in {directory}/: {', '.join(names)}."


def _exec_config_file(path: str):
    """Executes the config file as a fresh module, its directory importable meanwhile.

    Sibling modules imported by the config (e.g. `_base`) are dropped from `sys.modules`
    afterwards, and same-named modules from elsewhere are restored, so that configs from
    different directories never see each other's helpers.
    """
    directory = os.path.dirname(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    module_name = f"_magnet_jax_config_{abs(hash(path)):x}_{stem}"
    siblings = {os.path.splitext(f)[0] for f in os.listdir(directory) if f.endswith(".py")}
    stashed = {name: sys.modules.pop(name) for name in siblings if name in sys.modules}
    before = set(sys.modules)
    sys.path.insert(0, directory)
    try:
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ValueError(f"cannot import config file {path!r}; is it a python (.py) file?")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        try:
            sys.path.remove(directory)
        except ValueError:
            pass
        for name in set(sys.modules) - before:
            file = getattr(sys.modules[name], "__file__", None) or ""
            if name in siblings or os.path.dirname(os.path.abspath(file)) == directory:
                sys.modules.pop(name, None)
        sys.modules.update(stashed)
    return module


# --------------------------------------------------------------------------- types


@functools.lru_cache(maxsize=None)
def _hints(cls) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls) -> List[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _unwrap_optional(tp) -> Tuple[Any, bool]:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if optional and len(args) == 1:
            return args[0], True
    return tp, False


class _ParseError(ValueError):
    pass


def _convert(value: Any, tp: Any) -> Any:
    """Converts `value` (a command-line string or a JSON/python object) to type `tp`."""
    inner, optional = _unwrap_optional(tp)
    if optional:
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
            return None
        return _convert(value, inner)
    if value is None:
        raise _ParseError("None is not allowed (the field is not Optional)")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            word = value.strip().lower()
            if word in _TRUE_WORDS:
                return True
            if word in _FALSE_WORDS:
                return False
        raise _ParseError("expected true/false/1/0/yes/no")
    if tp is int:
        if isinstance(value, bool):
            raise _ParseError("expected an integer, got a bool")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            text = value.strip()
            try:
                return int(text)
            except ValueError:
                pass
            try:
                as_float = float(text)
            except ValueError:
                as_float = None
            if as_float is not None and as_float.is_integer():
                return int(as_float)
        raise _ParseError("expected an integer")
    if tp is float:
        if isinstance(value, bool):
            raise _ParseError("expected a number, got a bool")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise _ParseError("expected a number")
    if tp is str:
        if isinstance(value, str):
            text = value
            if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
                text = text[1:-1]
            return text
        raise _ParseError("expected a string")
    origin = typing.get_origin(tp)
    if origin in (tuple, Tuple):
        args = typing.get_args(tp)
        items = _as_sequence(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0]) for v in items)
        if len(items) != len(args):
            raise _ParseError(f"expected {len(args)} items, got {len(items)}")
        return tuple(_convert(v, a) for v, a in zip(items, args))
    if _is_dataclass_type(tp):
        if isinstance(value, Mapping):
            return dataclass_from_dict(tp, value)
        raise _ParseError("expected a mapping of the section's keys")
    raise _ParseError(f"unsupported field type {_type_name(tp)}")


def _as_sequence(value: Any) -> list:
    """A list of items from a list/tuple, or from text such as "1,2", "[1, 2]", "(a, b)"."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if not isinstance(value, str):
        raise _ParseError("expected a sequence")
    text = value.strip()
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        parsed = None
    else:
        if isinstance(parsed, (list, tuple)):
            return list(parsed)
        if text and "," not in text:
            return [parsed]  # a single item, e.g. "60" or "'data'"
    # Bare comma-separated words (e.g. `data,fsdp` or `[data, fsdp]`).
    if len(text) >= 2 and (text[0], text[-1]) in (("[", "]"), ("(", ")")):
        text = text[1:-1].strip()
    if not text:
        return []
    if any(c in text for c in "[]()"):
        raise _ParseError("could not parse the nested sequence; write it as a python literal")
    return [part.strip() for part in text.split(",") if part.strip() != ""]


# --------------------------------------------------------------------------- overrides


# Keys that moved: the old name -> the new one (old override keys and sweep grids get a clear error;
# old dicts, e.g. checkpoints' configs, are read with the old key dropped when it agrees).
MOVED_KEYS = {"masking.span_len": "lm.span_len"}


def _unknown_key_error(full_key: str, name: str, cls) -> ValueError:
    if full_key in MOVED_KEYS:
        return ValueError(f"config key {full_key!r} is now {MOVED_KEYS[full_key]!r} (one span length for training and "
                          f"decoding): write {MOVED_KEYS[full_key]}=... instead.")
    valid = _fields(cls)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    prefix = full_key.rsplit(".", 1)[0] + "." if "." in full_key else ""
    hint = f" Did you mean {prefix + close[0]!r}?" if close else ""
    where = f"in section {prefix[:-1]!r}" if prefix else "at the top level"
    return ValueError(
        f"unknown config key {full_key!r}: {name!r} is not a field {where}.{hint} "
        f"Valid keys: {', '.join(valid)}."
    )


def _split_override(override: str) -> Tuple[List[str], str]:
    text = override.strip()
    if text.startswith("--"):
        text = text[2:]
    if "=" not in text:
        raise ValueError(
            f"override {override!r} has no '='; write config.section.key=value "
            "(e.g. --config.optim.lr=1e-4)."
        )
    key, value = text.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if parts and parts[0] == "config":
        parts = parts[1:]
    if not parts or any(not p for p in parts):
        raise ValueError(f"override {override!r} has an empty or malformed key; write config.section.key=value.")
    return parts, value


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """Returns `cfg` with each `[--][config.]section.key=value` override applied.

    All overrides are gathered first (the last one wins for a repeated key), then the
    Config is rebuilt once so that its `__post_init__` checks see the final values.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    if not overrides:
        return cfg
    changes: Dict[str, Any] = {}
    for override in overrides:
        parts, text = _split_override(override)
        full_key = ".".join(parts)
        cls = type(cfg)
        node = changes
        for i, name in enumerate(parts):
            if name not in _fields(cls):
                raise _unknown_key_error(".".join(parts[: i + 1]), name, cls)
            tp = _hints(cls)[name]
            last = i == len(parts) - 1
            if _is_dataclass_type(tp):
                if last:
                    leaves = _fields(tp)
                    raise ValueError(
                        f"cannot override the whole section {full_key!r}; set its leaves instead, "
                        f"e.g. {full_key}.{leaves[0]}=... (keys: {', '.join(leaves)})."
                    )
                node = node.setdefault(name, {})
                cls = tp
                continue
            if not last:
                raise ValueError(
                    f"config key {full_key!r}: {'.'.join(parts[: i + 1])!r} holds a {_type_name(tp)} value, "
                    "not a section."
                )
            try:
                node[name] = _convert(text, tp)
            except _ParseError as e:
                raise ValueError(
                    f"cannot parse override {full_key}={text!r} as {_type_name(tp)}: {e}."
                ) from None
    try:
        return _replace_nested(cfg, changes)
    except ValueError as e:
        raise ValueError(f"{e} (after overrides: {' '.join(overrides)})") from e


def _replace_nested(obj, changes: Dict[str, Any]):
    kwargs = {}
    for name, value in changes.items():
        if isinstance(value, dict):
            value = _replace_nested(getattr(obj, name), value)
        kwargs[name] = value
    return dataclasses.replace(obj, **kwargs)


# --------------------------------------------------------------------------- dicts


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, (tuple, list)):
        return [_to_plain(v) for v in value]
    return value


def config_to_dict(cfg: Config) -> Dict[str, Any]:
    """A JSON-serialisable nested dict of `cfg` (tuples become lists)."""
    return _to_plain(cfg)


def dataclass_from_dict(cls, d: Mapping[str, Any], *, ignore_unknown: bool = False, prefix: str = ""):
    """The dataclass `cls` from a (nested) dict: each value read as its field's declared type (JSON
    lists become tuples, nested dicts the nested dataclasses), missing keys take their defaults.
    Unknown keys are errors, or with `ignore_unknown` (a foreign file, e.g. a Hugging Face
    config.json) skipped. The one dict -> dataclass converter of the package."""
    if not isinstance(d, Mapping):
        raise ValueError(f"config section {prefix or '<root>'!r} must be a mapping, got {type(d).__name__}.")
    valid = _fields(cls)
    kwargs = {}
    for name, value in d.items():
        full_key = f"{prefix}{name}"
        if name not in valid:
            if ignore_unknown:
                continue
            raise _unknown_key_error(full_key, name, cls)
        tp = _hints(cls)[name]
        if _is_dataclass_type(tp):
            kwargs[name] = dataclass_from_dict(tp, value, ignore_unknown=ignore_unknown, prefix=f"{full_key}.")
            continue
        try:
            kwargs[name] = _convert(value, tp)
        except _ParseError as e:
            raise ValueError(f"config key {full_key!r}: cannot read {value!r} as {_type_name(tp)}: {e}.") from None
    return cls(**kwargs)


def config_from_dict(d: Mapping[str, Any]) -> Config:
    """Inverse of `config_to_dict`. Unknown keys are errors; missing keys take their defaults.
    A dict written before a key moved (`MOVED_KEYS`; checkpoints, converted models) is read with
    the old key dropped where it agrees with the new one."""
    return dataclass_from_dict(Config, _without_moved_keys(d))


def _without_moved_keys(d: Mapping[str, Any]) -> Mapping[str, Any]:
    out = dict(d)
    for old, new in MOVED_KEYS.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        section = out.get(old_section)
        if not isinstance(section, Mapping) or old_key not in section:
            continue
        target = out.get(new_section) if isinstance(out.get(new_section), Mapping) else {}
        if new_key in target and target[new_key] != section[old_key]:
            raise ValueError(f"config: {old}={section[old_key]!r} (a key written before it moved) differs from "
                             f"{new}={target[new_key]!r}")
        out[old_section] = {k: v for k, v in section.items() if k != old_key}
        out[new_section] = {**target, new_key: target.get(new_key, section[old_key])}
    return out


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def diff_configs(a: Config, b: Config) -> List[str]:
    """Dotted keys (e.g. 'lm.dim') whose values differ between `a` and `b`, in field order."""
    fa, fb = _flatten(config_to_dict(a)), _flatten(config_to_dict(b))
    keys = list(fa) + [k for k in fb if k not in fa]
    return [k for k in keys if fa.get(k, _MISSING) != fb.get(k, _MISSING)]


_MISSING = object()


# --------------------------------------------------------------------------- printing


def format_config(cfg: Config) -> str:
    """A readable, one-leaf-per-line dump of `cfg` for logs (python reprs, derived sizes appended)."""
    lines: List[str] = []

    def emit(obj, indent: str):
        names = [f.name for f in dataclasses.fields(obj) if f.init]
        scalars = [n for n in names if not dataclasses.is_dataclass(getattr(obj, n))]
        width = max((len(n) for n in scalars), default=0)
        for name in names:
            value = getattr(obj, name)
            if dataclasses.is_dataclass(value):
                lines.append(f"{indent}{name}:")
                emit(value, indent + "  ")
            else:
                lines.append(f"{indent}{name.ljust(width)} = {value!r}")

    emit(cfg, "")
    derived = {
        "data.num_frames": cfg.data.num_frames,
        "lm.head_dim": cfg.lm.head_dim,
        "lm.ffn_dim": cfg.lm.ffn_dim,
    }
    lines.append("derived:")
    lines.extend(f"  {k} = {v}" for k, v in derived.items())
    return "\n".join(lines)
