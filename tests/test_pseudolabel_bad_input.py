"""Bad input never stops the job and never vanishes: each case becomes a rejected record with its reason."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import fsspec
import pytest
from omegaconf import OmegaConf
from PIL import Image

from presets import SHAPES
from xpl.config import PseudoLabelConfig, load_config
from xpl.pseudo import manifest
from xpl.pseudo.assemble import ShardAssembler
from xpl.pseudo.choice import RegionChoice
from xpl.pseudo.decode import decode_sample
from xpl.pseudo.source import ShardTask, read_shard
from xpl.pseudo.writer import ShardWriter
from xpl.data.tar_records import iter_tar_records
from xpl.stages.pseudolabel import run_pseudolabel
from xpl.vocab import Vocabulary


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb's signature."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def tar_of(members: list[tuple[str, bytes]]) -> tuple[bytes, list[int]]:
    """Tar bytes and the offset where each member's data ends (padded to 512)."""
    buf = io.BytesIO()
    ends = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            ends.append(buf.tell())
    return buf.getvalue(), ends


def good(world: Path, index: int) -> dict[str, bytes]:
    with tarfile.open(world / "captions" / "00000.tar") as tar:
        return {s: tar.extractfile(f"{index:09d}.{s}").read() for s in ("jpg", "json", "txt")}


def sample(key: str, **members: bytes) -> list[tuple[str, bytes]]:
    return [(f"{key}.{suffix}", data) for suffix, data in sorted(members.items())]


# key -> (status, reason kind) for every record the bad shards hold
EXPECTED = {
    "a0": ("labeled", ""), "a1": ("rejected", "corrupt_image"), "a2": ("rejected", "missing_caption"),
    "a3": ("rejected", "empty_caption"), "a4": ("rejected", "caption_not_utf8"), "a5": ("rejected", "too_many_pixels"),
    "a6": ("rejected", "too_many_pixels"), "a7": ("rejected", "missing_image"), "a8": ("no_match", "no_vocab_words"),
    "README": ("rejected", "not_a_sample_member"), "a9": ("labeled", ""),
    "b0": ("labeled", ""), "b1": ("labeled", ""), "b2": ("rejected", "truncated_tar"),
    "c0": ("labeled", ""), "c1": ("labeled", ""), "00002/__tail__": ("rejected", "truncated_tar"),
    "00003/__shard__": ("rejected", "not_a_tar"), "00004/__shard__": ("rejected", "not_a_tar"),
}


@pytest.fixture(scope="module")
def bad_shards(shapes_world, tmp_path_factory) -> Path:
    """An img2dataset-style folder (with *_stats.json and *.parquet side files) of damaged shards."""
    folder = tmp_path_factory.mktemp("bad") / "cc"
    folder.mkdir()
    g = [good(shapes_world, i) for i in range(8)]
    big = io.BytesIO()
    Image.new("RGB", (8000, 6000)).save(big, "PNG")  # a real 48 Mpx image, over the 40 Mpx default
    members = (
        sample("a0", **g[0]) + sample("a1", jpg=g[1]["jpg"][: len(g[1]["jpg"]) // 2], txt=g[1]["txt"])
        + sample("a2", jpg=g[2]["jpg"], json=g[2]["json"]) + sample("a3", jpg=g[3]["jpg"], txt=b"  \n ")
        + sample("a4", jpg=g[4]["jpg"], txt=b"a red circle \xff\xfe")
        + sample("a5", png=png_header(100_000, 100_000), txt=b"a circle")
        + sample("a6", png=big.getvalue(), txt=b"a circle") + sample("a7", txt=b"a circle")
        + sample("a8", jpg=g[5]["jpg"], txt=b"nothing to see here") + [("README", b"hello")] + sample("a9", **g[6])
    )
    (folder / "00000.tar").write_bytes(tar_of(members)[0])
    data, ends = tar_of(sample("b0", **g[0]) + sample("b1", **g[1]) + sample("b2", **g[2]))
    (folder / "00001.tar").write_bytes(data[: ends[-3] - 700])  # cut inside b2's .jpg
    data, ends = tar_of(sample("c0", **g[3]) + sample("c1", **g[4]))
    (folder / "00002.tar").write_bytes(data[: ends[-1]])  # cut exactly after a member: no end blocks
    (folder / "00003.tar").write_bytes(b"this is not a tar archive " * 40)
    (folder / "00004.tar").write_bytes(b"")
    (folder / "00000_stats.json").write_text(json.dumps({"count": 11}))
    (folder / "00000.parquet").write_bytes(b"PAR1 not really")
    return folder


def test_tar_reader_turns_damage_into_records(bad_shards):
    def records(name):
        with open(bad_shards / name, "rb") as f:
            return [(r.key, (r.error or "").split(":")[0]) for r in iter_tar_records(f)]

    assert [k for k, _ in records("00000.tar")] == [*(f"a{i}" for i in range(9)), "README", "a9"]
    assert records("00001.tar") == [("b0", ""), ("b1", ""), ("b2", "truncated_tar")]
    assert records("00002.tar") == [("c0", ""), ("c1", ""), ("__tail__", "truncated_tar")]
    assert records("00003.tar") == [("__shard__", "not_a_tar")]
    assert records("00004.tar") == [("__shard__", "not_a_tar")]


def test_decode_reasons(shapes_world, bad_shards):
    vocab = Vocabulary.load(shapes_world / "vocab.json")
    with open(bad_shards / "00000.tar", "rb") as f:
        got = {r.key: decode_sample(r.members, vocab=vocab, max_pixels=40_000_000, image_size=64)
               for r in iter_tar_records(f) if not r.error}
    verdicts = {k: (d.status if d.status != "pending" else "labeled", manifest.reason_kind(d.reason))
                for k, d in got.items()}
    assert verdicts == {k: v for k, v in EXPECTED.items() if k in got}
    assert "100000x100000" in got["a5"].reason or "pixels" in got["a5"].reason
    assert got["a0"].pixels.shape == (64, 64, 3) and got["a0"].words


def test_duplicate_keys_and_oversized_members_are_rejected(shapes_world):
    g = good(shapes_world, 0)
    data, _ = tar_of(sample("k", **g) + sample("m", **g) + sample("k", **g))
    keys = [(r.key, (r.error or "").split(":")[0]) for r in iter_tar_records(io.BytesIO(data), max_member_bytes=10**6)]
    assert keys == [("k", ""), ("m", ""), ("k#2", "duplicate_key")]
    small = [(r.key, (r.error or "").split(":")[0]) for r in iter_tar_records(io.BytesIO(data), max_member_bytes=100)]
    assert small[0] == ("k", "member_too_large")


def test_reader_takes_fsspec_urls(shapes_world):
    fs = fsspec.filesystem("memory")
    fs.pipe("/xpl-test/00000.tar", (shapes_world / "captions" / "00000.tar").read_bytes())
    rows = [r for b in read_shard(ShardTask("memory:///xpl-test/00000.tar", "00000")) for r in b.to_pylist()]
    assert len(rows) == 11 and rows[-1]["kind"] == "end" and rows[-1]["count"] == 10 and rows[-1]["reason"] is None
    assert all(r["status"] == "pending" and r["image"] for r in rows[:-1])


class Broken(io.RawIOBase):
    """A stream that fails with `error` after `after` bytes."""

    def __init__(self, data: bytes, after: int, error: Exception) -> None:
        self.data, self.after, self.error, self.pos = data, after, error, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.pos >= self.after:
            raise self.error
        chunk = self.data[self.pos : min(self.after, self.pos + len(buffer))]
        buffer[: len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)


@pytest.mark.parametrize("error", [ConnectionResetError("connection reset"), ValueError("a bug")])
def test_only_truncation_is_a_verdict_other_errors_are_raised(shapes_world, error):
    """An I/O error or a bug in the middle of a shard is no verdict on the data: it must reach the caller,
    not become a `truncated_tar` record (final, never retried)."""
    data = (shapes_world / "captions" / "00000.tar").read_bytes()
    stream = io.BufferedReader(Broken(data, len(data) // 2, error))
    with pytest.raises(type(error), match=str(error)):
        list(iter_tar_records(stream))
    cut = [(r.key, (r.error or "").split(":")[0]) for r in iter_tar_records(io.BytesIO(data[: len(data) // 2]))]
    assert cut[-1][1] == "truncated_tar" and all(not e for _, e in cut[:-1])


def test_a_shard_whose_read_fails_gets_no_manifest_and_is_redone(shapes_world, stream_shard, tmp_path):
    data = (shapes_world / "captions" / "00000.tar").read_bytes()

    def write(url: str) -> dict:
        """Blocks through the writer, the last (with the end row) first; the driver's assembler joins them."""
        choice = RegionChoice.from_config(OmegaConf.structured(PseudoLabelConfig))
        writer, assembler = ShardWriter(str(tmp_path), choice), ShardAssembler(tmp_path)
        parts = [part for block in read_shard(ShardTask(url, "00000"), block_rows=4) for part in writer(block).to_pylist()]
        rows = [assembler.add(part) for part in reversed(parts)]
        assert all(row is None for row in rows[:-1]) and not assembler.open
        return rows[-1]

    manifest.prepare_output(tmp_path)
    failed = write(stream_shard("00000.tar", data, fail_after=len(data) // 2))
    assert failed["failure"].startswith("read_error: ConnectionResetError")
    assert not manifest.is_done(tmp_path, "00000") and not manifest.shard_path(tmp_path, "00000").exists()
    assert not list(manifest.tmp_dir(tmp_path).iterdir())
    missing = write("memory:///xpl-test/missing.tar")
    assert missing["failure"].startswith("read_error: FileNotFoundError") and missing["samples"] == 0
    assert not manifest.is_done(tmp_path, "00000")
    done = write(stream_shard("00000.tar", data))
    assert done["failure"] is None and done["samples"] == 10 and manifest.is_done(tmp_path, "00000")


@pytest.mark.e2e
def test_job_survives_bad_input_and_accounts_for_all_of_it(shapes_world, bad_shards, ray_session, tmp_path,
                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    import torch

    from xpl.model.checkpoint import export_model
    from xpl.model.detector import OpenVocabMaskRCNN

    torch.manual_seed(0)
    teacher = export_model(OpenVocabMaskRCNN(embed_dim=384, image_size=64), tmp_path / "teacher.pt")
    cfg = load_config(SHAPES, [
        f"data.root={shapes_world}", "data.image_size=64", f"output_dir={tmp_path}", f"pseudolabel.teacher={teacher}",
        f"pseudolabel.input={bad_shards}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "pseudolabel.visualize=1",
    ])
    totals = run_pseudolabel(cfg)
    out = Path(cfg.pseudolabel.output)
    records = {r["key"]: (r["status"], manifest.reason_kind(r["reason"]))
               for name in ("00000", "00001", "00002", "00003", "00004") for r in manifest.read_manifest(out, name)}
    # an untrained teacher may find no region for a word: labeled or no_match are both fine for good samples
    relaxed = {k: ("labeled", "") if v[0] == "no_match" and v[1] != "no_vocab_words" else v for k, v in records.items()}
    assert relaxed == EXPECTED
    assert totals["samples"] == len(EXPECTED) and totals["duplicate_keys"] == 0 and totals["unfinished_shards"] == 0
    assert totals["rejected"] == sum(1 for s, _ in EXPECTED.values() if s == "rejected")
    assert totals["reasons"]["rejected"]["truncated_tar"] == 2 and totals["reasons"]["rejected"]["too_many_pixels"] == 2
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"0000{i}.tar" for i in range(5)]


@pytest.mark.e2e
def test_ray_read_webdataset_still_fails_the_whole_dataset_on_a_truncated_tar(bad_shards, shapes_world, ray_session):
    """Why `xpl.pseudo.source` exists: on Ray 2.60 one cut shard fails `read_webdataset` for every shard.
    When this test fails, Ray survives truncated tars and the custom datasource may be reconsidered."""
    import ray

    good = str(shapes_world / "captions" / "00000.tar")
    with pytest.raises(Exception, match="unexpected end of data"):
        ray.data.read_webdataset([good, str(bad_shards / "00001.tar")], decoder=None).take_all()
    assert len(ray.data.read_webdataset([good], decoder=None).take_all()) == 10
