"""Label and write pseudo-labeled samples: a Ray Data callable class, run by a pool of writer actors.

Each row arrives with the teacher's chosen regions; the writer pastes, binarises and encodes its
masks, judges them against the sample's truth where it has any (`xpl.pseudo.instances.label_row`)
and writes the sample straight away: the masks exist once, at the original size, only here.
The rows of one input shard in one block make a *part*: its labeled samples go to
`<output>/tmp/<shard>/<first row index>.tar`, and the writer returns one `PART_SCHEMA` row with the
part's manifest records. Any writer takes any block, so writers scale with the data (`num_writers`)
instead of one actor owning every shard; `xpl.pseudo.assemble.ShardAssembler`, on the driver, joins
a shard's parts in row order once all its rows have passed. A part's name depends only on its rows,
so a block redone after an actor failure rewrites the same part, not a second copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa

from xpl.data.tar_writer import AtomicTar
from xpl.pseudo.choice import RegionChoice
from xpl.pseudo.instances import Labeled, label_row
from xpl.pseudo.manifest import manifest_record, tmp_dir
from xpl.pseudo.rows import END, LABELED, PART_SCHEMA, table
from xpl.pseudo.selection_columns import read_selections

# The columns the writer reads as Python values (the selection columns are read as numpy).
ROW_COLUMNS = ("key", "url", "shard", "kind", "status", "reason", "count", "index", "image_name", "image", "txt", "meta",
               "caption", "width", "height", "scale", "teacher_node")


def sample_members(row: dict[str, Any], pseudo: str) -> dict[str, bytes]:
    """The tar members (suffix -> bytes) of one labeled sample: original image, caption and record, pseudo.json."""
    members = {row["image_name"]: row["image"], "pseudo.json": pseudo.encode()}
    if row["txt"] is not None:
        members["txt"] = row["txt"]
    if row["meta"] is not None:
        members["json"] = row["meta"]
    return members


@dataclass
class _Part:
    """The rows of one shard in one block, while the writer handles them."""

    shard: str
    url: str
    first: int
    tar_path: Path
    tar: Optional[AtomicTar] = None
    expected: Optional[int] = None
    failure: Optional[str] = None
    records: list[dict[str, Any]] = field(default_factory=list)

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if self.tar is None:
            self.tar = AtomicTar(self.tar_path, tmp=self.tar_path.with_suffix(".tmp"))
        self.tar.write(key, members)

    def finish(self) -> dict[str, Any]:
        """Commit the part's tar (if it has samples); its `PART_SCHEMA` row."""
        tar = str(self.tar.commit()) if self.tar is not None else None
        return {"shard": self.shard, "url": self.url, "first": self.first, "tar": tar,
                "records": json.dumps(self.records, separators=(",", ":")), "expected": self.expected,
                "failure": self.failure}


class ShardWriter:
    """Labels result rows and writes them as parts; returns one `PART_SCHEMA` row per part. The masks are
    binarised as `choice` says; `ids_by_name` (class name -> id) turns on judging against truth."""

    def __init__(self, output: str, choice: RegionChoice, ids_by_name: Optional[dict[str, int]] = None) -> None:
        self.output = Path(output)
        self.mask_threshold = choice.mask_threshold
        self.ids_by_name = ids_by_name

    def _add(self, part: _Part, row: dict[str, Any], labeled: Labeled) -> None:
        if labeled.status == LABELED:
            part.write(row["key"], sample_members(row, labeled.pseudo))
        part.records.append(manifest_record(row["key"], labeled, row.get("teacher_node")))

    def _part(self, group: list[tuple[dict[str, Any], Any]]) -> _Part:
        """Label and write one shard's rows of a block (their selections beside them) as one part."""
        shard, url = group[0][0]["shard"], group[0][0]["url"]
        first = min(row["index"] for row, _ in group)
        part = _Part(shard, url, first, tmp_dir(self.output) / shard / f"{first:012d}.tar")
        for row, selection in group:
            if row["kind"] == END:
                part.expected, part.failure = row["count"], row["reason"]
            else:
                labeled = label_row(row, selection, mask_threshold=self.mask_threshold, ids_by_name=self.ids_by_name)
                self._add(part, row, labeled)
        return part

    def __call__(self, batch: pa.Table) -> pa.Table:
        selections = read_selections(batch)
        rows = batch.select([c for c in ROW_COLUMNS if c in batch.column_names]).to_pylist()
        groups: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        for row, selection in zip(rows, selections):
            groups.setdefault(row["shard"], []).append((row, selection))
        return table([self._part(group).finish() for group in groups.values()], PART_SCHEMA)
