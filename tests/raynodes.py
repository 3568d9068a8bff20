"""Ray nodes that a test starts and stops itself: `ray start --block` processes on loopback.

Every node runs in a session of its own with its own temp dir (short, under /tmp: Ray's socket
paths live there), so a test can stop exactly what it started: `stop()` terminates the `ray start`
process (which shuts down the processes it started), then kills by pid whatever of its process
tree is left (Ray worker processes start sessions of their own, so a process group does not hold
them) and removes its temp dir; `kill()` is a node lost without warning (SIGKILL to the whole tree).
`ray stop` is never used: it stops every Ray instance on the machine. An own temp dir also keeps
`ray start` from writing /tmp/ray/ray_current_cluster, which a later plain `ray.init()` anywhere
on the machine would try to join after this head is gone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import psutil

BIN = Path(sys.executable).parent
# The pseudo-labeling job on the shapes world, as `ray job submit --working-dir <repo>` runs it.
PSEUDOLABEL_JOB = ["python", "jobs/pseudolabel.py", "--config", "configs/shapes.yaml"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env(**extra: str) -> dict[str, str]:
    """The environment of every Ray process a test starts: no auth, no usage stats, no inherited address.

    Idle worker processes are kept for a minute: a raylet keeps at most as many idle workers as its
    node has CPUs and kills the others after one second, and on a 2-CPU test node the actors alone
    exceed that, so every task would start a fresh Python process (tens of seconds on a busy machine).
    """
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
           "RAY_idle_worker_killing_time_threshold_ms": "60000", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll `check` until it returns something truthy; raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class RayNode:
    """One `ray start --block` process (head or worker) and everything it started."""

    proc: subprocess.Popen
    temp_dir: str
    log_path: Path
    _log: Any = field(repr=False)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def processes(self) -> list[psutil.Process]:
        """The `ray start` process and all its descendants (Ray workers start sessions of their own)."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """Lose the node: SIGKILL to every process it started, no shutdown of any kind."""
        for process in self.processes():
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait()

    def stop(self) -> None:
        """Terminate the node (which shuts down what it started), then kill what is left; remove its temp dir."""
        left = self.processes()
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for process in left:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        self._log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_node(log_path: Path, args: list[str], env: Mapping[str, str]) -> RayNode:
    """`ray start --block --temp-dir <own> ARGS` in a new process group."""
    temp_dir = tempfile.mkdtemp(prefix="xplray-", dir="/tmp")
    log = open(log_path, "w")
    proc = subprocess.Popen([str(BIN / "ray"), "start", "--block", "--temp-dir", temp_dir, "--disable-usage-stats",
                             *args], env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return RayNode(proc, temp_dir, log_path, log)


@dataclass
class Head:
    """A head node: its process, GCS address and job API URL."""

    node: RayNode
    gcs_address: str
    url: str


def start_head(log_dir: Path, *, num_cpus: float, resources: Optional[Mapping[str, float]] = None,
               env: Optional[Mapping[str, str]] = None, port: Optional[int] = None,
               extra_args: tuple[str, ...] = ()) -> Head:
    """A head (GCS on `port`, a free one by default) with dashboard and job API on 127.0.0.1; returns once
    the job API answers."""
    ports = {name: free_port() for name in ("dashboard", "client", "agent")}
    ports["port"] = port or free_port()
    args = ["--head", "--port", str(ports["port"]), "--num-cpus", str(num_cpus), "--include-dashboard", "true",
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(ports["dashboard"]),
            "--ray-client-server-port", str(ports["client"]), "--dashboard-agent-listen-port", str(ports["agent"]),
            *(["--resources", json.dumps(dict(resources))] if resources else []), *extra_args]
    node = start_node(log_dir / "head.log", args, env or ray_env())
    url = f"http://127.0.0.1:{ports['dashboard']}"

    def answers() -> bool:
        if not node.alive():
            raise RuntimeError(f"ray head exited: {node.log_tail()}")
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2).read()
            return True
        except OSError:
            return False

    try:
        wait_for(answers, 90, "the ray head's job API")
    except BaseException:
        node.stop()
        raise
    return Head(node, f"127.0.0.1:{ports['port']}", url)


def start_worker(log_path: Path, head: Head, *, num_cpus: float, resources: Mapping[str, float],
                 env: Optional[Mapping[str, str]] = None) -> RayNode:
    """A second node joining `head`, with custom resources."""
    args = ["--address", head.gcs_address, "--num-cpus", str(num_cpus), "--resources", json.dumps(dict(resources)),
            "--dashboard-agent-listen-port", str(free_port())]
    return start_node(log_path, args, env or ray_env())


def state_api(call: Callable[..., Any], *args: Any, attempts: int = 15, **kwargs: Any) -> Any:
    """A Ray state API call, retried while the dashboard is unavailable: it answers its version before
    its state API is up, and drops requests now and then on a busy machine."""
    from ray.util.state.exception import ServerUnavailable

    for _ in range(attempts - 1):
        try:
            return call(*args, **kwargs)
        except ServerUnavailable:
            time.sleep(2)
    return call(*args, **kwargs)


def alive_nodes(url: str) -> list[Any]:
    """The cluster's alive nodes, from the state API of the head at `url`."""
    from ray.util.state import list_nodes

    return state_api(list_nodes, address=url, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)


def submit_job(head: Head, submission_id: str, entrypoint: list[str], working_dir: Path,
               job_env: Optional[Mapping[str, str]] = None) -> None:
    """`ray job submit --no-wait --working-dir DIR -- ENTRYPOINT` to the head's job API, with `job_env`
    as the job's runtime environment variables."""
    runtime_env = ["--runtime-env-json", json.dumps({"env_vars": dict(job_env)})] if job_env else []
    subprocess.run([str(BIN / "ray"), "job", "submit", "--address", head.url, "--submission-id", submission_id,
                    "--no-wait", "--working-dir", str(working_dir), *runtime_env, "--", *entrypoint],
                   env=ray_env(), check=True, capture_output=True, text=True, timeout=120)


def wait_job(head: Head, submission_id: str, timeout: float) -> tuple[str, str]:
    """Wait for the job to end; return its final status and its logs."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(head.url)
    status = wait_for(lambda: (s := client.get_job_status(submission_id)).is_terminal() and s, timeout,
                      f"job {submission_id}", interval=1.0)
    return str(status), client.get_job_logs(submission_id)
