"""Connecting to Ray: the cluster of `ray job submit` / RAY_ADDRESS, a running local one, or a new local one."""

from __future__ import annotations

from xpl.runtime import apply_env_defaults


def connect(num_cpus: int | None = None) -> None:
    """`ray.init` once per process. Workers call `apply_env_defaults` themselves, so no runtime_env is
    forced here and a job's own runtime_env (working_dir) stays as submitted."""
    import ray

    apply_env_defaults()
    if ray.is_initialized():
        return
    ray.init(num_cpus=num_cpus, log_to_driver=True, configure_logging=False)
