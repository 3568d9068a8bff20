"""Writing WebDataset shards: webdataset's `TarWriter` into a temporary file, renamed into place when done.

Every shard XPL writes (the shapes world, `xpl make-shards`, pseudo-labels) goes through `AtomicTar`,
so a reader never sees a half-written shard under its final name, and the bytes depend only on the
samples (no time stamps or owner names): the same input gives a byte-identical shard.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from types import TracebackType
from typing import Mapping, Optional, Sequence

import webdataset as wds


class AtomicTar:
    """A shard at `path`, written to `tmp` (default `.<name>.tmp` beside it) until `commit()`.

    `write(key, members)` adds one sample, `members` mapping suffixes to bytes (written in sorted
    suffix order). Used as a context manager it commits on success and removes the temporary file
    on an exception.
    """

    def __init__(self, path: str | os.PathLike, tmp: Optional[str | os.PathLike] = None) -> None:
        self.path = Path(path)
        self.tmp = Path(tmp) if tmp is not None else self.path.with_name(f".{self.path.name}.tmp")
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.tmp, "wb")  # noqa: SIM115 (closed by commit or abort)
        self._tar = wds.TarWriter(self._file, user="", group="", mode=0o644, mtime=0, encoder=False)

    def write(self, key: str, members: Mapping[str, bytes]) -> None:
        self._tar.write({"__key__": key, **members})

    def commit(self) -> Path:
        """Finish the archive, flush it to disk and move it to its final name."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the temporary file; the final name is left as it was."""
        self._file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "AtomicTar":
        return self

    def __exit__(self, kind: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()


def join_tars(parts: Sequence[str | os.PathLike], path: str | os.PathLike, tmp: str | os.PathLike) -> Path:
    """One archive at `path` with the members of `parts`, in order: each part's member bytes as they
    are, then one end-of-archive marker. The result is byte for byte what one `AtomicTar` writing all
    the samples in that order would give, without decoding or re-encoding a member. Written to `tmp`,
    flushed, then moved into place."""
    path, tmp = Path(path), Path(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as source:
                out.write(source.read(_members_end(part)))
        end = out.tell() + 2 * tarfile.BLOCKSIZE
        out.write(tarfile.NUL * (2 * tarfile.BLOCKSIZE + (-end % tarfile.RECORDSIZE)))
        out.flush()
        os.fsync(out.fileno())
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, path)
    return path


def _members_end(part: str | os.PathLike) -> int:
    """The byte offset where a tar's last member (header, data, padding) ends: its end-of-archive
    marker and record padding start there."""
    with tarfile.open(part, "r:") as tar:
        members = tar.getmembers()
    if not members:
        return 0
    last = members[-1]
    return last.offset_data + -(-last.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
