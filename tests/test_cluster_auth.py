"""Ray token auth: turned off only for a Ray the entrypoint starts itself, left to the cluster when joining one.

The join branch is also checked for real by tests/test_job_submit.py (a `ray job submit` entrypoint
reports that it joins the cluster)."""

import os

import pytest

from xpl.ray_cluster import set_auth_mode
from xpl.runtime import apply_env_defaults


@pytest.mark.parametrize(("env", "joins", "auth"), [
    ({}, False, "disabled"),
    ({"RAY_AUTH_MODE": "token"}, False, "token"),
    ({"RAY_ADDRESS": "10.1.2.3:6379"}, True, None),
    ({"RAY_ADDRESS": "10.1.2.3:6379", "RAY_AUTH_MODE": "token"}, True, "token"),
    ({"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}, True, None),
])
def test_auth_is_disabled_only_for_a_local_ray(env, joins, auth):
    assert set_auth_mode(env) is joins
    assert env.get("RAY_AUTH_MODE") == auth


def test_process_defaults_leave_auth_alone(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert "RAY_AUTH_MODE" not in apply_env_defaults()
    assert "RAY_AUTH_MODE" not in os.environ


def test_quiet_driver_keeps_info_lines_of_ray_data_and_mlflow_out_after_their_imports():
    import importlib
    import logging

    from xpl.ray_cluster import quiet_ray_driver

    names = ("ray.data", "ray.train", "ray.tune", "mlflow", "alembic")
    levels = {name: logging.getLogger(name).level for name in names}
    try:
        quiet_ray_driver()
        for module in ("mlflow", "ray.data"):  # importing again must not bring the info lines back
            importlib.import_module(module)
        for name in (*names, "mlflow.store.db.utils"):
            assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
