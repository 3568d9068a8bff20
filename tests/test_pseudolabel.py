"""Pseudo-labeling end to end: real Ray Data, real WebDataset shards, real MLflow; resume after a kill."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import webdataset as wds
from mlflow.tracking import MlflowClient

from presets import SHAPES
from xpl.config import load_config
from xpl.data import rle
from xpl.data.captions import iter_caption_samples
from xpl.data.shapes import synthesize
from xpl.pseudo import manifest
from xpl.stages.pseudolabel import run_pseudolabel
from xpl.tracking import RUN_KEY_TAG

REPO = Path(__file__).resolve().parents[1]


def pl_config(world: Path, out: Path, teacher: Path, *overrides: str):
    return load_config(SHAPES, [
        f"data.root={world}", "data.image_size=64", f"output_dir={out}", f"pseudolabel.teacher={teacher}",
        f"tracking.uri=sqlite:///{out}/mlflow.db", "pseudolabel.batch_size=4", "pseudolabel.visualize=3", *overrides,
    ])


def input_keys(shards: list[Path]) -> dict[str, dict[str, bytes]]:
    """key -> {suffix: bytes} of every sample in the input shards."""
    samples: dict[str, dict[str, bytes]] = {}
    for path in shards:
        with tarfile.open(path) as tar:
            for info in tar:
                key, suffix = info.name.split(".", 1)
                samples.setdefault(key, {})[suffix] = tar.extractfile(info).read()
    return samples


def manifest_keys(out: Path) -> list[str]:
    paths = sorted((out / "manifest").glob("*.jsonl"))
    return [json.loads(line)["key"] for p in paths for line in p.read_text().splitlines()]


def output_keys(out: Path) -> list[str]:
    keys = []
    for p in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(p) as tar:
            keys += [m.name.split(".", 1)[0] for m in tar if m.name.endswith(".pseudo.json")]
    return keys


@pytest.mark.e2e
def test_pseudolabel_end_to_end_and_rerun_is_a_no_op(shapes_world, ray_session, random_teacher, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    cfg = pl_config(shapes_world, tmp_path, random_teacher)
    totals = run_pseudolabel(cfg)
    out = Path(cfg.pseudolabel.output)
    inputs = input_keys(sorted((shapes_world / "captions").glob("*.tar")))

    # accounting: every input key exactly once, statuses add up
    assert sorted(manifest_keys(out)) == sorted(inputs)
    assert totals["samples"] == len(inputs) == 40 and totals["duplicate_keys"] == 0
    assert totals["labeled"] + totals["no_match"] + totals["rejected"] == 40
    assert totals["rejected"] == 0 and totals["labeled"] > 0 and totals["unfinished_shards"] == 0
    assert totals["run"]["samples"] == 40 and totals["run"]["images_per_s"] > 0
    assert "ms_per_image" not in totals["run"]  # timings only when profiled

    # output: loadable with webdataset, original bytes unchanged, pseudo.json well formed
    urls = [str(p) for p in sorted((out / "shards").glob("*.tar"))]
    seen = 0
    for sample in wds.WebDataset(urls, shardshuffle=False):
        key = sample["__key__"]
        assert sample["jpg"] == inputs[key]["jpg"] and sample["txt"] == inputs[key]["txt"]
        assert sample["json"] == inputs[key]["json"]
        pseudo = json.loads(sample["pseudo.json"])
        assert pseudo["key"] == key and pseudo["caption"] == inputs[key]["txt"].decode()
        assert (pseudo["width"], pseudo["height"]) == (64, 64) and pseudo["instances"]
        mentioned = {m["category"] for m in json.loads(inputs[key]["json"])["xpl"]["mentions"]}
        for inst in pseudo["instances"]:
            assert inst["name"] in mentioned and inst["phrase"] in pseudo["caption"]
            assert rle.decode(inst["segmentation"], 64, 64).sum() == inst["area"] > 0
            assert len(inst["bbox"]) == 4 and 0.5 <= inst["mask_score"] <= 1
            assert {"name", "phrase", "align_score"} <= set(inst)
        seen += 1
    assert seen == totals["labeled"] == len(output_keys(out))
    student_reads = iter_caption_samples(urls, pseudo=True)  # the student's reader takes every labeled sample
    assert sum(len(s["pseudo"].category_ids) for s in student_reads) == totals["instances"]
    assert student_reads.yielded == seen and not student_reads.skipped

    # MLflow: params, counts, throughput, histogram and pictures
    client = MlflowClient(cfg.tracking.uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    (run,) = client.search_runs([exp.experiment_id], f"tags.`{RUN_KEY_TAG}` = '{cfg.run_name}/pseudolabel'")
    assert run.data.metrics["labeled"] == totals["labeled"] and run.data.metrics["images_per_s"] > 0
    assert not [m for m in run.data.metrics if m.startswith("ms_per_image.")]
    assert run.data.params["pseudolabel.batch_size"] == "4"
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id, "pseudolabel")}
    assert {"pseudolabel/align_scores_hist.png", "pseudolabel/examples", "pseudolabel/summary.json"} <= artifacts
    assert len(client.list_artifacts(run.info.run_id, "pseudolabel/examples")) == 3

    # quality against the shapes world's truth: every decoded sample judged, reported everywhere
    quality = totals["quality"]
    assert quality["samples"] == 40 and quality["truth_errors"] == 0
    assert quality["splits"]["all"]["instances"] == totals["instances"]
    assert 0 < quality["splits"]["all"]["present"] and 0 <= quality["splits"]["all"]["precision"] <= 1
    assert json.loads((out / "summary.json").read_text())["quality"]["samples"] == 40
    assert run.data.metrics["quality.all.precision"] == quality["splits"]["all"]["precision"]
    assert {"pseudolabel/gallery.html", "pseudolabel/quality_curve.png", "pseudolabel/quality.json"} <= artifacts
    page = (out / "report" / "gallery.html").read_text()
    pictures = re.findall(r'src="(gallery/[^"]+)"', page)
    assert pictures and all((out / "report" / p).is_file() for p in pictures)

    # small blocks through two writers, profiled: many parts per shard, joined in input order into the same
    # bytes; every role's time reported
    two = pl_config(shapes_world, tmp_path / "two", random_teacher, "pseudolabel.num_writers=2",
                    "pseudolabel.block_rows=3", "pseudolabel.profile=true")
    roles = run_pseudolabel(two)["run"]["ms_per_image"]
    assert set(roles) == {"read", "decode", "teacher", "teacher_cpu", "teacher_process_cpu", "writer",
                          "writer_process_cpu", "assemble"}
    assert all(ms > 0 for ms in roles.values()), roles
    two_out = Path(two.pseudolabel.output)
    for sub in ("shards", "manifest"):
        names = sorted(p.name for p in (out / sub).iterdir())
        assert names == sorted(p.name for p in (two_out / sub).iterdir()) and names
        assert all((two_out / sub / n).read_bytes() == (out / sub / n).read_bytes() for n in names)
    assert not list((two_out / "tmp").iterdir())
    written = output_keys(out)
    labeled = set(written)
    assert written == [k for k in inputs if k in labeled]  # input order (dicts keep insertion order)

    # a second run finds everything done and touches nothing
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*.*") if p.parent.name in ("shards", "manifest")}
    again = run_pseudolabel(cfg)
    assert again["run"]["shards"] == 0 and again["labeled"] == totals["labeled"]
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}


@pytest.mark.e2e
def test_killed_run_resumes_without_redoing_or_duplicating(ray_session, random_teacher, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    import ray

    world = tmp_path / "world"
    synthesize(world, seed=3, train_images=1, caption_images=36, val_images=1, shard_size=3, image_size=64)
    cfg_args = [f"data.root={world}", "data.image_size=64", f"output_dir={tmp_path}",
                f"pseudolabel.teacher={random_teacher}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                "pseudolabel.batch_size=2", "pseudolabel.visualize=0"]
    out = tmp_path / "pseudo"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    t0 = time.monotonic()
    job = subprocess.Popen([sys.executable, str(REPO / "jobs" / "pseudolabel.py"), "--config", str(SHAPES), *cfg_args],
                           env=env, cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300  # the first shard only: generous for a busy 2-core machine
        while not list((out / "manifest").glob("*.jsonl")) and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.05)
        os.killpg(job.pid, signal.SIGKILL)  # the job's own process group only
    finally:
        job.wait()
    done_at_kill = sorted(p.stem for p in (out / "manifest").glob("*.jsonl"))
    print(f"{len(done_at_kill)} of 12 shards done at the kill after {time.monotonic() - t0:.1f} s")
    assert 1 <= len(done_at_kill) < 12, "the kill should land mid-run"
    finished = {n: (manifest.shard_path(out, n).stat().st_mtime_ns, manifest.manifest_path(out, n).stat().st_mtime_ns)
                for n in done_at_kill}

    cfg = pl_config(world, tmp_path, random_teacher, "pseudolabel.batch_size=2", "pseudolabel.visualize=0")
    totals = run_pseudolabel(cfg)
    print(f"resumed run took {time.monotonic() - t0:.1f} s")
    assert totals["run"]["shards"] == 12 - len(done_at_kill)  # finished shards were not redone
    assert {n: (manifest.shard_path(out, n).stat().st_mtime_ns, manifest.manifest_path(out, n).stat().st_mtime_ns)
            for n in done_at_kill} == finished
    inputs = input_keys(sorted((world / "captions").glob("*.tar")))
    keys = manifest_keys(out)
    assert sorted(keys) == sorted(inputs) and len(keys) == 36 and totals["duplicate_keys"] == 0
    written = output_keys(out)
    assert len(written) == len(set(written)) == totals["labeled"]
    assert not list((out / "tmp").iterdir())


def test_plan_names_colliding_shards_apart():
    tasks = manifest.plan_shards(["a/00000.tar", "b/00000.tar", "b/00001.tar.gz"])
    names = [t.name for t in tasks]
    assert len(set(names)) == 3 and names[2] == "00001" and names[0].startswith("00000-")


def test_make_shards_from_coco_captions_feeds_the_pipeline(shapes_world, tmp_path):
    from xpl.data.captions import expand_urls
    from xpl.data.make_shards import make_coco_caption_shards
    from xpl.pseudo.decode import decode_sample
    from xpl.pseudo.source import ShardTask, read_shard
    from xpl.vocab import Vocabulary

    coco = json.loads((shapes_world / "coco" / "instances_val.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    captions = {"images": coco["images"], "annotations": []}
    for i, image in enumerate(coco["images"][:-1]):  # the last image has no caption
        objects = [names[a["category_id"]] for a in coco["annotations"] if a["image_id"] == image["id"]]
        captions["annotations"] += [{"id": 2 * i, "image_id": image["id"], "caption": f"a {objects[0]} on grey"},
                                    {"id": 2 * i + 1, "image_id": image["id"], "caption": "an abstract picture"}]
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    summary = make_coco_caption_shards(shapes_world / "coco" / "val", tmp_path / "captions.json", tmp_path / "shards",
                                       shard_size=5)
    n = len(coco["images"]) - 1
    assert summary["samples"] == n and summary["no_caption"] == 1 and summary["shards"] == -(-n // 5)
    assert (tmp_path / "shards" / "00000_stats.json").is_file() and (tmp_path / "shards" / "00000.parquet").is_file()

    urls = expand_urls(str(tmp_path / "shards"))  # side files beside the tars are ignored
    assert [Path(u).name for u in urls] == [f"{i:05d}.tar" for i in range(summary["shards"])]
    vocab = Vocabulary.load(shapes_world / "vocab.json")
    rows = [r for block in read_shard(ShardTask(urls[0], "00000")) for r in block.to_pylist()]
    first = rows[0]
    image = coco["images"][0]
    assert first["image"] == (shapes_world / "coco" / "val" / image["file_name"]).read_bytes()
    assert first["txt"].decode().splitlines()[1] == "an abstract picture"
    members = {first["image_name"]: first["image"], "txt": first["txt"]}
    decoded = decode_sample(members, vocab=vocab, max_pixels=10**6, image_size=64)
    assert decoded.status == "pending" and decoded.words and (decoded.width, decoded.height) == (64, 64)
    assert rows[-1]["kind"] == "end" and rows[-1]["count"] == 5
