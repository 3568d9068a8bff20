"""Two real Ray nodes on one machine: the pseudo-labeling job runs its teacher actors on both, and
when the second node is killed mid-job the job still completes with every key accounted for once.

The head and the second node are separate `ray start --block` processes on loopback, each with its
own temp dir (see `raynodes`). Each node offers "teacher_slot" resources, standing in for GPUs: the
head 2, the second node 1. The job's 2 teacher actors ask for one slot each
(`pseudolabel.actor_resources`) and Ray Data spreads them over the nodes. Every manifest record names
the node whose teacher actor labeled it; once a shard labeled on the second node is finished, the
test kills that node (SIGKILL to its whole process tree). The lost actor is restarted in the head's
spare slot and the shards in flight on the lost node are redone.

One job shows both: on a 2-core machine shared with other work, each job costs one to two minutes.
"""

from __future__ import annotations

import json
import os
import tarfile
import time
from pathlib import Path

import pytest

from raynodes import PSEUDOLABEL_JOB, alive_nodes, start_head, start_worker, submit_job, wait_for, wait_job
from presets import SHAPES
from xpl.config import load_config
from xpl.data.shapes import synthesize
from xpl.pseudo.manifest import totals
from xpl.pseudo.dataflow import Settings

REPO = Path(__file__).resolve().parents[1]
SHARDS, PER_SHARD = 16, 3


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """A caption world of SHARDS x PER_SHARD 64 px images and a random-weight teacher."""
    import torch

    from xpl.model.checkpoint import export_model
    from xpl.model.detector import OpenVocabMaskRCNN

    root = tmp_path_factory.mktemp("multinode")
    synthesize(root / "world", seed=11, train_images=1, caption_images=SHARDS * PER_SHARD, val_images=1,
               shard_size=PER_SHARD, image_size=64)
    torch.manual_seed(0)
    return root / "world", export_model(OpenVocabMaskRCNN(embed_dim=384, image_size=64), root / "teacher.pt")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and a second node (2 logical CPUs each), with 2 and 1 teacher slots."""
    logs = tmp_path_factory.mktemp("ray-logs")
    head = start_head(logs, num_cpus=2, resources={"teacher_slot": 2})
    node2 = None
    try:
        node2 = start_worker(logs / "node2.log", head, num_cpus=2, resources={"teacher_slot": 1})
        wait_for(lambda: len(alive_nodes(head.url)) == 2, 60, "the second node to join")
        yield head, node2
    finally:
        if node2 is not None:
            node2.stop()
        head.node.stop()


def submit_pseudolabel(head, inputs: tuple[Path, Path], out: Path) -> str:
    """Submit the job: 2 teacher actors of one teacher slot each, one teacher batch per shard; processing
    starts once both actors are up (on a busy 2-core machine an actor takes tens of seconds to start)."""
    world, teacher = inputs
    submission_id = f"xpl-multinode-{os.getpid()}-{time.time_ns()}"
    args = [f"data.root={world}", "data.image_size=64", f"output_dir={out}", f"pseudolabel.teacher={teacher}",
            f"tracking.uri=sqlite:///{out}/mlflow.db", f"pseudolabel.batch_size={PER_SHARD}",
            "pseudolabel.visualize=0", "pseudolabel.num_actors=2", "pseudolabel.actor_resources={teacher_slot: 1}",
            "pseudolabel.num_cpus_per_task=0.5"]
    submit_job(head, submission_id, PSEUDOLABEL_JOB + args, REPO,
               job_env={"RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "240"})
    return submission_id


def manifest_records(out: Path) -> list[dict]:
    return [json.loads(line) for p in sorted((out / "manifest").glob("*.jsonl")) for line in p.read_text().splitlines()]


def assert_every_key_once(out: Path) -> dict:
    """Manifests name every input key exactly once, the output tars hold no key twice; the summary agrees."""
    assert sorted(r["key"] for r in manifest_records(out)) == [f"{i:09d}" for i in range(SHARDS * PER_SHARD)]
    written = []
    for path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            written += [m.name.split(".", 1)[0] for m in tar if m.name.endswith(".pseudo.json")]
    assert len(written) == len(set(written))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == SHARDS * PER_SHARD and summary["duplicate_keys"] == 0
    assert summary["unfinished_shards"] == 0 and summary["labeled"] == len(written)
    assert not list((out / "tmp").iterdir())
    return summary


@pytest.mark.e2e
def test_teacher_actors_on_both_nodes_and_the_job_survives_losing_one(cluster, inputs, tmp_path):
    head, node2 = cluster
    (node2_id,) = [n.node_id for n in alive_nodes(head.url) if not n.is_head_node]
    out = tmp_path / "pseudo"
    start = time.monotonic()
    submission_id = submit_pseudolabel(head, inputs, tmp_path)

    def node2_finished_a_shard_or_all_done() -> bool:
        records = manifest_records(out) if (out / "manifest").is_dir() else []
        return any(r.get("teacher_node") == node2_id for r in records) or len(records) == SHARDS * PER_SHARD

    wait_for(node2_finished_a_shard_or_all_done, 300, "a shard labeled on the second node", interval=0.1)
    done_at_kill = len(list((out / "manifest").glob("*.jsonl")))
    node2.kill()
    killed_at = time.monotonic() - start
    assert done_at_kill < SHARDS, "the kill should land mid-job"
    status, logs = wait_job(head, submission_id, 300)
    assert status == "SUCCEEDED", logs[-4000:]
    assert len(alive_nodes(head.url)) == 1

    summary = assert_every_key_once(out)
    (head_id,) = set(summary["teacher_nodes"]) - {node2_id}
    assert node2_id in summary["teacher_nodes"], "teacher batches ran on both nodes"
    assert sum(summary["teacher_nodes"].values()) == summary["labeled"] + summary["no_match"]
    print(f"second node killed {killed_at:.1f} s after submission with {done_at_kill} of {SHARDS} shards done; "
          f"job done after {time.monotonic() - start:.1f} s; keys accounted: {summary['samples']} of "
          f"{SHARDS * PER_SHARD} (labeled {summary['labeled']}, no_match {summary['no_match']}, rejected "
          f"{summary['rejected']}), duplicates {summary['duplicate_keys']}; samples labeled per node: head "
          f"{summary['teacher_nodes'][head_id]}, second node {summary['teacher_nodes'][node2_id]}")


def test_actor_resources_reach_the_pipeline_and_totals_count_samples_per_teacher_node():
    cfg = load_config(SHAPES, ["pseudolabel.actor_resources={accelerator: 1}"])
    assert Settings.from_config(cfg.pseudolabel).actor_resources == {"accelerator": 1.0}
    assert Settings.from_config(load_config(SHAPES).pseudolabel).actor_resources == {}
    records = [{"key": "a", "status": "labeled", "reason": None, "teacher_node": "n1", "instances": 1},
               {"key": "b", "status": "no_match", "reason": "no_region", "teacher_node": "n2"},
               {"key": "c", "status": "rejected", "reason": "corrupt_image"}]
    assert totals(records)["teacher_nodes"] == {"n1": 1, "n2": 1}
