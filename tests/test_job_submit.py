"""A real Ray job submission: a head on loopback, `ray job submit --working-dir .`, SUCCEEDED, output checked.

The head is started with `ray start --head --block` in its own process group and its own temp
dir, and stopped by terminating that process (which shuts down the processes it started). `ray stop`
is not used: it stops every Ray instance on the machine. The own temp dir keeps `ray start` from
writing /tmp/ray/ray_current_cluster, which a later plain `ray.init()` anywhere on the machine
would try to join after this head is gone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from xpl.data.shapes import synthesize

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head of our own (2 CPUs, dashboard and job API on 127.0.0.1); yields the job API URL."""
    ports = {name: free_port() for name in ("port", "dashboard", "client", "agent")}
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "head.log", "w")
    temp_dir = tempfile.mkdtemp(prefix="xplray-", dir="/tmp")  # short: Ray's socket paths live under it
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--temp-dir", temp_dir, "--port", str(ports["port"]),
         "--num-cpus", "2",
         "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(ports["dashboard"]),
         "--ray-client-server-port", str(ports["client"]), "--dashboard-agent-listen-port", str(ports["agent"]),
         "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{ports['dashboard']}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2).read()
                break
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ray head did not start: {(tmp_path / 'head.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield url, env
    finally:
        head.terminate()  # `ray start --block` stops the processes it started
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        try:
            os.killpg(head.pid, signal.SIGKILL)  # stragglers of this head's process group only
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_pseudolabels_shapes_shards(ray_head, tmp_path):
    import torch
    from ray.job_submission import JobStatus, JobSubmissionClient

    from xpl.model.checkpoint import export_model
    from xpl.model.detector import OpenVocabMaskRCNN

    url, env = ray_head
    world = tmp_path / "world"
    synthesize(world, seed=5, train_images=1, caption_images=12, val_images=1, shard_size=6, image_size=64)
    torch.manual_seed(0)
    teacher = export_model(OpenVocabMaskRCNN(embed_dim=384, image_size=64), tmp_path / "teacher.pt")
    out = tmp_path / "run"
    args = [f"data.root={world}", "data.image_size=64", f"output_dir={out}", f"pseudolabel.teacher={teacher}",
            f"tracking.uri=sqlite:///{out}/mlflow.db", "pseudolabel.batch_size=4", "pseudolabel.visualize=2"]
    submission_id = f"xpl-pseudolabel-{os.getpid()}-{time.time_ns()}"
    result = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", url, "--submission-id", submission_id,
         "--working-dir", str(REPO), "--", "python", "jobs/pseudolabel.py", *args],
        env=env, capture_output=True, text=True, timeout=400, cwd=REPO,
    )
    client = JobSubmissionClient(url)
    status = client.get_job_status(submission_id)
    assert status == JobStatus.SUCCEEDED, f"{status}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    logs = client.get_job_logs(submission_id)
    assert "samples 12: labeled" in logs
    assert "[xpl] joining the Ray cluster at" in logs  # so the cluster's auth setting is left alone

    summary = json.loads((out / "pseudo" / "summary.json").read_text())
    assert summary["samples"] == 12 and summary["unfinished_shards"] == 0 and summary["duplicate_keys"] == 0
    keys = [json.loads(line)["key"] for p in sorted((out / "pseudo" / "manifest").glob("*.jsonl"))
            for line in p.read_text().splitlines()]
    assert sorted(keys) == [f"{i:09d}" for i in range(12)]
    assert sorted(p.name for p in (out / "pseudo" / "shards").iterdir()) == ["00000.tar", "00001.tar"]
