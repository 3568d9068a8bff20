"""Timing of the pseudo-labeling pipeline: an optional layer over its stages (`pseudolabel.profile`, the benchmark).

The stages themselves keep no clocks and their rows carry no timings (`xpl.pseudo.rows`). Profiled, each
stage is replaced by a timed one that runs the stage unchanged and adds its columns to the rows it returns,
carrying on those that arrived from upstream (`xpl.pseudo.dataflow.PROFILED`):

    timed_read_shard     t_read                  the read task's seconds for a block, spread over its rows
    timed_decode_batch   t_decode                the decode task's seconds for a block, spread over its rows
    ProfiledTeacher      t_teacher, t_teacher_cpu
                                                 wall and actor-thread CPU seconds of the model work
                                                 (`Teacher.select`), spread over the rows it ran on; on a
                                                 busy CPU machine the gap is time spent waiting for a core
                         t_teacher_process_cpu   the actor process's CPU since its previous call (Ray's
                                                 hand-off, Arrow, the work; start-up and model loading stay
                                                 out), spread over the block's rows
                         teacher_begin, teacher_end
                                                 wall clock (epoch s) when the model work began and ended
    ProfiledShardWriter  t_writer, t_writer_process_cpu
                                                 wall and process CPU seconds of the writer's call (paste,
                                                 encode, judge, write: one stage), shared out by rows; each
                                                 part row also sums its rows' timings and teacher window
    ProfiledAssembler    t_assemble              the driver's seconds joining parts and writing manifests;
                                                 each finished shard's row carries `timings` (column ->
                                                 seconds over its parts) and its teacher window

`ms_per_image` turns summed timings into milliseconds per image per role.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import numpy as np
import pyarrow as pa

from xpl.pseudo import rows
from xpl.pseudo.assemble import ShardAssembler
from xpl.pseudo.choice import Selection
from xpl.pseudo.decode import decode_batch
from xpl.pseudo.source import ShardTask, read_shard
from xpl.pseudo.teacher_actor import Teacher
from xpl.pseudo.writer import ShardWriter

READ, DECODE = "t_read", "t_decode"
MODEL = ("t_teacher", "t_teacher_cpu")  # the teacher's model work: wall and thread CPU seconds
TEACHER_PROCESS = "t_teacher_process_cpu"
WRITER = ("t_writer", "t_writer_process_cpu")
ASSEMBLE = "t_assemble"
WINDOW = ("teacher_begin", "teacher_end")
ROW_TIMINGS = (READ, DECODE, *MODEL, TEACHER_PROCESS)  # what the rows bring to the writer
PART_TIMINGS = (*ROW_TIMINGS, *WRITER)  # what a part sums over its rows, and the writer's own


def _extended(schema: pa.Schema, names: tuple[str, ...]) -> pa.Schema:
    """`schema` with float64 columns `names` after its own."""
    return pa.schema([*schema, *(pa.field(name, pa.float64()) for name in names)])


PROFILED_SAMPLE_SCHEMA = _extended(rows.SAMPLE_SCHEMA, (READ, DECODE))
PROFILED_RESULT_SCHEMA = _extended(rows.RESULT_SCHEMA, (*ROW_TIMINGS, *WINDOW))
PROFILED_PART_SCHEMA = _extended(rows.PART_SCHEMA, (*PART_TIMINGS, *WINDOW))


def _with(out: pa.Table, new: Mapping[str, pa.Array], schema: pa.Schema,
          upstream: Optional[pa.Table] = None) -> pa.Table:
    """`out` as a table of `schema`: the `new` columns, then `out`'s, then those that arrived in `upstream`
    (the same rows), null where none has one."""
    columns = {**({n: upstream.column(n) for n in upstream.column_names} if upstream is not None else {}),
               **{n: out.column(n) for n in out.column_names}, **new}
    return pa.Table.from_arrays([columns.get(f.name, pa.nulls(len(out), f.type)) for f in schema], schema=schema)


def _spread(seconds: float, n: int) -> pa.Array:
    """`seconds` spread evenly over `n` rows."""
    return pa.array(np.full(n, seconds / max(1, n)), pa.float64())


def _on(ran: np.ndarray, value: float) -> pa.Array:
    """A float64 column: `value` on the rows in `ran`, null elsewhere."""
    return pa.array(np.full(len(ran), value), type=pa.float64(), mask=~ran)


def timed_read_shard(task: ShardTask, block_rows: int = 32) -> Iterator[pa.Table]:
    """`read_shard`'s blocks with `t_read` (`PROFILED_SAMPLE_SCHEMA`)."""
    blocks = read_shard(task, block_rows)
    while True:
        start = time.perf_counter()
        block = next(blocks, None)
        if block is None:
            return
        yield _with(block, {READ: _spread(time.perf_counter() - start, len(block))}, PROFILED_SAMPLE_SCHEMA)


def timed_decode_batch(batch: pa.Table, **kwargs: Any) -> pa.Table:
    """`decode_batch` (same arguments) with `t_decode`, carrying `t_read` (`PROFILED_SAMPLE_SCHEMA`)."""
    start = time.perf_counter()
    out = decode_batch(batch, **kwargs)
    return _with(out, {DECODE: _spread(time.perf_counter() - start, len(out))}, PROFILED_SAMPLE_SCHEMA, batch)


class ProfiledTeacher(Teacher):
    """`Teacher` whose blocks also carry the teacher's timings and the upstream ones (`PROFILED_RESULT_SCHEMA`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.selected: dict[str, float] = {}  # the timings of the last `select`
        self.process_cpu = time.process_time()  # at the end of the previous call (here: of start-up)

    def select(self, pixels: list[tuple[pa.BinaryScalar, int, int]],
               words: list[list[dict[str, Any]]]) -> list[Selection]:
        begin, start, cpu = time.time(), time.perf_counter(), time.thread_time()
        out = super().select(pixels, words)
        self.selected = dict(zip((*MODEL, *WINDOW), (time.perf_counter() - start, time.thread_time() - cpu, begin,
                                                    time.time())))
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = super().__call__(batch)
        ran = out.column("teacher_node").is_valid().to_numpy(zero_copy_only=False)
        n = max(1, int(ran.sum()))  # the model's seconds are spread over the rows it ran on
        process_cpu, self.process_cpu = time.process_time() - self.process_cpu, time.process_time()
        new = {**{name: _on(ran, self.selected[name] / n) for name in MODEL},
               **{name: _on(ran, self.selected[name]) for name in WINDOW},
               TEACHER_PROCESS: _spread(process_cpu, len(out))}
        return _with(out, new, PROFILED_RESULT_SCHEMA, batch)


class ProfiledShardWriter(ShardWriter):
    """`ShardWriter` whose part rows also carry their rows' summed timings, the teacher window and the
    writer's own seconds (`PROFILED_PART_SCHEMA`); the writer's call is shared out by rows."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.process_cpu = time.process_time()  # at the end of the previous call (here: of start-up)

    def __call__(self, batch: pa.Table) -> pa.Table:
        start = time.perf_counter()
        parts = super().__call__(batch)
        seconds = time.perf_counter() - start
        process_cpu, self.process_cpu = time.process_time() - self.process_cpu, time.process_time()
        sums = batch.group_by("shard").aggregate([("shard", "count"), *((name, "sum") for name in ROW_TIMINGS),
                                                  ("teacher_begin", "min"), ("teacher_end", "max")])
        by_shard = {row["shard"]: row for row in sums.to_pylist()}
        shards = [by_shard[shard] for shard in parts.column("shard").to_pylist()]
        values = {name: [s[f"{name}_sum"] or 0.0 for s in shards] for name in ROW_TIMINGS}
        values.update({name: [total * s["shard_count"] / len(batch) for s in shards]
                       for name, total in zip(WRITER, (seconds, process_cpu))})
        values.update(teacher_begin=[s["teacher_begin_min"] for s in shards],
                      teacher_end=[s["teacher_end_max"] for s in shards])
        return _with(parts, {name: pa.array(v, pa.float64()) for name, v in values.items()}, PROFILED_PART_SCHEMA)


@dataclass
class _ShardTimes:
    """A shard's timings while its parts arrive."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys((*PART_TIMINGS, ASSEMBLE), 0.0))
    begin: Optional[float] = None
    end: Optional[float] = None

    def add(self, part: Mapping[str, Any], assemble: float) -> None:
        for name in PART_TIMINGS:
            self.seconds[name] += part[name]
        self.seconds[ASSEMBLE] += assemble
        if part["teacher_begin"] is not None:
            self.begin = min(part["teacher_begin"], self.begin or part["teacher_begin"])
            self.end = max(part["teacher_end"], self.end or part["teacher_end"])


class ProfiledAssembler(ShardAssembler):
    """`ShardAssembler` whose finished-shard rows also carry `timings` (column -> seconds summed over the
    shard's parts, `t_assemble` included) and the teacher's window (`teacher_begin`, `teacher_end`)."""

    def __init__(self, output: str | Path) -> None:
        super().__init__(output)
        self.times: dict[str, _ShardTimes] = {}

    def add(self, part: dict[str, Any]) -> Optional[dict[str, Any]]:
        start = time.perf_counter()
        row = super().add(part)
        times = self.times.setdefault(part["shard"], _ShardTimes())
        times.add(part, assemble=time.perf_counter() - start)
        if row is None:
            return None
        del self.times[part["shard"]]
        return {**row, "timings": times.seconds, "teacher_begin": times.begin, "teacher_end": times.end}


def ms_per_image(timings: Mapping[str, float], images: int) -> dict[str, float]:
    """Milliseconds per image of each summed timing, by role (`t_teacher` -> `teacher`)."""
    return {name.removeprefix("t_"): 1000 * seconds / max(1, images) for name, seconds in timings.items()}
