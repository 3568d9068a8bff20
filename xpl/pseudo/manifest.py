"""Output layout and accounting: one output shard and one manifest per input shard.

    <output>/shards/<name>.tar      labeled samples: <key>.<jpg|png|...> (original bytes), <key>.txt,
                                    <key>.json (the img2dataset record, when present), <key>.pseudo.json
    <output>/manifest/<name>.jsonl  one line per input key: {"key", "status", "reason", "instances",
                                    "categories", "align_scores", "mask_scores", "teacher_node", and
                                    "truth" where the sample carries truth
                                    (`xpl.eval.pseudo_quality.judge_sample`)}
    <output>/tmp/                   shards being written (removed at the start of every run)
    <output>/summary.json           totals of the whole output after the last run

A shard is done when its manifest exists (written last, atomically). A shard whose reading failed
(an I/O error, maybe transient) gets no manifest, so the next run redoes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

from xpl.pseudo.rows import LABELED, STATUSES
from xpl.pseudo.source import ShardTask

if TYPE_CHECKING:
    from xpl.pseudo.instances import Labeled

SHARD_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def shard_path(out: str | Path, name: str) -> Path:
    return Path(out) / "shards" / f"{name}.tar"


def manifest_path(out: str | Path, name: str) -> Path:
    return Path(out) / "manifest" / f"{name}.jsonl"


def tmp_dir(out: str | Path) -> Path:
    return Path(out) / "tmp"


def shard_name(url: str) -> str:
    base = url.rstrip("/").rsplit("/", 1)[-1]
    for suffix in SHARD_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def plan_shards(urls: list[str]) -> list[ShardTask]:
    """Output names for input shards: the base name, plus a hash of the URL where names collide."""
    names = [shard_name(u) for u in urls]
    counts = Counter(names)
    return [
        ShardTask(url, name if counts[name] == 1 else f"{name}-{hashlib.sha1(url.encode()).hexdigest()[:8]}")
        for url, name in zip(urls, names)
    ]


def prepare_output(out: str | Path) -> None:
    """Create the output folders and drop half-written shards of an interrupted run."""
    out = Path(out)
    shutil.rmtree(tmp_dir(out), ignore_errors=True)
    for sub in ("shards", "manifest", "tmp"):
        (out / sub).mkdir(parents=True, exist_ok=True)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def manifest_record(key: str, labeled: Labeled, teacher_node: Optional[str] = None) -> dict[str, Any]:
    """The manifest line of one sample: its key, outcome (`xpl.pseudo.instances.Labeled`) and teacher node."""
    record: dict[str, Any] = {"key": key, "status": labeled.status, "reason": labeled.reason}
    if teacher_node:
        record["teacher_node"] = teacher_node  # the Ray node whose teacher actor ran this sample
    if labeled.status == LABELED:
        record.update(
            instances=len(labeled.instances),
            categories=[i["category_id"] for i in labeled.instances],
            align_scores=[i["align_score"] for i in labeled.instances],
            mask_scores=[i["mask_score"] for i in labeled.instances],
        )
    if labeled.truth:
        record["truth"] = labeled.truth
    return record


def write_manifest(out: str | Path, name: str, records: Iterable[dict[str, Any]]) -> Path:
    path = manifest_path(out, name)
    lines = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
    write_atomic(path, lines.encode())
    return path


def read_manifest(out: str | Path, name: str) -> Optional[list[dict[str, Any]]]:
    """The records of a finished shard, or None if it has no (readable) manifest."""
    path = manifest_path(out, name)
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def is_done(out: str | Path, name: str) -> bool:
    """The shard's manifest exists (and is readable)."""
    return read_manifest(out, name) is not None


def reason_kind(reason: Optional[str]) -> str:
    """The reason's name without its details: 'corrupt_image: OSError ...' -> 'corrupt_image'."""
    return (reason or "").split(":", 1)[0]


def totals(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Counts by status, by status and reason, instances, samples per teacher node, and key uniqueness."""
    by_status: Counter[str] = Counter()
    by_reason: dict[str, Counter[str]] = {s: Counter() for s in STATUSES}
    keys: Counter[str] = Counter()
    nodes: Counter[str] = Counter()
    instances = 0
    for record in records:
        by_status[record["status"]] += 1
        keys[record["key"]] += 1
        instances += int(record.get("instances", 0))
        if record.get("teacher_node"):
            nodes[record["teacher_node"]] += 1
        if record["status"] != LABELED:
            by_reason[record["status"]][reason_kind(record["reason"])] += 1
    return {
        "samples": sum(by_status.values()),
        **{s: by_status[s] for s in STATUSES},
        "instances": instances,
        "reasons": {s: dict(sorted(c.items())) for s, c in by_reason.items() if c},
        "teacher_nodes": dict(sorted(nodes.items())),
        "duplicate_keys": sum(1 for n in keys.values() if n > 1),
    }


def format_totals(t: dict[str, Any]) -> str:
    """A few human lines: the totals and the reasons."""
    lines = [f"samples {t['samples']}: labeled {t['labeled']} ({t['instances']} instances), "
             f"no_match {t['no_match']}, rejected {t['rejected']}"]
    for status, reasons in t.get("reasons", {}).items():
        lines.append(f"  {status}: " + ", ".join(f"{k} {v}" for k, v in reasons.items()))
    return "\n".join(lines)
