"""A Ray Data datasource of caption shards: one read task per shard, raw members, nothing decoded.

It replaces `ray.data.read_webdataset`, whose read task raises on a truncated tar and so fails the
whole dataset (Ray 2.60; pinned by a test). Each read task streams one shard through the shared
reader `xpl.data.tar_records` and yields blocks of at most `block_rows` sample rows (raw bytes only;
decoding is the next, separate CPU stage), then one "end" row that carries the number of sample
rows the shard gave. Problems that belong to no sample key (`__shard__`: not a tar; `__tail__`:
damage after the last readable sample) are keyed `<shard name>/__shard__` and `<shard name>/__tail__`.
An I/O error (cannot open, or a failure while streaming: maybe transient) is no verdict on the data:
the end row carries it as `reason` and the writer drops the shard without a manifest, so the next
run retries it. Shards are opened with fsspec, so local paths and any fsspec URL work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, List, Optional

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from xpl.data.caption_sample import image_member
from xpl.data.tar_records import READ_ERROR, SHARD_KEY, TAIL_KEY, iter_tar_records, open_shard
from xpl.pseudo.rows import END, PENDING, REJECTED, SAMPLE, SAMPLE_SCHEMA, table


@dataclass(frozen=True)
class ShardTask:
    """One input shard and the name of its output shard/manifest."""

    url: str
    name: str


def read_shard(task: ShardTask, block_rows: int = 32) -> Iterator[pa.Table]:
    """Blocks of raw sample rows for one shard, the last one ending with the shard's "end" row."""
    rows: list[dict] = []
    count = 0
    start = time.perf_counter()

    def sample_row(key: str, members: dict[str, bytes], error: Optional[str]) -> dict:
        suffix = image_member(members)
        return {
            "key": key, "url": task.url, "shard": task.name, "kind": SAMPLE, "index": count,
            "status": REJECTED if error else PENDING, "reason": error,
            "image_name": suffix, "image": members[suffix] if suffix else None,
            "txt": members.get("txt"), "meta": members.get("json"),
        }

    failure = None
    try:
        with open_shard(task.url) as handle:
            for record in iter_tar_records(handle):
                key = f"{task.name}/{record.key}" if record.key in (SHARD_KEY, TAIL_KEY) else record.key
                rows.append(sample_row(key, record.members, record.error))
                count += 1
                if len(rows) >= block_rows:
                    yield _block(rows, start)
                    rows, start = [], time.perf_counter()
    except OSError as exc:  # missing, permissions, network: the shard fails and is retried by the next run
        failure = f"{READ_ERROR}: {type(exc).__name__}: {exc} (after {count} records)"
    rows.append({"key": None, "url": task.url, "shard": task.name, "kind": END, "count": count, "index": count,
                 "reason": failure})
    yield _block(rows, start)


def _block(rows: list[dict], start: float) -> pa.Table:
    """Rows as a SAMPLE_SCHEMA table. Members other than the image, .txt and .json are not carried."""
    per_row = (time.perf_counter() - start) / max(1, len(rows))
    for row in rows:
        row["t_read"] = per_row
    return table(rows, SAMPLE_SCHEMA)


class CaptionShardDatasource(Datasource):
    """One read task per caption shard (shard count bounds read parallelism)."""

    def __init__(self, shards: List[ShardTask], block_rows: int = 32) -> None:
        super().__init__()
        self.shards = list(shards)
        self.block_rows = block_rows

    def get_name(self) -> str:
        return "ReadCaptionShards"

    def estimate_inmemory_data_size(self) -> Optional[int]:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None,
                       data_context=None) -> List[ReadTask]:
        tasks = []
        for shard in self.shards:
            meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=[shard.url], exec_stats=None)
            tasks.append(ReadTask(lambda s=shard, n=self.block_rows: read_shard(s, n), meta,
                                  per_task_row_limit=per_task_row_limit))
        return tasks
