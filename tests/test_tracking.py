"""MLflow runs are found again by stage and run name, in a real SQLite store."""

from mlflow.tracking import MlflowClient

from presets import SHAPES
from xpl.tracking import config_digest, resolve_tracking_uri, stage_run


def test_default_uri_is_sqlite_in_the_working_directory(tmp_path):
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_a_retried_stage_continues_its_run(tmp_path):
    import mlflow

    uri = resolve_tracking_uri(None, tmp_path)
    with stage_run(uri, "exp", "demo", "teacher") as first:
        mlflow.log_metric("loss", 2.0, step=1)
    with stage_run(uri, "exp", "demo", "teacher") as again:
        mlflow.log_metric("loss", 1.0, step=2)
    with stage_run(uri, "exp", "demo", "pretrain") as other:
        pass
    assert again.info.run_id == first.info.run_id
    assert other.info.run_id != first.info.run_id
    client = MlflowClient(uri)
    history = client.get_metric_history(first.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0)]
    exp = client.get_experiment_by_name("exp")
    assert len(client.search_runs([exp.experiment_id])) == 2
    assert exp.artifact_location == (tmp_path.resolve() / "mlruns" / "exp").as_uri()


def test_config_digest_is_stable_and_order_free():
    assert config_digest({"a": 1, "b": [1, 2]}) == config_digest({"b": [1, 2], "a": 1})
    assert config_digest({"a": 1}) != config_digest({"a": 2})


def test_a_resumed_run_records_each_new_config_digest(tmp_path):
    """MLflow params cannot change: a run resumed with another config adds `config_digest_2`, and a tag
    names the current one, so the run never shows only the first config."""
    from xpl.config import load_config
    from xpl.stages.common import log_stage_summary
    from xpl.tracking import CONFIG_TAG, config_history

    def summary(*overrides: str) -> str:
        cfg = load_config(SHAPES, [f"output_dir={tmp_path}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                                 *overrides])
        return log_stage_summary(cfg, "teacher", {"init": "x"}, {"val_base_mask_AP": None, "val_n": 1.0}, [])

    run_id = summary("teacher.train.steps=2")
    assert summary("teacher.train.steps=2") == run_id
    summary("teacher.train.steps=4")
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(run_id)
    history = config_history(run.data.params)
    assert len(history) == 2 and history[0] != history[1] and run.data.tags[CONFIG_TAG] == history[1]
    assert run.data.params["config_digest"] == history[0] and run.data.params["config_digest_2"] == history[1]
    assert "val_base_mask_AP" not in run.data.metrics and run.data.metrics["val_n"] == 1.0
