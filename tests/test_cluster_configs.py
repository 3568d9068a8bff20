"""The cluster and infrastructure files, checked without a cloud, a cluster or a docker engine.

Every YAML parses; the Ray cluster-launcher configs validate against the schema shipped inside the
installed ray package; the KubeRay manifests carry the fields the operator needs and this project
relies on; the images install exactly the pins of pyproject.toml; nothing opens a dashboard, job
API or tracking server to a public address, and no credential is in the repository.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import ray
import yaml
from jsonschema import validate
from omegaconf import OmegaConf

from xpl.config import load_config
from xpl.stages.registry import STAGES

REPO = Path(__file__).resolve().parents[1]
CLUSTER, INFRA = REPO / "cluster", REPO / "infra"
SHARED = "/mnt/xpl"
LAUNCHER_CONFIGS = sorted(CLUSTER.glob("*.yaml"))
CLOUD_CONFIGS = [CLUSTER / "aws.yaml", CLUSTER / "gcp.yaml"]
STAGE_JOBS = {stage.job for stage in STAGES if stage.job}


def documents(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def manifests(kind: str) -> list[dict]:
    return [d for p in sorted((CLUSTER / "kuberay").glob("*.yaml")) for d in documents(p) if d["kind"] == kind]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def pin(requirements: list[str], name: str) -> str:
    (found,) = [r for r in requirements if re.split(r"[\[=<>~ ]", r, maxsplit=1)[0] == name]
    return found


@pytest.mark.parametrize("path", sorted([*CLUSTER.rglob("*.yaml"), *INFRA.rglob("*.yaml")]), ids=str)
def test_every_yaml_parses(path):
    docs = documents(path)
    assert docs and all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_validates_against_rays_schema(path):
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    (config,) = documents(path)
    validate(config, schema)
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert workers and all(t["min_workers"] == 0 for t in workers), "workers autoscale from 0"
    assert config["idle_timeout_minutes"] > 0


@pytest.mark.parametrize("path", CLOUD_CONFIGS, ids=lambda p: p.name)
def test_cloud_launcher_config_gpu_spot_workers_shared_mount_token_auth_loopback_dashboard(path):
    (config,) = documents(path)
    head_type = config["available_node_types"][config["head_node_type"]]
    assert head_type["resources"]["GPU"] == 0
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    for worker in workers:
        assert worker["resources"]["GPU"] >= 1
        node_config = worker["node_config"]
        spot = (node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
                or node_config.get("scheduling", {}).get("provisioningModel") == "SPOT")
        assert spot, f"{path.name}: worker nodes are spot / preemptible"

    docker = config["docker"]
    assert not docker["image"].startswith("rayproject/"), "the project's image, not a stock Ray image"
    options = " ".join(docker["run_options"])
    assert f"-v {SHARED}:{SHARED}" in options, "the shared filesystem at the same path in every container"
    assert "RAY_AUTH_MODE=token" in options and "RAY_AUTH_TOKEN_PATH=/run/secrets/" in options
    assert "--env-file /home/ubuntu/.xpl/mlflow.env" in options, "the MLflow login from a secret, as env"
    init = " ".join(config["initialization_commands"])
    assert "mount -t nfs" in init and SHARED in init
    assert len(re.findall(r"secretsmanager get-secret-value|gcloud secrets versions access", init)) == 2, (
        "the Ray token and the MLflow login from the secret store")

    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start, "dashboard and job API on loopback only"
    assert "--autoscaling-config=" in head_start


def test_fake_multinode_config_has_an_accelerator_worker_type_from_zero():
    (config,) = documents(CLUSTER / "fake_multinode.yaml")
    assert config["provider"]["type"] == "fake_multinode"
    (worker,) = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert worker["resources"]["accelerator"] == 1 and worker["min_workers"] == 0 and worker["max_workers"] >= 2


def test_raycluster_fields_the_operator_and_this_project_rely_on():
    (cluster,) = manifests("RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["metadata"]["name"]
    spec = cluster["spec"]
    ray_pin = pin(pyproject()["project"]["dependencies"], "ray")
    assert spec["rayVersion"] == ray_pin.split("==")[1]
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert spec["authOptions"] == {"mode": "token"}, "Ray token auth, the token in an operator-made Secret"

    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress", False)
    groups = [head, *spec["workerGroupSpecs"]]
    for group in groups:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), "rayStartParams are strings"
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] and container["name"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert claims[mounts[SHARED]] == "xpl-shared", "the shared filesystem at the same path in every pod"
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and group["minReplicas"] == 0 < group["maxReplicas"]
        assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    (claim,) = [d for d in documents(CLUSTER / "kuberay" / "shared-volume.yaml") if d["kind"] == "PersistentVolumeClaim"]
    assert claim["metadata"]["name"] == "xpl-shared" and claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_rayjobs_cover_every_stage_job_on_the_raycluster():
    (cluster,) = manifests("RayCluster")
    scripts = set()
    for job in manifests("RayJob"):
        assert job["apiVersion"] == "ray.io/v1"
        spec = job["spec"]
        assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
        match = re.fullmatch(r"python /opt/xpl/jobs/(\w+)\.py --config /opt/xpl/(configs/\S+\.yaml)", spec["entrypoint"])
        assert match, spec["entrypoint"]
        assert (REPO / match.group(2)).is_file()
        scripts.add(match.group(1))
    existing = {p.stem for p in (REPO / "jobs").glob("*.py")} & STAGE_JOBS
    assert existing <= scripts == STAGE_JOBS


def test_cluster_preset_puts_outputs_on_the_shared_filesystem_and_checkpoints_in_the_object_store():
    cfg = load_config(REPO / "configs" / "oi_cc.yaml")
    for key in ("output_dir", "pseudolabel.output", "pseudolabel.teacher", "teacher.init", "data.train_json"):
        assert str(OmegaConf.select(cfg, key)).startswith(f"{SHARED}/"), key
    for key in ("pretrain.train.storage_path", "teacher.train.storage_path", "data.captions"):
        assert re.match(r"(s3|gs)://", OmegaConf.select(cfg, key)), key
    assert cfg.tracking.uri == "http://mlflow.xpl.svc:5000"


def dockerfile_pins(path: Path) -> list[str]:
    """The quoted requirements of the Dockerfile's first `pip install`."""
    text = path.read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("RUN pip install")][:1]
    return re.findall(r'"([^"]+)"', line.split("&&")[0])


def test_project_image_installs_exactly_the_pins_of_pyproject():
    project = pyproject()["project"]
    assert sorted(dockerfile_pins(INFRA / "Dockerfile")) == sorted(
        project["dependencies"] + project["optional-dependencies"]["cloud"])
    assert re.search(r"^FROM nvidia/cuda:\S+-runtime-ubuntu\S+$", (INFRA / "Dockerfile").read_text(), re.M)
    assert pyproject()["project"]["requires-python"].startswith(">=3.11")
    assert "python3.11" in (INFRA / "Dockerfile").read_text()


def test_mlflow_server_image_pins_mlflow_as_pyproject_and_runs_basic_auth_on_postgres():
    assert pin(dockerfile_pins(INFRA / "mlflow" / "Dockerfile"), "mlflow") == pin(
        pyproject()["project"]["dependencies"], "mlflow")
    start = (INFRA / "mlflow" / "start.sh").read_text()
    assert "--app-name basic-auth" in start and "postgresql://" in start and "--artifacts-destination" in start
    (compose,) = documents(INFRA / "mlflow" / "compose.yaml")
    assert compose["services"]["mlflow"]["ports"] == ["${MLFLOW_BIND_ADDRESS:-127.0.0.1}:5000:5000"]
    assert compose["services"]["db"]["image"].startswith("postgres:") and "ports" not in compose["services"]["db"]
    k8s = documents(INFRA / "k8s" / "mlflow.yaml")
    (service,) = [d for d in k8s if d["kind"] == "Service" and d["metadata"]["name"] == "mlflow"]
    assert service["spec"]["type"] == "ClusterIP"


def test_nothing_is_exposed_publicly_and_no_credential_is_committed():
    k8s = [d for p in [*CLUSTER.rglob("*.yaml"), *INFRA.rglob("*.yaml")] for d in documents(p) if "kind" in d]
    assert not [d for d in k8s if d["kind"] == "Ingress"]
    assert not [d for d in k8s if d["kind"] == "Service" and d["spec"].get("type") in ("LoadBalancer", "NodePort")]
    assert not [d for d in k8s if d["kind"] == "Secret"], "secrets are created by hand, never committed"
    for path in [*CLUSTER.rglob("*"), *INFRA.rglob("*")]:
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----", text), path
    for line in (INFRA / "mlflow" / "example.env").read_text().splitlines():
        if re.match(r"(POSTGRES_PASSWORD|MLFLOW_AUTH_ADMIN_PASSWORD|MLFLOW_FLASK_SERVER_SECRET_KEY|AWS_SECRET)", line):
            assert line.endswith("="), f"example.env leaves secrets empty: {line}"
    assert "/infra/mlflow/.env" in (REPO / ".gitignore").read_text().splitlines()
