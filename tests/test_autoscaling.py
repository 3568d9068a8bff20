"""Autoscaling for real on one machine, with Ray's fake multi-node provider.

The head starts with `RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...` from
cluster/fake_multinode.yaml: a worker type that offers an "accelerator" resource, min_workers 0,
idle timeout 6 s. The head has no accelerator, so the pseudo-labeling job's teacher actors
(`pseudolabel.actor_resources={accelerator: 1}`) can only run once the autoscaler has added
workers; when the job is done and the workers idle, the autoscaler removes them again. The fake
nodes are processes of the head's autoscaler, so stopping the head's process tree stops them too.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from ray.job_submission import JobSubmissionClient
from ray.util.state import list_actors

from raynodes import PSEUDOLABEL_JOB, alive_nodes, free_port, ray_env, start_head, state_api, submit_job

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e


@pytest.fixture
def autoscaling_head(tmp_path):
    """A head (2 CPUs, no accelerator) whose autoscaler runs cluster/fake_multinode.yaml."""
    port = free_port()
    config = yaml.safe_load((REPO / "cluster" / "fake_multinode.yaml").read_text())
    config["provider"]["gcs_address"] = f"127.0.0.1:{port}"
    path = tmp_path / "autoscaling.yaml"
    path.write_text(yaml.safe_dump(config))
    env = ray_env(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    head = start_head(tmp_path, num_cpus=2, env=env, port=port, extra_args=("--autoscaling-config", str(path)))
    try:
        yield head, config
    finally:
        head.node.stop()


def test_autoscaler_adds_accelerator_workers_for_the_job_and_removes_them_when_idle(
        autoscaling_head, shapes_world, random_teacher, tmp_path):
    head, config = autoscaling_head
    worker_type = config["available_node_types"]["accelerator_worker"]
    out = tmp_path / "pseudo"
    args = [f"data.root={shapes_world}", "data.image_size=64", f"output_dir={tmp_path}",
            f"pseudolabel.teacher={random_teacher}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            "pseudolabel.batch_size=5", "pseudolabel.visualize=0", "pseudolabel.num_actors=2",
            "pseudolabel.actor_resources={accelerator: 1}", "pseudolabel.num_cpus_per_actor=0",
            "pseudolabel.num_cpus_per_task=0.5"]
    submission_id = f"xpl-autoscaling-{os.getpid()}-{time.time_ns()}"
    start = time.monotonic()
    submit_job(head, submission_id, PSEUDOLABEL_JOB + args, REPO)

    client = JobSubmissionClient(head.url)
    events: dict[str, float] = {}  # seconds after submission
    workers: dict[str, list[float]] = {}  # worker node id -> [first, last] seconds seen alive
    while True:
        now = time.monotonic() - start
        assert now < 480, f"timed out: {events}, workers {workers}"
        teachers = [] if "teacher actors done" in events else [
            a for a in state_api(list_actors, address=head.url, detail=True, raise_on_missing_output=False)
            if "accelerator" in (a.required_resources or {})]
        if teachers:
            events.setdefault("teacher actors requested", now)
            if all(a.state == "DEAD" for a in teachers):
                events.setdefault("teacher actors done", now)
        alive_workers = [n.node_id for n in alive_nodes(head.url) if not n.is_head_node]
        for node_id in alive_workers:
            workers.setdefault(node_id, [now, now])[1] = now
        if client.get_job_status(submission_id).is_terminal():
            events.setdefault("job done", now)
        if "job done" in events and not alive_workers:
            break
        time.sleep(1)
    status = client.get_job_status(submission_id)
    assert str(status) == "SUCCEEDED", client.get_job_logs(submission_id)[-4000:]

    summary = json.loads((out / "summary.json").read_text())
    keys = [json.loads(line)["key"] for p in sorted((out / "manifest").glob("*.jsonl"))
            for line in p.read_text().splitlines()]
    assert sorted(keys) == [f"{i:09d}" for i in range(40)] and summary["duplicate_keys"] == 0
    assert 1 <= len(workers) <= worker_type["max_workers"]
    assert set(summary["teacher_nodes"]) <= set(workers), "teacher actors ran only on added workers"
    last_shard = max(p.stat().st_mtime for p in (out / "manifest").glob("*.jsonl")) - (time.time() - time.monotonic())
    up = min(w[0] for w in workers.values()) - events["teacher actors requested"]
    down = max(w[1] for w in workers.values()) - (last_shard - start)
    print(f"autoscaler added {len(workers)} workers and removed them all; first worker alive {up:.1f} s after the "
          f"teacher actors were requested; last worker gone {down:.1f} s after the last shard was written (idle "
          f"timeout {60 * config['idle_timeout_minutes']:.0f} s, seen at 1 s resolution); seconds after submission "
          f"{events}; teacher samples per node: {summary['teacher_nodes']}")
