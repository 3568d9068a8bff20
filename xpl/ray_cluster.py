"""Connecting to Ray: the existing cluster that RAY_ADDRESS names (as `ray job submit` does), or a new local one.

Token authentication belongs to whoever starts Ray. A Ray this process starts itself runs on this
machine only, so its auth is turned off (`RAY_AUTH_MODE=disabled`, unless set explicitly), which
keeps `ray.init`'s token file from turning auth on for later local `ray start`s. When joining an
existing cluster, the cluster's setting is left alone.
"""

from __future__ import annotations

import logging
import os
from typing import Any, MutableMapping

from xpl.runtime import apply_env_defaults

# `ray job submit` runs the entrypoint with RAY_ADDRESS set to the cluster and this variable beside it.
JOB_CONFIG_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def joins_existing_cluster(env: MutableMapping[str, str]) -> bool:
    """Whether Ray is to be joined rather than started: RAY_ADDRESS is set, or this runs under `ray job submit`."""
    return bool(env.get("RAY_ADDRESS")) or JOB_CONFIG_VAR in env


def set_auth_mode(env: MutableMapping[str, str]) -> bool:
    """Disable token auth in `env` for a local Ray this process starts (an explicit setting wins); leave it
    alone when joining a cluster. Returns whether this joins a cluster."""
    joins = joins_existing_cluster(env)
    if not joins:
        env.setdefault("RAY_AUTH_MODE", "disabled")
    return joins


def start_local_ray(**init_kwargs: Any) -> None:
    """Start a new Ray on this machine (never joining another), with auth off unless set explicitly."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", configure_logging=False, **init_kwargs)


def connect(num_cpus: int | None = None, *, worker_logs: bool = True) -> None:
    """`ray.init` once per process. Workers call `apply_env_defaults` themselves, so no runtime_env is
    forced here and a job's own runtime_env (working_dir) stays as submitted. `num_cpus` applies to a
    local Ray only. `worker_logs=False` keeps the workers' output and Ray Data's progress logs out of this
    process's console (they stay in Ray's log files): the main job prints its own progress."""
    import ray

    apply_env_defaults()
    if ray.is_initialized():
        return
    if not worker_logs:
        quiet_ray_driver()
    if set_auth_mode(os.environ):
        print(f"[xpl] joining the Ray cluster at {os.environ.get('RAY_ADDRESS')} (its auth settings apply)",
              flush=True)
        ray.init(log_to_driver=worker_logs, configure_logging=False)
    else:
        print("[xpl] starting a local Ray (RAY_ADDRESS is not set)", flush=True)
        start_local_ray(num_cpus=num_cpus, log_to_driver=worker_logs)
    if not worker_logs:
        print("[xpl] the Ray workers' own output goes to Ray's logs (a local Ray: /tmp/ray/session_latest/logs; "
              "a cluster: `ray logs`)", flush=True)


def require_gpus(setting: str) -> None:
    """Stop a stage whose `setting` asks for GPUs when this process's own local Ray has none (Ray would wait
    for them forever); a cluster that was joined may add GPU nodes on demand, so it is trusted."""
    import ray

    from xpl.errors import XPLError

    if joins_existing_cluster(os.environ) or ray.cluster_resources().get("GPU", 0) > 0:
        return
    raise XPLError(f"{setting} asks for GPUs, but the local Ray on this machine has none: on a CPU machine run "
                   "the shapes preset (--config configs/shapes.yaml) or override the stage to the CPU "
                   "(<stage>.train.use_gpu=false, pseudolabel.num_gpus_per_actor=0)")


def quiet_ray_driver() -> None:
    """No info lines from Ray Data, Ray Train or MLflow's store set-up in this process (warnings and errors
    still show; Ray Data's progress bars still show on a terminal)."""
    import importlib

    for module in ("ray.data", "mlflow"):  # they configure their loggers on import: set the levels after that
        importlib.import_module(module)
    for name in ("ray.data", "ray.train", "ray.tune", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)

