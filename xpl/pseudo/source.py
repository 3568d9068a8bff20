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

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional

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
    """Blocks of raw sample rows (`SAMPLE_SCHEMA`) for one shard, the last one ending with the shard's "end" row.
    Members other than the image, .txt and .json are not carried."""
    rows: list[dict] = []
    count = 0

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
                    yield table(rows, SAMPLE_SCHEMA)
                    rows = []
    except OSError as exc:  # missing, permissions, network: the shard fails and is retried by the next run
        failure = f"{READ_ERROR}: {type(exc).__name__}: {exc} (after {count} records)"
    rows.append({"key": None, "url": task.url, "shard": task.name, "kind": END, "count": count, "index": count,
                 "reason": failure})
    yield table(rows, SAMPLE_SCHEMA)


ReadShard = Callable[[ShardTask, int], Iterator[pa.Table]]


class CaptionShardDatasource(Datasource):
    """One read task per caption shard (shard count bounds read parallelism); `read` reads one shard
    (`read_shard`, or a wrapper of it such as `xpl.pseudo.profile.timed_read_shard`)."""

    def __init__(self, shards: List[ShardTask], block_rows: int = 32, read: ReadShard = read_shard) -> None:
        super().__init__()
        self.shards = list(shards)
        self.block_rows = block_rows
        self.read = read

    def get_name(self) -> str:
        return "ReadCaptionShards"

    def estimate_inmemory_data_size(self) -> Optional[int]:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None,
                       data_context=None) -> List[ReadTask]:
        tasks = []
        for shard in self.shards:
            meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=[shard.url], exec_stats=None)
            tasks.append(ReadTask(lambda s=shard, n=self.block_rows, read=self.read: read(s, n), meta,
                                  per_task_row_limit=per_task_row_limit))
        return tasks
