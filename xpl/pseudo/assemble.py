"""Assemble output shards from the writers' parts, on the driver.

The writers return one `PART_SCHEMA` row per (input shard, block), in any order and from any writer.
When a shard's parts hold as many sample records as its end row announced, its part tars are joined
in row order into `<output>/shards/<name>.tar` (member bytes copied, nothing re-encoded:
`xpl.data.tar_writer.join_tars`), then its manifest is written, atomically and last: from then on the
shard counts as done. A shard whose reader failed is dropped (parts removed, no tar, no manifest), so
the next run redoes it. A kill at any point leaves either a finished shard or no manifest.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from xpl.data.tar_writer import join_tars
from xpl.pseudo.manifest import shard_path, tmp_dir, write_manifest
from xpl.pseudo.rows import STATUSES


@dataclass
class _Shard:
    name: str
    url: str
    parts: list[tuple[int, Optional[str], list[dict[str, Any]]]] = field(default_factory=list)
    samples: int = 0
    expected: Optional[int] = None
    failure: Optional[str] = None


class ShardAssembler:
    """Collects parts per shard; `add` returns the shard's summary row once the shard is finished:
    {shard, url, samples, labeled, no_match, rejected, instances, failure}."""

    def __init__(self, output: str | Path) -> None:
        self.output = Path(output)
        self.open: dict[str, _Shard] = {}

    def add(self, part: dict[str, Any]) -> Optional[dict[str, Any]]:
        shard = self.open.setdefault(part["shard"], _Shard(part["shard"], part["url"]))
        records = json.loads(part["records"])
        shard.parts.append((part["first"], part["tar"], records))
        shard.samples += len(records)
        if part["expected"] is not None:
            shard.expected, shard.failure = part["expected"], part["failure"]
        if shard.expected is None or shard.samples < shard.expected:
            return None
        del self.open[shard.name]
        return self._finish(shard)

    def _finish(self, shard: _Shard) -> dict[str, Any]:
        """Join the parts and write the manifest; or, when the shard's reader failed, drop the parts."""
        shard.parts.sort(key=lambda p: p[0])
        row = {"shard": shard.name, "url": shard.url, "samples": shard.samples, "failure": shard.failure}
        if shard.failure is None:
            records = [r for _, _, part_records in shard.parts for r in part_records]
            join_tars([tar for _, tar, _ in shard.parts if tar is not None], shard_path(self.output, shard.name),
                      tmp_dir(self.output) / f"{shard.name}.tar")
            write_manifest(self.output, shard.name, records)
            row.update({s: sum(1 for r in records if r["status"] == s) for s in STATUSES},
                       instances=sum(r.get("instances", 0) for r in records))
        parts = tmp_dir(self.output) / shard.name
        if parts.exists():
            shutil.rmtree(parts)
        return row
