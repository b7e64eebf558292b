"""One run per folder: an advisory lock file that names its holder.

Two trainings in one workdir would write the same checkpoints and interleave their metrics; two
tokenize runs of one dataset would race on its chunk files. The lock is `flock` on a file in the
folder: the kernel releases it when its process ends, however it ends, so the lock of a killed
run is never stale, and the file's content (host, pid, command, time) names the holder to whoever
is refused. The file is truncated on release, never deleted: deleting a lock file lets two runs
lock two different files of the same name.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from typing import Optional

log = logging.getLogger(__name__)
LOCK_NAME = ".magnet_jax.lock"


class FolderInUseError(ValueError):
    """Another live run holds the folder."""


class RunLock:
    def __init__(self, folder: str, what: str, name: str = LOCK_NAME):
        self.path = os.path.join(folder, name)
        self.what = what
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise FolderInUseError(f"{self.what} is in use by another run ({self._holder()}). Wait for it to "
                                       "end or stop it; two runs in one folder would overwrite each other's "
                                       "files.") from None
            # A filesystem without flock (some network mounts): run unlocked rather than not at all.
            log.warning("cannot lock %s (%s): nothing stops a second run from using it at the same time",
                        self.path, e)
            return self
        previous = self._read(fd)
        if previous:  # a run that ended without releasing (killed): its lock died with it
            log.info("%s: taking over the lock of an earlier run that is gone (%s)", self.what,
                     _describe(previous))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(),
                                  "command": " ".join(sys.argv)}).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _holder(self) -> str:
        try:
            with open(self.path, "rb") as f:
                return _describe(_parse(f.read())) or "holder unknown"
        except OSError:
            return "holder unknown"

    @staticmethod
    def _read(fd: int) -> dict:
        return _parse(os.pread(fd, 1 << 16, 0))


def _parse(raw: bytes) -> dict:
    try:
        out = json.loads(raw.decode() or "{}")
    except ValueError:
        return {"unreadable": True} if raw.strip() else {}
    return out if isinstance(out, dict) else {}


def _describe(info: dict) -> str:
    if not info:
        return ""
    if info.get("unreadable"):
        return "its lock file is unreadable"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"host {info.get('host')}, pid {info.get('pid')}, since {since}: {info.get('command', '')}"
