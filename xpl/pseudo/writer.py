"""Label and write pseudo-labeled WebDataset shards: a Ray Data callable class, one actor for the whole run.

Each row arrives with the teacher's chosen regions; the writer pastes, binarises and encodes its
masks, judges them against the sample's truth where it has any (`xpl.pseudo.instances.label_row`)
and writes the sample straight away: the masks exist once, at the original size, only here.
Rows of a shard arrive in any order, mixed with other shards. Labeled samples are appended to
`<output>/tmp/<name>.tar` as they come; every row adds its manifest record. When the shard's "end"
row has arrived and as many sample rows as it announced, the tar is moved into `shards/` and then
the manifest is written (atomically, last): from then on the shard counts as done. An end row with a
`reason` (the reader hit an I/O error) drops the shard instead: no tar, no manifest, and the
returned row's `failure` says why, so the next run redoes it. A kill at any point leaves either a
finished shard or no manifest, and the next run redoes the latter whole.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa

from xpl.data.tar_writer import AtomicTar
from xpl.pseudo.instances import Labeled, label_row
from xpl.pseudo.manifest import manifest_record, shard_path, tmp_dir, write_manifest
from xpl.pseudo.rows import END, LABELED, PROCESS_CPU, SHARD_SCHEMA, STATUSES, TEACHER_CPU, TIMINGS, table
from xpl.pseudo.selection_columns import read_selections

# The columns the writer reads as Python values (the selection columns are read as numpy).
ROW_COLUMNS = ("key", "url", "shard", "kind", "status", "reason", "count", "image_name", "image", "txt", "meta",
               "caption", "width", "height", "scale", "teacher_node", "teacher_begin", "teacher_end",
               *TIMINGS, TEACHER_CPU, PROCESS_CPU[0])


def sample_members(row: dict[str, Any], pseudo: str) -> dict[str, bytes]:
    """The tar members (suffix -> bytes) of one labeled sample: original image, caption and record, pseudo.json."""
    members = {row["image_name"]: row["image"], "pseudo.json": pseudo.encode()}
    if row["txt"] is not None:
        members["txt"] = row["txt"]
    if row["meta"] is not None:
        members["json"] = row["meta"]
    return members


@dataclass
class _OpenShard:
    name: str
    url: str
    tar: AtomicTar
    expected: Optional[int] = None
    failure: Optional[str] = None
    records: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys((*TIMINGS, TEACHER_CPU, *PROCESS_CPU), 0.0))
    teacher_begin: Optional[float] = None
    teacher_end: Optional[float] = None

    @property
    def complete(self) -> bool:
        return self.expected is not None and len(self.records) >= self.expected


class ShardWriter:
    """Labels result rows and appends them to their shard's temporary tar; finishes shards; returns one
    row per finished shard. `ids_by_name` (class name -> id) turns on judging against truth."""

    def __init__(self, output: str, mask_threshold: float = 0.5, ids_by_name: Optional[dict[str, int]] = None) -> None:
        self.output = Path(output)
        self.mask_threshold = mask_threshold
        self.ids_by_name = ids_by_name
        self.open: dict[str, _OpenShard] = {}
        self.process_cpu = time.process_time()  # at the end of the previous call (here: of start-up)

    def _shard(self, row: dict[str, Any]) -> _OpenShard:
        shard = self.open.get(row["shard"])
        if shard is None:
            name = row["shard"]
            tar = AtomicTar(shard_path(self.output, name), tmp=tmp_dir(self.output) / f"{name}.tar")
            shard = self.open[name] = _OpenShard(name, row["url"], tar)
        return shard

    def _add(self, shard: _OpenShard, row: dict[str, Any], labeled: Labeled) -> None:
        start = time.perf_counter()
        if labeled.status == LABELED:
            shard.tar.write(row["key"], sample_members(row, labeled.pseudo))
        shard.records.append(manifest_record(row["key"], labeled, row.get("teacher_node")))
        row.update(labeled.seconds, t_write=time.perf_counter() - start)
        for stage in shard.timings:
            shard.timings[stage] += row.get(stage) or 0.0
        if row.get("teacher_begin") is not None:
            shard.teacher_begin = min(shard.teacher_begin or row["teacher_begin"], row["teacher_begin"])
            shard.teacher_end = max(shard.teacher_end or row["teacher_end"], row["teacher_end"])

    def _finish(self, shard: _OpenShard) -> dict[str, Any]:
        """Commit the shard and write its manifest; or, when its reader failed, drop both (retried next run)."""
        start = time.perf_counter()
        del self.open[shard.name]
        if shard.failure is not None:
            shard.tar.abort()
            return {"shard": shard.name, "url": shard.url, "samples": len(shard.records), "failure": shard.failure,
                    "timings": json.dumps(shard.timings)}
        shard.tar.commit()
        write_manifest(self.output, shard.name, shard.records)
        shard.timings["t_write"] += time.perf_counter() - start
        counts = {s: sum(1 for r in shard.records if r["status"] == s) for s in STATUSES}
        return {"shard": shard.name, "url": shard.url, "samples": len(shard.records), **counts,
                "instances": sum(r.get("instances", 0) for r in shard.records),
                "timings": json.dumps(shard.timings), "teacher_begin": shard.teacher_begin,
                "teacher_end": shard.teacher_end}

    def __call__(self, batch: pa.Table) -> pa.Table:
        selections = read_selections(batch)
        rows = batch.select([c for c in ROW_COLUMNS if c in batch.column_names]).to_pylist()
        touched = []
        for row, selection in zip(rows, selections):
            shard = self._shard(row)
            touched.append(shard.name)
            if row["kind"] == END:
                shard.expected, shard.failure = row["count"], row["reason"]
            else:
                labeled = label_row(row, selection, mask_threshold=self.mask_threshold, ids_by_name=self.ids_by_name)
                self._add(shard, row, labeled)
        process_cpu, self.process_cpu = time.process_time() - self.process_cpu, time.process_time()
        for name in touched:
            self.open[name].timings[PROCESS_CPU[1]] += process_cpu / len(rows)
        finished = [self._finish(self.open[name]) for name in dict.fromkeys(touched) if self.open[name].complete]
        return table(finished, SHARD_SCHEMA)
