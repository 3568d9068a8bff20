"""Rehearsals of the real presets: `xpl demo --config configs/coco_ovis.yaml` and `configs/oi_cc.yaml` as a user runs
them, on miniatures of their data layouts (`xpl synth --layout coco|oi`, four images per split), at the presets'
model and image sizes (oi_cc's images shrunk: its model is coco_ovis's), with only counts and places overridden: one
step of one image (two for pretraining's in-batch negatives) on one CPU worker, local folders for `/mnt/xpl` and
`s3://`, a local MLflow store, and a ResNet-50 file of random weights where a user gives ImageNet's (so the backbone
is the frozen-BatchNorm one users train). Every stage runs: pretraining, the teacher, pseudo-labeling, the robust and
the plain student, the evaluations and the results table.

Run by `make rehearse` (marker `rehearsal`; `make test` leaves them out: each takes minutes on 2 cores).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from presets import CONFIGS

REPO = Path(__file__).resolve().parents[1]
XPL = [sys.executable, "-m", "xpl.cli"]
TRAINING = ("pretrain", "teacher", "student")


def counts() -> list[str]:
    """The overrides that make a preset a rehearsal: counts and the CPU, nothing of the method."""
    out = []
    for stage in TRAINING:
        batch = 2 if stage == "pretrain" else 1  # in-batch negatives need a second caption
        out += [f"{stage}.train.{key}={value}" for key, value in (
            ("steps", 1), ("batch_size", batch), ("num_workers", 1), ("use_gpu", "false"), ("checkpoint_every", 1),
            ("log_every", 1), ("max_failures", 0))]
    return out + ["pseudolabel.num_gpus_per_actor=0", "pseudolabel.num_actors=1", "pseudolabel.num_cpus_per_actor=0.5",
                  "pseudolabel.threads_per_actor=2", "pseudolabel.num_writers=1", "pseudolabel.batch_size=2",
                  "pseudolabel.visualize=2"]


def places(tmp: Path) -> list[str]:
    """Local folders for the cluster's shared filesystem, object store and tracking server, and a ResNet-50 file
    (random weights) where users give ImageNet's."""
    import torchvision

    backbone = tmp / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), backbone)
    return [f"output_dir={tmp / 'out'}", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
            f"model.pretrained_backbone={backbone}",
            *(f"{stage}.train.storage_path={tmp / 'ray_results'}" for stage in TRAINING)]


def rehearse(tmp: Path, preset: str, layout: str, extra: list[str]) -> dict:
    """Write the miniature, run the main job on it; return results.json (asserting the run's console first)."""
    data = tmp / "data"
    sizes = ["--train-images", "4", "--val-images", "4", "--caption-images", "4", "--shard-size", "2"]
    made = subprocess.run([*XPL, "synth", "--layout", layout, "--out", str(data), *sizes], cwd=REPO,
                          capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    summary = json.loads(made.stdout)
    tic = time.monotonic()
    run = subprocess.run([*XPL, "demo", "--config", str(CONFIGS / preset), *summary["overrides"], *places(tmp),
                          *counts(), *extra], cwd=REPO, capture_output=True, text=True, check=False, timeout=1800)
    print(f"{preset}: xpl demo took {time.monotonic() - tic:.0f} s\n{run.stdout[-4000:]}")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Traceback" not in run.stdout + run.stderr
    return json.loads((tmp / "out" / "results.json").read_text())


def check_results(results: dict) -> None:
    """Every stage ran; each model has generalized and constrained mask AP keys; pseudo-labels were judged."""
    assert set(results["stages"]) == {"pretrain", "teacher", "pseudolabel", "student", "student_plain",
                                      "evaluate/teacher", "evaluate/student", "evaluate/student_plain"}
    assert all(not s["skipped"] and s["mlflow_run_id"] for s in results["stages"].values())
    for model, metrics in results["models"].items():
        for key in ("generalized.novel.mask_AP50", "generalized.base.mask_AP50", "constrained.novel.mask_AP"):
            assert key in metrics, (model, key)


@pytest.mark.rehearsal
def test_coco_ovis_preset_runs_every_stage_at_its_real_sizes(tmp_path):
    results = rehearse(tmp_path, "coco_ovis.yaml", "coco", [])
    check_results(results)


@pytest.mark.rehearsal
def test_oi_cc_preset_runs_every_stage_on_its_layout_through_a_file_url(tmp_path):
    results = rehearse(tmp_path, "oi_cc.yaml", "oi", ["model.min_size=480", "model.max_size=800"])
    check_results(results)
