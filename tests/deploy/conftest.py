"""Fixtures of the deployment tests: a real two-node Ray cluster started with `ray start`.

Both nodes run on this machine, each `ray start --block` in a session of its own, with its
own temp dir (so its session files, sockets and `ray_current_cluster` are its own) and its
own ports (so nothing collides with another test's local cluster, or with a cluster
someone else runs here). The cluster uses Ray's token authentication with a token of its
own, as a deployment does (`RAY_AUTH_MODE=token`, `RAY_AUTH_TOKEN`): whoever joins it, the
sweep drivers included, needs both in the environment (`RayCluster.client_env`).

Teardown kills exactly the processes these `ray start` calls spawned, never every Ray
process on the machine as `ray stop` would.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

START_TIMEOUT_S = 120
# The GCS declares a node dead after `period * threshold` without an answer to its health
# checks (Ray's defaults: 3 s * 5); shorter here, so a killed node's trials fail over sooner.
FAST_FAILURE_DETECTION = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}

# Asks the GCS for its nodes; run in a subprocess, so that Ray's auth settings (cached by
# Ray's C++ core once read) stay out of the test process.
_LIST_NODES = """
import json, sys
from ray._raylet import GcsClient
infos = GcsClient(address=sys.argv[1]).get_all_node_info(timeout=10)
print(json.dumps([
    {"node_id": i.hex(), "temp_dir": n.temp_dir, "alive": n.state == 0, "head": n.is_head_node}
    for i, n in infos.items()
]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RayNode:
    """One `ray start --block` process and everything it spawned."""

    name: str
    temp_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    node_id: str = ""
    # Every process seen in the node's tree, kept as psutil objects: those refuse to signal
    # a pid the system has since given to another process.
    seen: dict[int, psutil.Process] = field(default_factory=dict)

    def processes(self) -> list[psutil.Process]:
        """The `ray start` process and its descendants (raylet, agents, workers, ...)."""
        found: list[psutil.Process] = []
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.process.pid)
            found = [root, *root.children(recursive=True)]
        for proc in found:  # remembered, so orphans are killed too
            self.seen.setdefault(proc.pid, proc)
        return found

    def worker_dirs(self) -> list[str]:
        """The working directories of the node's Ray workers (a Tune trial's actor works in
        its trial's directory)."""
        dirs = []
        for proc in self.processes():
            with contextlib.suppress(psutil.Error, IndexError):
                if proc.cmdline()[0].startswith("ray::"):
                    dirs.append(proc.cwd())
        return dirs

    def kill(self) -> None:
        """SIGKILL the node's processes, as if its host had died: no graceful shutdown."""
        self.processes()
        procs = list(self.seen.values())
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(procs, timeout=15)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@dataclass
class RayCluster:
    address: str
    token: str
    head: RayNode
    workers: list[RayNode] = field(default_factory=list)

    @property
    def nodes(self) -> list[RayNode]:
        return [self.head, *self.workers]

    @property
    def client_env(self) -> dict[str, str]:
        """What a driver needs in its environment to join this cluster."""
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def list_nodes(self) -> list[dict[str, object]]:
        """Every node the GCS knows: id, temp dir, alive, head."""
        result = subprocess.run(
            [sys.executable, "-c", _LIST_NODES, self.address],
            env=os.environ | self.client_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"listing the cluster's nodes failed:\n{result.stderr[-2000:]}")
        nodes: list[dict[str, object]] = json.loads(result.stdout.splitlines()[-1])
        return nodes

    def alive_node_ids(self) -> set[str]:
        return {str(n["node_id"]) for n in self.list_nodes() if n["alive"]}

    def wait_until_up(self) -> None:
        """Until every node of ours is registered and alive; their node ids are noted."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            for node in self.nodes:
                if node.process.poll() is not None:
                    raise RuntimeError(f"`ray start` of {node.name} exited:\n{node.log()}")
            with contextlib.suppress(RuntimeError, ValueError, IndexError):
                by_dir = {str(n["temp_dir"]): n for n in self.list_nodes() if n["alive"]}
                if all(str(node.temp_dir) in by_dir for node in self.nodes):
                    for node in self.nodes:
                        node.node_id = str(by_dir[str(node.temp_dir)]["node_id"])
                        node.processes()
                    return
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {n.name}\n{n.log()}" for n in self.nodes)
                raise RuntimeError(f"the Ray cluster was not up in {START_TIMEOUT_S} s\n{logs}")
            time.sleep(1)


def _start_node(root: Path, name: str, token: str, cpus: int, args: list[str]) -> RayNode:
    temp_dir = root / name
    temp_dir.mkdir()
    log_path = root / f"{name}.log"
    env = os.environ | FAST_FAILURE_DETECTION
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    ports = {
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--metrics-export-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(),
    }
    command = [
        shutil.which("ray") or "ray",
        "start",
        "--block",
        f"--num-cpus={cpus}",
        "--num-gpus=0",
        "--node-ip-address=127.0.0.1",
        f"--temp-dir={temp_dir}",
        f"--object-store-memory={100 * 2**20}",
        "--disable-usage-stats",
        *(f"{flag}={port}" for flag, port in ports.items()),
        *args,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return RayNode(name=name, temp_dir=temp_dir, process=process, log_path=log_path)


@contextlib.contextmanager
def ray_cluster(workers: int = 1, *, cpus: int = 1) -> Iterator[RayCluster]:
    """A head and ``workers`` more nodes, ``cpus`` CPUs each, all on this machine."""
    if shutil.which("ray") is None:
        pytest.skip("the `ray` command is not on PATH (pip install 'ray[tune]')")
    from ray._private.utils import get_ray_client_dependency_error

    root = Path(tempfile.mkdtemp(prefix="rd-"))  # short: Unix socket paths are ~100 bytes
    token = secrets.token_hex(32)
    gcs_port = free_port()
    head_args = ["--head", f"--port={gcs_port}", "--include-dashboard=false"]
    if get_ray_client_dependency_error() is None:  # else no client server starts
        head_args.append(f"--ray-client-server-port={free_port()}")
    head = _start_node(root, "head", token, cpus, head_args)
    cluster = RayCluster(address=f"127.0.0.1:{gcs_port}", token=token, head=head)
    try:
        cluster.wait_until_up()  # a node joining an address nobody answers yet gives up
        for n in range(1, workers + 1):
            args = [f"--address={cluster.address}"]
            cluster.workers.append(_start_node(root, f"node{n}", token, cpus, args))
        cluster.wait_until_up()
        yield cluster
    finally:
        for node in reversed(cluster.nodes):
            node.kill()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def two_node_cluster() -> Iterator[RayCluster]:
    with ray_cluster(workers=1) as cluster:
        yield cluster
