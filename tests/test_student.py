"""The student stage: its reader of pseudo-labeled shards, its targets, and whole runs through real Ray Train +
DeepSpeed (2 workers) and a real MLflow store, including one in which a training worker is killed.

The pseudo-labeled shards here are written in stage 3's format from the shapes world's truth (a perfect
teacher), so the reader and the student see real WebDataset shards without a teacher run first.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from stage_runs import stage_runs
from presets import SHAPES
from xpl.config import load_config
from xpl.data import rle
from xpl.data.captions import expand_urls, iter_caption_samples
from xpl.data.pseudo_sample import decode_pseudo
from xpl.data.tar_records import iter_tar_records, open_shard
from xpl.data.tar_writer import AtomicTar
from xpl.errors import DataError, XPLError
from xpl.pseudo.paste import PseudoInstance
from xpl.pseudo.instances import pseudo_json
from xpl.vocab import Vocabulary


def pseudo_member(meta: dict, ids: dict[str, int]) -> bytes:
    """The pseudo.json stage 3 writes (its own serialisers), for a teacher that finds every object exactly."""
    instances = [PseudoInstance(ids[o["category"]], o["category"], o["category"],
                                (o["bbox"][0], o["bbox"][1], o["bbox"][0] + o["bbox"][2], o["bbox"][1] + o["bbox"][3]),
                                o["segmentation"], 1.0, 1.0, 1.0).to_json() for o in meta["xpl"]["objects"]]
    row = {"key": meta["key"], "caption": meta["caption"], "width": meta["width"], "height": meta["height"]}
    return pseudo_json(row, instances).encode()


@pytest.fixture(scope="module")
def pseudo_shards(shapes_world, tmp_path_factory) -> Path:
    """Stage 3's output layout (`<out>/shards/*.tar`) from the shapes world's caption shards, plus one shard of
    samples the reader must skip and count: no pseudo.json, a malformed one, one without instances."""
    out = tmp_path_factory.mktemp("pseudo") / "shards"
    out.mkdir()
    ids = {c.name: c.id for c in Vocabulary.load(shapes_world / "vocab.json").categories}
    for url in expand_urls(str(shapes_world / "captions" / "*.tar")):
        with open_shard(url) as stream, AtomicTar(out / Path(url).name) as tar:
            for record in iter_tar_records(stream):
                meta = json.loads(record.members["json"])
                tar.write(record.key, {**record.members, "pseudo.json": pseudo_member(meta, ids)})
    with open_shard(expand_urls(str(shapes_world / "captions" / "*.tar"))[0]) as stream:
        good = [r.members for r in iter_tar_records(stream)][:3]
    with AtomicTar(out / "bad.tar") as tar:
        tar.write("bad-missing", good[0])
        tar.write("bad-json", {**good[1], "pseudo.json": b'{"width": 64, "height": 64, "instances": [{"bbox": [1]}]}'})
        tar.write("bad-empty", {**good[2], "pseudo.json": b'{"width": 64, "height": 64, "instances": []}'})
    return out


def test_reader_gives_pseudo_targets_only_and_counts_what_it_skips(pseudo_shards, shapes_world):
    samples = iter_caption_samples(str(pseudo_shards / "*.tar"), image_size=32, pseudo=True)
    read = list(samples)
    assert len(read) == 40 and samples.yielded == 40
    assert dict(samples.skipped) == {"missing_pseudo": 1, "bad_pseudo": 1, "no_instances": 1}
    assert all(set(s) == {"key", "image", "caption", "pseudo"} for s in read)  # the truth json never comes along
    first = read[0]
    assert first["image"].shape[1:] == (32, 32)
    targets = first["pseudo"]
    assert targets.masks.shape[1:] == (32, 32) and len(targets.category_ids) == len(targets.boxes) >= 1
    assert (targets.boxes <= 32).all() and (targets.boxes >= 0).all()


def test_decode_pseudo_scales_boxes_and_masks_and_names_bad_fields():
    mask = np.zeros((40, 80), dtype=bool)
    mask[10:30, 20:60] = True
    data = json.dumps({"width": 80, "height": 40, "instances": [
        {"category_id": 5, "bbox": [20, 10, 40, 20], "segmentation": rle.encode(mask)}]}).encode()
    targets = decode_pseudo(data, 40, 20)
    assert targets.category_ids == [5]
    assert targets.boxes.tolist() == [[10.0, 5.0, 30.0, 15.0]]
    assert targets.masks.shape == (1, 20, 40) and targets.masks[0, 5:15, 10:30].all() and targets.masks.sum() == 200
    with pytest.raises(ValueError, match=r"instances\[0\]\.segmentation missing"):
        decode_pseudo(json.dumps({"width": 8, "height": 8, "instances": [{"category_id": 1, "bbox": [0, 0, 1, 1]}]})
                      .encode(), 8, 8)


def test_targets_map_vocabulary_ids_to_labels_and_corrupt_a_seeded_share():
    from xpl.data.corrupt import Corruption
    from xpl.data.pseudo_sample import PseudoTargets
    from xpl.stages.student import pseudo_target

    masks = np.zeros((3, 16, 16), dtype=bool)
    masks[:, 4:12, 4:12] = True
    pseudo = PseudoTargets([17, 3, 17], np.array([[4, 4, 12, 12]] * 3, dtype=np.float32), masks)
    off = Corruption(0.0, {}, ("dilate",), 0)
    target = pseudo_target(pseudo, "k", {3: 1, 17: 2}, off)
    assert target["labels"].tolist() == [2, 1, 2] and "corrupted" not in target
    assert target["masks"].dtype == torch.uint8 and torch.equal(target["masks"].bool(), torch.from_numpy(masks))
    on = Corruption(1.0, {}, ("dilate",), 0)
    corrupted = pseudo_target(pseudo, "k", {3: 1, 17: 2}, on)
    assert corrupted["corrupted"].tolist() == [True, True, True]
    assert (corrupted["masks"].sum(dim=(1, 2)) > target["masks"].sum(dim=(1, 2))).all()
    assert torch.equal(pseudo_target(pseudo, "k", {3: 1, 17: 2}, on)["masks"], corrupted["masks"])  # seeded
    with pytest.raises(DataError, match=r"sample k: pseudo.json category ids \[17\]"):
        pseudo_target(pseudo, "k", {3: 1}, off)
    only_17 = Corruption(0.0, {17: 1.0}, ("dilate",), 0)  # one class corrupted, the others left alone
    assert pseudo_target(pseudo, "k", {3: 1, 17: 2}, only_17)["corrupted"].tolist() == [True, False, True]


def student_config(world: Path, shards: Path, teacher: Path, tmp: Path, *overrides: str):
    return load_config(SHAPES, [
        f"data.root={world}", "data.image_size=64", f"output_dir={tmp}/out", f"tracking.uri=sqlite:///{tmp}/mlflow.db",
        "run_name=e2e", f"student.init={teacher}", f"student.pseudo={shards}/*.tar", "student.train.batch_size=2",
        "student.pseudo_batch_size=2", "student.train.log_every=1", "student.samples=2", *overrides,
    ])


def test_config_errors_name_the_key(shapes_world, pseudo_shards, random_teacher, tmp_path):
    from xpl.stages.student import check_student_config

    cfg = student_config(shapes_world, pseudo_shards, random_teacher, tmp_path, "student.mode=robust")
    with pytest.raises(XPLError, match="student.mode=robust"):
        check_student_config(cfg)
    cfg = student_config(shapes_world, pseudo_shards, tmp_path / "none.pt", tmp_path)
    with pytest.raises(XPLError, match="student.init=.*none.pt: teacher model not found"):
        check_student_config(cfg)


@pytest.mark.e2e
def test_student_trains_logs_and_exports_a_working_model(shapes_world, pseudo_shards, random_teacher, ray_session,
                                                         tmp_path):
    from xpl.model.checkpoint import load_model
    from xpl.stages.student import run_student

    cfg = student_config(shapes_world, pseudo_shards, random_teacher, tmp_path, "student.train.steps=3",
                         "student.corrupt.share=0.5", "student.name=robust", "student.caption_label_weight=1")
    result = run_student(cfg)
    assert result["step"] == 3
    client, found = stage_runs(tmp_path, "robust")
    assert len(found) == 1
    metrics = found[0].data.metrics
    for name in ("loss_pseudo_mask", "loss_pseudo_classifier", "loss_caption_labels", "loss_classifier", "loss_mask",
                 "sigma", "instance_weight_std", "images_per_s", "pseudo_positives"):
        assert name in metrics, name
    assert 0 < metrics["sigma"] < 10 and metrics["pseudo_positives"] > 0 and metrics["peak_memory_mb"] > 0
    shares = [v for k, v in metrics.items() if k.startswith("share.")]
    assert len(shares) == 12 and sum(shares) == pytest.approx(1.0)
    assert "sigma_corrupted" in metrics or "sigma_clean" in metrics
    sigma = result["sigma_report"]  # the trained student's sigma judged on its (corrupted) pseudo labels against the truth
    assert sigma["skipped"] == {"no_pseudo_or_truth": 1, "bad_pseudo": 1, "no_instances": 1}  # bad.tar's samples
    assert sigma["splits"]["all"]["instances"] > 0 and 0 < sigma["splits"]["all"]["wrong_share"] < 1
    assert 0 <= sigma["splits"]["all"]["auroc"] <= 1 and metrics["sigma.all.auroc"] == sigma["splits"]["all"]["auroc"]
    assert "robust/sigma_by_class.png" in {f.path for f in client.list_artifacts(found[0].info.run_id, "robust")}
    model = load_model(result["model"])
    assert model.class_embeddings.shape[0] == 12  # the whole vocabulary
    regions = model.regions([torch.rand(3, 64, 64)])
    assert len(regions) == 1


def _train_workers() -> list[psutil.Process]:
    """Ray Train worker processes started under this test process (never another session's)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.e2e
def test_killed_worker_resumes_from_the_latest_checkpoint(shapes_world, pseudo_shards, random_teacher, ray_session,
                                                          tmp_path):
    from xpl.stages.student import run_student

    steps = 30
    cfg = student_config(shapes_world, pseudo_shards, random_teacher, tmp_path, f"student.train.steps={steps}",
                         "student.train.checkpoint_every=3", "student.train.max_failures=2", "student.mode=plain",
                         "student.sigma_lr_scale=10")
    storage = Path(cfg.student.train.storage_path)
    killed: dict[str, float] = {}

    def kill_after_first_checkpoint() -> None:
        """Kill once a second checkpoint folder exists (plus a moment): by then the controller has taken the
        first report, so the run must resume from a checkpoint, not from step 0."""
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            workers = _train_workers()
            if len(workers) == 2 and len(list(storage.rglob("checkpoint_*"))) >= 2:
                time.sleep(2)
                os.kill(workers[1].pid, signal.SIGKILL)
                killed.update(pid=workers[1].pid, at=time.monotonic())
            time.sleep(0.5)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    start = time.monotonic()
    killer.start()
    result = run_student(cfg)
    killer.join(timeout=5)
    assert killed, "no training worker was killed: the run ended first"
    assert result["step"] == steps
    assert not psutil.pid_exists(killed["pid"]) or psutil.Process(killed["pid"]).status() == psutil.STATUS_ZOMBIE
    client, found = stage_runs(tmp_path, "student")
    assert len(found) == 1
    history = client.get_metric_history(found[0].info.run_id, "loss")
    assert max(m.step for m in history) == steps
    resumed = [m.value for m in client.get_metric_history(found[0].info.run_id, "resumed_from_step")]
    assert resumed[0] == 0 and any(0 < v < steps and v % 3 == 0 for v in resumed[1:])
    print(f"worker pid {killed['pid']} killed {killed['at'] - start:.0f} s in; resumed from steps {resumed[1:]}; "
          f"{steps} steps done {time.monotonic() - start:.0f} s after the start")


def test_sigma_head_learns_at_its_own_rate(tmp_path):
    from xpl.config import to_dict
    from xpl.model.detector import OpenVocabMaskRCNN
    from xpl.model.student import RobustStudent
    from xpl.stages.student import StudentTask

    detector = OpenVocabMaskRCNN(embed_dim=8, image_size=64)
    detector.set_class_embeddings(torch.nn.functional.normalize(torch.randn(3, 8), dim=1))
    detector.freeze(["v2l"])
    student = RobustStudent.from_config(load_config(SHAPES).student, detector, [1], ["a", "b", "c"])
    task = StudentTask(to_dict(load_config(SHAPES, [f"output_dir={tmp_path}", "student.sigma_lr_scale=10"])))
    rest, sigma = task.param_groups(student, 0.01)
    assert sigma["lr"] == pytest.approx(0.1) and rest["lr"] == 0.01
    assert {id(p) for p in sigma["params"]} == {id(p) for p in student.sigma_head.parameters()}
    trainable = {id(p) for p in student.parameters() if p.requires_grad}
    assert {id(p) for p in rest["params"]} | {id(p) for p in sigma["params"]} == trainable
    assert not {id(p) for p in rest["params"]} & {id(p) for p in sigma["params"]}
