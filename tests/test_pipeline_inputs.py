"""`xpl demo` writes the shapes world only when that is the configured data, and only where it owns the folder."""


import pytest

from presets import CONFIGS
from xpl.config import load_config
from xpl.errors import XPLError
from xpl.stages.pipeline import ensure_inputs

SMALL = ["synth.train_images=2", "synth.val_images=1", "synth.caption_images=3", "synth.shard_size=3",
         "synth.image_size=32"]


def test_real_data_presets_never_synthesize_and_name_what_is_missing(tmp_path):
    cfg = load_config(CONFIGS / "coco_ovis.yaml", [f"data.root={tmp_path}"])
    with pytest.raises(XPLError) as err:
        ensure_inputs(cfg)
    message = str(err.value)
    assert f"data.train_json={tmp_path}/annotations/instances_train2017_base48.json" in message
    assert "data.captions=" in message and "data.synthesize=false" in message
    assert not any(tmp_path.iterdir())


def test_shapes_world_is_written_only_into_an_empty_or_shapes_owned_folder(tmp_path):
    real = tmp_path / "real"
    (real / "annotations").mkdir(parents=True)
    (real / "annotations" / "instances.json").write_text("{}")
    with pytest.raises(XPLError, match="holds other files"):
        ensure_inputs(load_config(CONFIGS / "shapes.yaml", [f"data.root={real}", *SMALL]))
    assert sorted(p.name for p in real.rglob("*")) == ["annotations", "instances.json"]

    cfg = load_config(CONFIGS / "shapes.yaml", [f"data.root={tmp_path / 'shapes'}", *SMALL])
    assert ensure_inputs(cfg) is True
    assert ensure_inputs(cfg) is False  # everything is there now


def test_a_stage_done_with_the_same_config_is_skipped_and_a_changed_one_reruns(tmp_path):
    from xpl.stages.pipeline import run_stage, stage_digest

    cfg = load_config(CONFIGS / "shapes.yaml", [f"data.root={tmp_path}", *SMALL])
    calls = []

    def work() -> dict:
        calls.append(1)
        return {"model": "m.pt", "path": tmp_path}

    digest = stage_digest(cfg, ("teacher",), "upstream")
    first = run_stage("teacher", digest, tmp_path / "pipeline" / "teacher.json", work, fresh=False)
    again = run_stage("teacher", digest, tmp_path / "pipeline" / "teacher.json", work, fresh=False)
    assert len(calls) == 1 and again.skipped and again.result == first.result == {"model": "m.pt", "path": str(tmp_path)}
    changed = load_config(CONFIGS / "shapes.yaml", [f"data.root={tmp_path}", *SMALL, "teacher.train.lr=0.5"])
    assert stage_digest(changed, ("teacher",), "upstream") != digest
    assert stage_digest(cfg, ("teacher",), "other upstream") != digest
    run_stage("teacher", digest, tmp_path / "pipeline" / "teacher.json", work, fresh=True)
    assert len(calls) == 2


def test_a_stage_resumes_its_own_interrupted_work_and_never_another_configs(tmp_path):
    from xpl.stages.pipeline import run_stage

    marker, checkpoints = tmp_path / "pipeline" / "student.json", tmp_path / "ray_results" / "shapes-student"
    seen = []

    def interrupted() -> dict:
        checkpoints.mkdir(parents=True, exist_ok=True)
        (checkpoints / "step_100").write_text("weights")
        raise KeyboardInterrupt

    def work() -> dict:
        seen.append(sorted(p.name for p in checkpoints.iterdir()) if checkpoints.exists() else None)
        return {"model": "m.pt"}

    with pytest.raises(KeyboardInterrupt):
        run_stage("student", "digest-a", marker, interrupted, fresh=False, outputs=[checkpoints])
    run_stage("student", "digest-a", marker, work, fresh=False, outputs=[checkpoints])
    assert seen == [["step_100"]]  # the same config resumes from its checkpoint
    checkpoints.mkdir(exist_ok=True)
    (checkpoints / "step_200").write_text("weights")
    run_stage("student", "digest-b", marker, work, fresh=False, outputs=[checkpoints])
    assert seen[-1] is None  # another config's checkpoints were removed before the run


def test_results_table_shows_every_model_and_missing_values():
    from xpl.stages.pipeline import results_markdown

    metrics = {"generalized.novel.mask_AP50": 40.0, "generalized.novel.mask_AP": 20.0,
               "generalized.base.mask_AP50": None}
    results = {"models": {"teacher": metrics, "student": {}},
               "pseudo_labels": {"novel": {"precision": 0.5, "recall": 0.25, "instances": 10}},
               "stages": {"teacher": {"seconds": 12.4, "skipped": True, "mlflow_run_id": "abc"}}}
    table = results_markdown(results)
    assert "| teacher | 40.0 / 20.0 | n/a / n/a |" in table and "| student | n/a / n/a |" in table
    assert "| novel | 50.0 % | 25.0 % | 10 |" in table and "| teacher | 12 (earlier run) | abc |" in table
    assert "sigma" not in table  # no student with a sigma
    results["sigma"] = {"student": {"novel": {"auroc": 0.8123, "spearman": -0.41, "wrong_share": 0.2}}}
    assert "| student | novel | 0.812 | -0.410 | 20.0 % |" in results_markdown(results)
