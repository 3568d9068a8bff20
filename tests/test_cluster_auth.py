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
