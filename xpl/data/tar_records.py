"""The one reader of caption shards: a WebDataset tar as a stream of records, a sample or a named problem.

Caption pretraining (`xpl.data.captions`) and pseudo-labeling (`xpl.pseudo.source`) both read shards
through `iter_tar_records`. Members are grouped into samples as WebDataset does (key = member name up
to the first dot of its base name; members of a sample are contiguous). Damage that is final becomes
a record with an error, so it is counted, never lost:

- a tar cut short (`tarfile.ReadError`, `EOFError`) rejects the sample being read, or, between
  samples, yields a `__tail__` record: whatever came after is lost;
- a tar that ends without its end-of-archive blocks (cut at a member boundary, which Python's
  tarfile accepts silently) yields a `__tail__` record too. The last 1024 bytes are checked while
  streaming, so a non-seekable remote stream is checked like a local file;
- a stream that is not a tar at all yields one `__shard__` record;
- a member larger than `max_member_bytes` is skipped unread and rejects its sample;
- a key seen again later in the archive gets a `#2`, `#3` ... suffix and is rejected;
- a member without a suffix is its own rejected record.

Anything else (an I/O error, a bug) is raised: it may be transient, so the caller must not record it
as a verdict on the data. WebDataset's own `base_plus_ext` is not imported because importing
webdataset loads torch (4 s and hundreds of MB in every Ray Data read worker); `split_name` is its
rule, pinned to it by a test.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator, Optional

TAIL_KEY = "__tail__"
SHARD_KEY = "__shard__"
END_BLOCKS = bytes(1024)
MAX_MEMBER_BYTES = 256 * 2**20

# Reasons of damaged shards (prefixes; details follow after ": ").
TRUNCATED = "truncated_tar"
NOT_A_TAR = "not_a_tar"
NO_END_MARKER = f"{TRUNCATED}: no end-of-archive blocks, data after the last member may be missing"
READ_ERROR = "read_error"  # what callers name an I/O error (OSError) raised while opening or streaming a shard
TRUNCATION_ERRORS = (tarfile.ReadError, EOFError)
_KEY_SUFFIX = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


@dataclass
class TarRecord:
    """One sample (`members`: suffix -> bytes) or one problem (`error` set)."""

    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    error: Optional[str] = None


def split_name(name: str) -> tuple[Optional[str], str]:
    """WebDataset's key/suffix split: 'dir/000123.pseudo.json' -> ('dir/000123', 'pseudo.json')."""
    match = _KEY_SUFFIX.match(name)
    return (match.group(1), match.group(2)) if match else (None, "")


def open_shard(url: str) -> Any:
    """A binary stream of a shard: local paths directly, URLs (s3://, gs://, memory://, ...) through fsspec."""
    if "://" in url and not url.startswith("file://"):
        import fsspec

        return fsspec.open(url, "rb").open()
    return open(url.removeprefix("file://"), "rb")


class _TailProbe:
    """A file wrapper that remembers the last 1024 bytes read, to check for the end blocks."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.tail = b""

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if data:
            self.tail = (self.tail + data)[-len(END_BLOCKS):]
        return data

    def drain(self) -> None:
        while self.read(1 << 16):
            pass


def _truncated(exc: BaseException, where: str) -> str:
    return f"{TRUNCATED}: {type(exc).__name__}: {exc} ({where})"


def iter_tar_records(fileobj: BinaryIO, max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterator[TarRecord]:
    """Samples and problem records of one tar stream (plain or compressed), in archive order."""
    probe = _TailProbe(fileobj)
    seen: dict[str, int] = {}
    current: Optional[TarRecord] = None
    last_member = "start of archive"

    def finish(record: TarRecord) -> TarRecord:
        n = seen.get(record.key, 0) + 1
        seen[record.key] = n
        if n > 1:
            error = record.error or "duplicate_key: key seen earlier in the shard"
            return TarRecord(f"{record.key}#{n}", record.members, error)
        return record

    try:
        stream = tarfile.open(fileobj=probe, mode="r|*")  # noqa: SIM115 (closed below)
    except TRUNCATION_ERRORS as exc:
        yield TarRecord(SHARD_KEY, error=f"{NOT_A_TAR}: {type(exc).__name__}: {exc}")
        return
    try:
        for info in stream:
            if not info.isreg():
                continue
            last_member = info.name
            key, suffix = split_name(info.name)
            if key is None:
                if current is not None:
                    yield finish(current)
                    current = None
                yield finish(TarRecord(info.name, error="not_a_sample_member: member name has no suffix"))
                continue
            if current is not None and key != current.key:
                yield finish(current)
                current = None
            if current is None:
                current = TarRecord(key)
            if info.size > max_member_bytes:
                current.error = current.error or f"member_too_large: {info.name} has {info.size} bytes"
                continue
            handle = stream.extractfile(info)
            data = handle.read() if handle is not None else b""
            if suffix in current.members:
                current.error = current.error or f"duplicate_member: {info.name}"
            current.members[suffix] = data
        if current is not None:
            yield finish(current)
            current = None
        compressed = getattr(stream.fileobj, "comptype", "tar") != "tar"
        if not compressed:
            probe.drain()
            if probe.tail != END_BLOCKS:
                yield TarRecord(TAIL_KEY, error=f"{NO_END_MARKER} (after {last_member})")
    except TRUNCATION_ERRORS as exc:
        if current is not None:
            current.error = _truncated(exc, f"reading {last_member}")
            yield finish(current)
        else:
            yield TarRecord(TAIL_KEY, error=_truncated(exc, f"after {last_member}"))
    finally:
        stream.close()
