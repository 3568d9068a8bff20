"""Process environment every XPL entrypoint sets for itself, so a user's shell needs nothing special."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray Train's print patch logs each print of a worker and, when a library has wrapped sys.stdout, also
    # prints it: every engine log line reached the console twice. Ray Train propagates this to its workers.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # DeepSpeed JIT-compiles a comm op once per environment (~30 s); one cache per venv, as two checkouts
    # sharing one would rebuild it on every switch (the build file names the venv's include paths)
    "TORCH_EXTENSIONS_DIR": str(Path.home() / ".cache" / "xpl" / "torch_extensions"
                                / hashlib.sha1(sys.prefix.encode()).hexdigest()[:12]),
}


def apply_env_defaults() -> dict[str, str]:
    """Set the defaults that are not already set; return them all. Ray's auth mode is not among them: it depends
    on whether Ray is started or joined (`xpl.ray_cluster.set_auth_mode`)."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in DEFAULTS}


def build_extensions() -> None:
    """Compile DeepSpeed's CPU shared-memory comm op into this venv's cache now (`make setup` calls this), so
    the first training stage of a run does not spend its first minute compiling it."""
    apply_env_defaults()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.comm.torch import build_shm_op

    build_shm_op()
