"""MLflow runs with deterministic identity: a stage re-run with the same run name continues its run.

The default store is SQLite in the working directory (MLflow's plain file store is in maintenance
mode); on a cluster `tracking.uri` points at the tracking server.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

RUN_KEY_TAG = "xpl.run_key"
CONFIG_DIGEST = "config_digest"
CONFIG_TAG = "xpl.config_digest"


def resolve_tracking_uri(uri: Optional[str], workdir: str | Path | None = None) -> str:
    """The configured URI, or `sqlite:///<workdir>/mlflow.db` (absolute, so Ray workers agree)."""
    if uri:
        return uri
    return f"sqlite:///{Path(workdir or Path.cwd()).resolve() / 'mlflow.db'}"


def default_artifact_location(uri: str, experiment: str) -> Optional[str]:
    """Artifacts of a local SQLite store live beside the database (`mlruns/<experiment>`), not in
    whatever directory a process happens to run in; servers choose their own location (None)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlruns" / experiment).as_uri()


def run_key(run_name: str, stage: str) -> str:
    """The identity of a stage's run: same run name and stage, same MLflow run."""
    return f"{run_name}/{stage}"


def config_digest(section: Mapping[str, Any]) -> str:
    """A short stable hash of a config section, logged as a param to tell configs apart."""
    blob = json.dumps(section, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def find_or_create_run(uri: str, experiment: str, key: str) -> str:
    """The id of the run tagged with `key` in `experiment`, created if there is none yet."""
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(
        experiment, artifact_location=default_artifact_location(uri, experiment))
    found = client.search_runs([exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=1)
    if found:
        return found[0].info.run_id
    return client.create_run(exp_id, tags={RUN_KEY_TAG: key}, run_name=key.replace("/", "-")).info.run_id


@contextmanager
def stage_run(uri: str, experiment: str, run_name: str, stage: str) -> Iterator[Any]:
    """Open (or re-open) the MLflow run of `stage` as the active run."""
    import mlflow

    run_id = find_or_create_run(uri, experiment, run_key(run_name, stage))
    with mlflow.start_run(run_id=run_id) as run:
        yield run


def log_params_once(params: Mapping[str, Any]) -> None:
    """Log params, skipping those the (resumed) run already holds, since MLflow refuses to change them."""
    import mlflow

    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params if run else {}
    fresh = {k: v for k, v in params.items() if k not in existing}
    if fresh:
        mlflow.log_params(fresh)


def config_history(params: Mapping[str, str]) -> list[str]:
    """The config digests a run has recorded, oldest first (`config_digest`, `config_digest_2`, ...)."""
    history, n = [], 1
    while (name := CONFIG_DIGEST if n == 1 else f"{CONFIG_DIGEST}_{n}") in params:
        history.append(params[name])
        n += 1
    return history


def log_config(config: Mapping[str, Any], yaml_text: str, stage: str) -> str:
    """Record the resolved config of this (re)run in the active run; return its digest.

    A resumed run keeps its MLflow run, whose params cannot change: each config it has not seen last
    adds the next param of `config_history` (a run resumed with a changed config shows both digests),
    the tag `xpl.config_digest` names the current one, and each config's YAML is kept as the artifact
    `<stage>/config-<digest>.yaml`.
    """
    import mlflow

    digest = config_digest(config)
    run = mlflow.active_run()
    history = config_history(mlflow.get_run(run.info.run_id).data.params)
    if not history or history[-1] != digest:
        n = len(history) + 1
        mlflow.log_param(CONFIG_DIGEST if n == 1 else f"{CONFIG_DIGEST}_{n}", digest)
        mlflow.log_text(yaml_text, f"{stage}/config-{digest}.yaml")
    mlflow.set_tag(CONFIG_TAG, digest)
    return digest
