"""The Ray Data pipeline: read shards -> decode (CPU tasks) -> teacher (actor pool) -> label and write.

    read_datasource(CaptionShardDatasource)   one read task per shard, raw bytes, nothing decoded
      .map_batches(decode_batch)               CPU tasks, fused with the read by Ray Data: validate,
                                               match caption, decode, resize
      .map_batches(Teacher, ActorPoolStrategy) model.regions + top-1 region per word (num_gpus/cpus
                                               and custom resources per actor from config): only
                                               model work in the actor; out go the chosen regions'
                                               boxes, scores and mask tiles; rows record its node id
      .map_batches(ShardWriter, actor pool)    paste, binarise, RLE, pseudo.json, judge against truth,
                                               one tar part + manifest records per shard and block
    driver: ShardAssembler                     joins a shard's parts when all its rows have passed,
                                               writes its manifest; yields one row per finished shard

Blocks stay whole from the reader to the writer (`batch_size=None`: one call per block, `block_rows`
rows); the teacher runs the model on `batch_size` images at a time inside a block. Rows cross stages
as Arrow columns only (`xpl.pseudo.rows`): no per-row json, npz or pickled tensors.

Why per-shard accounting, not `write_webdataset`: resume needs to know which input shards are
complete, and Ray's writers name files per block, not per input shard. Each input shard maps to one
output shard + manifest; the reader ends every shard with an "end" row that carries its row count,
so the driver can assemble a shard as soon as all its rows (which may arrive in any order, from any
writer, interleaved with other shards) have been written. The pipeline streams: memory is bounded by
Ray Data's per-operator budgets, and only one small row per part reaches the driver. Writers are a
pool of `num_writers` actors (each pastes, encodes and writes; docs/benchmarks.md has their cost),
pinned to the driver's node, which assembles their parts from its local disk:
a local output folder works on a cluster as long as the driver's node can hold it.

`profile=True` runs the same stages timed (`PROFILED`, from `xpl.pseudo.profile`): their rows then carry
timing columns, and each finished shard's row its timings; by default (`PLAIN`) no row carries any.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import ray

from xpl.pseudo.assemble import ShardAssembler
from xpl.pseudo.choice import RegionChoice
from xpl.pseudo.decode import decode_batch
from xpl.pseudo.profile import (ProfiledAssembler, ProfiledShardWriter, ProfiledTeacher, timed_decode_batch,
                                timed_read_shard)
from xpl.pseudo.source import CaptionShardDatasource, ReadShard, ShardTask, read_shard
from xpl.pseudo.teacher_actor import Teacher
from xpl.pseudo.writer import ShardWriter
from xpl.vocab import Vocabulary


@dataclass(frozen=True)
class Stages:
    """The callables the pipeline is built from: the shard reader, the decode function, the teacher and writer
    classes (Ray Data callable classes) and the driver's assembler."""

    read: ReadShard
    decode: Callable[..., Any]
    teacher: type[Teacher]
    writer: type[ShardWriter]
    assembler: type[ShardAssembler]


PLAIN = Stages(read_shard, decode_batch, Teacher, ShardWriter, ShardAssembler)
PROFILED = Stages(timed_read_shard, timed_decode_batch, ProfiledTeacher, ProfiledShardWriter, ProfiledAssembler)


@dataclass(frozen=True)
class Settings:
    """How the pipeline runs (how caption words choose regions is the `RegionChoice`): the resources and block
    sizes of `PseudoLabelConfig` (their defaults live there only). `threads_per_actor` 0 in the config becomes
    the actor's CPUs rounded (at least 1)."""

    num_actors: int
    batch_size: int
    num_gpus_per_actor: float
    num_cpus_per_actor: float
    num_cpus_per_task: float
    actor_resources: Mapping[str, float]
    threads_per_actor: int
    image_size: int
    max_pixels: int
    num_writers: int
    block_rows: int

    @classmethod
    def from_config(cls, pl: Any) -> "Settings":
        values = {name: pl[name] for name in cls.__dataclass_fields__ if name in pl}
        values["actor_resources"] = dict(values.get("actor_resources") or {})
        values["threads_per_actor"] = pl.threads_per_actor or max(1, int(round(pl.num_cpus_per_actor)))
        return cls(**values)


def build_dataset(
    shards: list[ShardTask],
    *,
    output: str,
    teacher: str,
    vocab: Vocabulary,
    class_embeddings: np.ndarray,
    choice: RegionChoice,
    settings: Settings,
    profile: bool = False,
) -> "ray.data.Dataset":
    """The lazy dataset of writer parts (`PART_SCHEMA` rows); iterating it runs the job. `profile`: timed stages."""
    from ray.data import ActorPoolStrategy

    stages = PROFILED if profile else PLAIN
    vocab_json = vocab.to_json()
    digest = hashlib.sha1(json.dumps(vocab_json, sort_keys=True).encode()).hexdigest()
    cpu = settings.num_cpus_per_task
    ds = ray.data.read_datasource(CaptionShardDatasource(shards, settings.block_rows, stages.read), num_cpus=cpu,
                                  override_num_blocks=len(shards))
    ds = ds.map_batches(
        stages.decode, batch_format="pyarrow", batch_size=None, num_cpus=cpu,
        fn_kwargs={"vocab": vocab_json, "vocab_digest": digest, "max_pixels": settings.max_pixels,
                   "image_size": settings.image_size},
    )
    ds = ds.map_batches(
        stages.teacher, batch_format="pyarrow", batch_size=None,
        compute=ActorPoolStrategy(size=settings.num_actors),
        num_cpus=settings.num_cpus_per_actor, num_gpus=settings.num_gpus_per_actor,
        resources=dict(settings.actor_resources) or None,
        fn_constructor_kwargs={
            "teacher": teacher, "class_ids": vocab.ids, "class_embeddings": class_embeddings, "choice": choice,
            "batch_size": settings.batch_size, "threads_per_actor": settings.threads_per_actor,
            "use_gpu": settings.num_gpus_per_actor > 0,
        },
    )
    here = ray.get_runtime_context().get_node_id()
    return ds.map_batches(
        stages.writer, batch_format="pyarrow", batch_size=None, compute=ActorPoolStrategy(size=settings.num_writers),
        num_cpus=cpu, fn_constructor_kwargs={"output": output, "choice": choice,
                                              "ids_by_name": {c.name: c.id for c in vocab.categories}},
        label_selector={"ray.io/node-id": here},  # writers run on the driver's node (it assembles their parts)
    )


def run_shards(shards: list[ShardTask], *, output: str, profile: bool = False,
               **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Run the pipeline over `shards`; yield each finished shard's row (`ShardAssembler.add`; profiled, with its
    timings: `xpl.pseudo.profile.ProfiledAssembler`) as it completes."""
    if not shards:
        return
    assembler = (PROFILED if profile else PLAIN).assembler(output)
    dataset = build_dataset(shards, output=output, profile=profile, **kwargs)
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        for part in batch.to_pylist():
            finished = assembler.add(part)
            if finished is not None:
                yield finished
    if assembler.open:
        raise RuntimeError(f"pseudo-labeling ended with shards missing rows (left unfinished for the next run): "
                           f"{sorted(assembler.open)}")
