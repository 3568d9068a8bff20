"""One run per output folder: a lock file that names its owner (host, pid), with stale-lock detection.

The lock file `<folder>/.xpl-lock` is created exclusively (O_EXCL) and holds json
{"host", "pid", "created", "since", "command"}. A second run finds it and stops with a message naming
the owner. A lock left by a run that died is stale when its host is this host and its process is
gone (no such pid, or that pid now belongs to a process created at another time); a stale lock is
replaced. A lock from another host is never judged from here: the message says how to remove it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import psutil

from xpl.errors import XPLError

log = logging.getLogger(__name__)

LOCK_NAME = ".xpl-lock"


def _owner(path: Path) -> Optional[dict[str, Any]]:
    """The lock file's owner record; None when it is empty or half-written (its owner is still writing it)."""
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return owner if isinstance(owner, dict) else None


def _created(pid: int) -> Optional[float]:
    """Creation time of process `pid` on this host, None when there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


def is_stale(owner: dict[str, Any]) -> bool:
    """Whether the owner was a process on this host that no longer runs."""
    if owner.get("host") != socket.gethostname():
        return False
    created = _created(int(owner.get("pid", -1)))
    return created is None or abs(created - float(owner.get("created", created))) > 1.0


def _describe(owner: Optional[dict[str, Any]]) -> str:
    if owner is None:
        return "a run that is still writing the lock file"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner.get("since", 0))))
    return f"pid {owner.get('pid')} on host {owner.get('host')} since {since} ({owner.get('command', '?')})"


def _unlink_if(path: Path, inode: int) -> None:
    """Remove `path` if it is still the file `inode` (not a lock another run has taken since)."""
    with contextlib.suppress(FileNotFoundError):  # another run removed it first
        if path.stat().st_ino == inode:
            path.unlink()


def acquire(folder: str | os.PathLike) -> Path:
    """Create the lock of `folder` (made if missing) for this process; XPLError when another run holds it."""
    path = Path(folder) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "created": psutil.Process().create_time(),
          "since": time.time(), "command": " ".join(sys.argv)[:200]}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                inode, owner = path.stat().st_ino, _owner(path)
            except FileNotFoundError:
                continue  # its owner released it meanwhile
            if owner is None or not is_stale(owner):
                raise XPLError(f"{path.parent} is in use by {_describe(owner)}: one run per output folder. "
                               f"Wait for that run to end, or delete {path} if it is gone") from None
            log.warning("%s: removing the stale lock of %s", path, _describe(owner))
            _unlink_if(path, inode)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(me, handle)
        return path
    raise XPLError(f"{path}: could not take the lock (other runs keep replacing it)")


def release(path: Path) -> None:
    """Remove the lock file if it is still this process's own."""
    owner = _owner(path) if path.exists() else None
    if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        path.unlink()


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of `folder` for the duration of the block."""
    path = acquire(folder)
    try:
        yield path
    finally:
        release(path)
