"""Pretraining and teacher through real Ray Train + DeepSpeed (2 workers, ZeRO 2) and a real MLflow store."""

from pathlib import Path

import pytest

from stage_runs import stage_runs
from presets import SHAPES
from xpl.config import load_config

pytestmark = pytest.mark.e2e


def tiny_config(world: Path, tmp: Path, *overrides: str):
    return load_config(SHAPES, [
        f"data.root={world}", "data.image_size=64", f"output_dir={tmp}/out", f"tracking.uri=sqlite:///{tmp}/mlflow.db",
        "run_name=e2e", "model.representation_size=64",
        "pretrain.train.batch_size=4", "pretrain.train.log_every=1", "pretrain.train.checkpoint_every=2",
        "pretrain.grid=4", "teacher.train.batch_size=2", "teacher.train.log_every=1",
        "teacher.train.checkpoint_every=2", *overrides,
    ])


@pytest.fixture(scope="module")
def pretrained(shapes_world, ray_session, tmp_path_factory):
    from xpl.stages.pretrain import run_pretrain

    tmp = tmp_path_factory.mktemp("train")
    cfg = tiny_config(shapes_world, tmp, "pretrain.train.steps=3")
    return tmp, run_pretrain(cfg)


def test_pretraining_runs_and_logs(pretrained):
    tmp, result = pretrained
    assert Path(result["model"]).is_file()
    assert result["step"] == 3
    client, found = stage_runs(tmp, "pretrain")
    assert len(found) == 1
    history = client.get_metric_history(found[0].info.run_id, "loss_grounding")
    assert [m.step for m in history] == [1, 2, 3]
    assert all(0 < m.value < 10 for m in history)
    assert found[0].data.params["train.zero_stage"] == "2" and found[0].data.params["train.num_workers"] == "2"
    metrics = found[0].data.metrics
    assert metrics["images_per_s"] > 0 and metrics["setup_s"] > 0
    assert all(metrics[f"ms_{phase}"] >= 0 for phase in ("data", "forward", "backward", "optimizer"))
    assert metrics["ms_forward"] > 0 and metrics["ms_backward"] > 0


def test_teacher_resumes_from_its_checkpoint_in_the_same_run(pretrained, shapes_world):
    from xpl.stages.teacher import run_teacher

    tmp, _ = pretrained
    first = run_teacher(tiny_config(shapes_world, tmp, "teacher.train.steps=2"))
    assert first["step"] == 2
    second = run_teacher(tiny_config(shapes_world, tmp, "teacher.train.steps=4"))
    assert second["step"] == 4
    client, found = stage_runs(tmp, "teacher")
    assert len(found) == 1, "a re-run must continue the stage's MLflow run"
    run_id = found[0].info.run_id
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "resumed_from_step")] == [(0, 0), (2, 2)]
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3, 4]
    assert all(m.value == m.value and m.value < 1e3 for m in client.get_metric_history(run_id, "loss"))
    assert "val_base_mask_AP50" in found[0].data.metrics
    params = found[0].data.params  # resumed with more steps: both configs are on record
    assert params["config_digest"] != params["config_digest_2"] and found[0].data.tags["xpl.config_digest"] == \
        params["config_digest_2"]


def test_plain_ddp_backend_trains_the_grounding_model(shapes_world, ray_session, tmp_path):
    """The benchmark's baseline: same engine, torch DDP (unused detector heads during pretraining)."""
    from xpl.stages.pretrain import run_pretrain

    cfg = tiny_config(shapes_world, tmp_path, "pretrain.train.steps=2", "pretrain.train.backend=ddp",
                      "run_name=e2e-ddp")
    result = run_pretrain(cfg)
    assert result["step"] == 2 and 0 < result["loss"] < 10
    assert Path(result["model"]).is_file()
