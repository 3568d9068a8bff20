"""A real Ray job submission: a head on loopback, `ray job submit --working-dir .`, SUCCEEDED, output checked.

The head is a `ray start --head --block` process with its own temp dir, stopped by pid (see `raynodes`);
`ray stop` is never used: it stops every Ray instance on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from raynodes import BIN, PSEUDOLABEL_JOB, ray_env, start_head
from xpl.data.shapes import synthesize

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head of our own (2 CPUs, dashboard and job API on 127.0.0.1); yields the job API URL."""
    head = start_head(tmp_path, num_cpus=2)
    try:
        yield head.url, ray_env()
    finally:
        head.node.stop()


def test_ray_job_submit_pseudolabels_shapes_shards(ray_head, random_teacher, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    url, env = ray_head
    world = tmp_path / "world"
    synthesize(world, seed=5, train_images=1, caption_images=12, val_images=1, shard_size=6, image_size=64)
    out = tmp_path / "run"
    args = [f"data.root={world}", "data.image_size=64", f"output_dir={out}", f"pseudolabel.teacher={random_teacher}",
            f"tracking.uri=sqlite:///{out}/mlflow.db", "pseudolabel.batch_size=4", "pseudolabel.visualize=2"]
    submission_id = f"xpl-pseudolabel-{os.getpid()}-{time.time_ns()}"
    result = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", url, "--submission-id", submission_id,
         "--working-dir", str(REPO), "--", *PSEUDOLABEL_JOB, *args],
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
