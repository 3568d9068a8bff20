"""The timing layer (`xpl.pseudo.profile`): the plain stages' rows carry no timing column; the profiled
stages add positive timings per role and write the same bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from presets import SHAPES
from xpl.config import load_config
from xpl.pseudo import manifest, rows
from xpl.pseudo.choice import RegionChoice
from xpl.pseudo.dataflow import PLAIN, PROFILED, Stages
from xpl.pseudo.profile import (PROFILED_PART_SCHEMA, PROFILED_RESULT_SCHEMA, PROFILED_SAMPLE_SCHEMA,
                                ms_per_image)
from xpl.pseudo.source import ShardTask
from xpl.text import text_encoder
from xpl.vocab import Vocabulary


def run_stages(stages: Stages, world: Path, teacher: Path, out: Path) -> tuple[list[pa.Schema], dict[str, Any]]:
    """One shard through `stages` in this process, in blocks of 4 rows, as the pipeline chains them: the schemas
    each stage returned (read, decode, teacher, writer) and the shard's finished row."""
    cfg = load_config(SHAPES, [f"data.root={world}", "data.image_size=64"])
    vocab = Vocabulary.load(world / "vocab.json")
    embeddings = text_encoder(cfg.text.model).embed(vocab.names)
    choice = RegionChoice.from_config(cfg.pseudolabel, embeddings, cfg.model.logit_scale)
    model = stages.teacher(teacher=str(teacher), class_ids=vocab.ids, class_embeddings=embeddings.numpy(),
                           choice=choice, batch_size=4, threads_per_actor=1)
    writer = stages.writer(output=str(out), choice=choice, ids_by_name={c.name: c.id for c in vocab.categories})
    assembler = stages.assembler(out)
    manifest.prepare_output(out)
    schemas: set[tuple[pa.Schema, ...]] = set()
    finished = []
    for block in stages.read(ShardTask(str(world / "captions" / "00000.tar"), "00000"), 4):
        decoded = stages.decode(block, vocab=vocab.to_json(), vocab_digest="test", max_pixels=10**6, image_size=64)
        labeled = model(decoded)
        parts = writer(labeled)
        schemas.add((block.schema, decoded.schema, labeled.schema, parts.schema))
        finished += [row for part in parts.to_pylist() if (row := assembler.add(part)) is not None]
    (one,) = schemas
    (row,) = finished
    return list(one), row


def test_plain_rows_carry_no_timings_and_profiled_ones_time_every_role(shapes_world, random_teacher, ray_session,
                                                                      tmp_path):
    plain_schemas, plain = run_stages(PLAIN, shapes_world, random_teacher, tmp_path / "plain")
    assert plain_schemas == [rows.SAMPLE_SCHEMA, rows.SAMPLE_SCHEMA, rows.RESULT_SCHEMA, rows.PART_SCHEMA]
    names = {name for schema in plain_schemas for name in schema.names}
    assert not {n for n in names if n.startswith("t_") or n in ("teacher_begin", "teacher_end", "timings")}
    assert "teacher_node" in names and set(plain) == {"shard", "url", "samples", "failure", *rows.STATUSES,
                                                      "instances"}

    profiled_schemas, profiled = run_stages(PROFILED, shapes_world, random_teacher, tmp_path / "profiled")
    assert profiled_schemas == [PROFILED_SAMPLE_SCHEMA, PROFILED_SAMPLE_SCHEMA, PROFILED_RESULT_SCHEMA,
                                PROFILED_PART_SCHEMA]
    roles = ms_per_image(profiled["timings"], profiled["samples"])
    assert set(roles) == {"read", "decode", "teacher", "teacher_cpu", "teacher_process_cpu", "writer",
                          "writer_process_cpu", "assemble"}
    assert all(ms > 0 for ms in roles.values()), roles
    assert profiled["teacher_begin"] < profiled["teacher_end"]
    assert {k: v for k, v in profiled.items() if k not in ("timings", "teacher_begin", "teacher_end")} == plain
    for path in (manifest.shard_path, manifest.manifest_path):
        assert path(tmp_path / "profiled", "00000").read_bytes() == path(tmp_path / "plain", "00000").read_bytes()
