"""Files written whole or not at all: a reader (or a resumed run) never sees a half-written file.

Every writer of results, metadata, reports, audio and downloads goes through `replace_atomically`.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Union

PathLike = Union[str, os.PathLike]


def replace_atomically(path: PathLike, write: Callable[[str], Any], *, fsync: bool = False) -> None:
    """`write(tmp)` fills a hidden temporary file beside `path`, which then replaces `path` in one step.

    The temporary name is unique (threads and processes may write the same file at once) and lies in
    the same folder, because `os.replace` is atomic only within one file system. If `write` fails,
    `path` keeps its old content and the temporary file is removed. `fsync`: the bytes reach the
    disk before the rename (files a crash must not leave empty, such as generated audio).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(str(tmp))
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomically(path: PathLike, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    replace_atomically(path, write)


def write_json_atomically(path: PathLike, obj: Any, **dump_kwargs) -> None:
    write_text_atomically(path, json.dumps(obj, **{"indent": 1, **dump_kwargs}))
