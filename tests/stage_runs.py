"""Test helper: the MLflow runs of one stage of the `e2e` run name in a test's own SQLite store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from xpl.tracking import RUN_KEY_TAG


def stage_runs(tmp: Path, stage: str) -> tuple[MlflowClient, list[Any]]:
    """The client of `<tmp>/mlflow.db` and the runs tagged `e2e/<stage>` in experiment `xpl`."""
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name("xpl")
    return client, client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = 'e2e/{stage}'")
