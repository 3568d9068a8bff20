"""Writer parts joined into output shards: byte-exact tar joining and the driver's assembly rules."""

from __future__ import annotations

import json
import random
import tarfile

from xpl.data.tar_writer import AtomicTar, join_tars
from xpl.pseudo import manifest
from xpl.pseudo.assemble import ShardAssembler

SAMPLES = [(f"k{i}", {"png": bytes([i]) * (300 + 611 * i), "txt": f"caption {i}".encode()}) for i in range(7)]


def write_tar(path, samples) -> str:
    with AtomicTar(path) as tar:
        for key, members in samples:
            tar.write(key, members)
    return str(path)


def test_joined_parts_are_the_bytes_of_one_writer(tmp_path):
    whole = write_tar(tmp_path / "whole.tar", SAMPLES)
    chunks = [SAMPLES[:2], [], SAMPLES[2:3], SAMPLES[3:]]
    parts = [write_tar(tmp_path / f"part{i}.tar", chunk) for i, chunk in enumerate(chunks)]
    joined = join_tars(parts, tmp_path / "out" / "joined.tar", tmp_path / "tmp" / "joined.tar")
    assert joined.read_bytes() == (tmp_path / "whole.tar").read_bytes()
    assert not (tmp_path / "tmp" / "joined.tar").exists()
    assert join_tars([], tmp_path / "empty.tar", tmp_path / "tmp" / "empty.tar").read_bytes() == bytes(10240)
    with tarfile.open(whole) as tar:
        assert len(tar.getmembers()) == 2 * len(SAMPLES)


def part(out, first: int, samples, *, expected=None, failure=None) -> dict:
    """A writer's part row: its samples written as the writer would, one manifest record per sample."""
    tar = None
    if samples:
        tar = write_tar(manifest.tmp_dir(out) / "s" / f"{first:012d}.tar", samples)
    records = [{"key": key, "status": "labeled", "instances": 1} for key, _ in samples]
    return {"shard": "s", "url": "in/s.tar", "first": first, "tar": tar, "records": json.dumps(records),
            "expected": expected, "failure": failure}


def test_assembler_joins_a_shard_in_row_order_whatever_the_arrival(tmp_path):
    manifest.prepare_output(tmp_path)
    parts = [part(tmp_path, 0, SAMPLES[:3]), part(tmp_path, 3, SAMPLES[3:5]),
             part(tmp_path, 5, SAMPLES[5:], expected=7)]
    random.Random(0).shuffle(parts)
    assembler = ShardAssembler(tmp_path)
    rows = [assembler.add(p) for p in parts]
    assert rows[:2] == [None, None] and not assembler.open
    row = rows[2]
    assert (row["samples"], row["labeled"], row["no_match"], row["rejected"], row["instances"]) == (7, 7, 0, 0, 7)
    assert row["failure"] is None
    assert manifest.shard_path(tmp_path, "s").read_bytes() == open(write_tar(tmp_path / "w.tar", SAMPLES), "rb").read()
    assert [r["key"] for r in manifest.read_manifest(tmp_path, "s")] == [k for k, _ in SAMPLES]
    assert not list(manifest.tmp_dir(tmp_path).iterdir())


def test_a_shard_is_not_done_before_all_its_rows_and_is_dropped_when_its_reader_failed(tmp_path):
    manifest.prepare_output(tmp_path)
    assembler = ShardAssembler(tmp_path)
    end = part(tmp_path, 2, SAMPLES[2:4], expected=4, failure="read_error: OSError")
    assert assembler.add(end) is None  # rows 0-1 still missing
    assert list(assembler.open) == ["s"] and not manifest.is_done(tmp_path, "s")
    failed = assembler.add(part(tmp_path, 0, SAMPLES[:2]))
    assert failed["failure"] == "read_error: OSError" and failed["samples"] == 4 and "labeled" not in failed
    assert not manifest.is_done(tmp_path, "s") and not manifest.shard_path(tmp_path, "s").exists()
    assert not list(manifest.tmp_dir(tmp_path).iterdir())
