"""The Ray cluster a driver works on: how it is joined, what it holds, where it stores.

With `Settings.ray_address` set (``SWEEPER_RAY_ADDRESS`` or ``RAY_ADDRESS``), a driver joins
that cluster and fails within ``ray_connect_timeout_s`` naming the address when nobody
answers there. Without it, a driver starts a local cluster of its own, sized by
`local_node()`. It never joins whatever cluster ``/tmp/ray/ray_current_cluster`` names:
`ray.init()` with no address would, and that file outlives a cluster killed without
``ray stop``, so a driver retried a dead address for ever.

What a job asks for is checked against what the cluster holds (`shortfall`): by the service
before it queues a job on a local cluster, by the driver once it has joined a remote one.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Literal

import ray

from sweeper.settings import Settings

if TYPE_CHECKING:
    from sweeper.launch_request import LaunchRequest
    from sweeper.spec import Resources

log = logging.getLogger(__name__)


class RayUnreachable(ConnectionError):
    """No Ray cluster answered at the configured address in time."""


class NotEnoughResources(RuntimeError):
    """A job asks for more CPUs or GPUs than the cluster can ever give it."""


@dataclass(frozen=True)
class NodeResources:
    cpu: float
    gpu: float

    def __str__(self) -> str:
        return f"{self.cpu:g} CPUs, {self.gpu:g} GPUs"


@cache
def local_node() -> NodeResources:
    """What a local cluster of a driver on this machine holds: the CPUs this process may
    run on and the GPUs it sees (CUDA_VISIBLE_DEVICES applies)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return NodeResources(cpu=float(cpus or 1), gpu=float(_cuda_device_count()))


def _cuda_device_count() -> int:
    """``torch.cuda.device_count()``, and 0 without importing torch where the CUDA driver's
    library (libcuda.so.1, which CUDA loads) is missing: there is no GPU to count there. The
    service checks every sweep and run it starts against this node, and torch's import
    would cost that seconds of CPU on every machine without GPUs."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    import torch

    return torch.cuda.device_count()


def cluster_nodes() -> list[NodeResources]:
    """The resources of every live node of the cluster this process has joined."""
    return [
        NodeResources(cpu=node["Resources"].get("CPU", 0.0), gpu=node["Resources"].get("GPU", 0.0))
        for node in ray.nodes()
        if node.get("Alive")
    ]


def nodes_that_fit(each: NodeResources) -> list[str]:
    """The ids of the live nodes that one task of ``each`` fits on (by their totals)."""
    return [
        node["NodeID"]
        for node in ray.nodes()
        if node.get("Alive")
        and node["Resources"].get("CPU", 0.0) >= each.cpu
        and node["Resources"].get("GPU", 0.0) >= each.gpu
    ]


@dataclass(frozen=True)
class Shortfall:
    """Why a job cannot run on a cluster: the resource at fault (`count`: one task fits a
    node but not all of them at once) and the reason, to follow the tasks' name ("a trial
    asks for 2 GPUs; ...")."""

    resource: Literal["cpu", "gpu", "count"]
    reason: str


def shortfall(
    nodes: list[NodeResources], *, each: NodeResources, count: int = 1
) -> Shortfall | None:
    """Why ``count`` tasks of ``each`` (trials, training workers) cannot all run at once on
    ``nodes``, each task on one node; None when they can."""
    where = "; ".join(sorted({_describe(n, nodes) for n in nodes})) or "no live node"
    for resource, unit in (("gpu", "GPU"), ("cpu", "CPU")):
        asked = getattr(each, resource)
        largest = max((getattr(n, resource) for n in nodes), default=0.0)
        if asked > largest:
            reason = f"asks for {_amount(asked, unit)}; the largest node has {largest:g} ({where})"
            return Shortfall("gpu" if resource == "gpu" else "cpu", reason)
    fits = sum(min(_times(n.cpu, each.cpu), _times(n.gpu, each.gpu)) for n in nodes)
    if fits < count:
        need = f"{_amount(count * each.cpu, 'CPU')} and {_amount(count * each.gpu, 'GPU')}"
        return Shortfall("count", f"need {need} at once; the cluster fits {fits:g} ({where})")
    return None


def trial_shortfall(resources: Resources, nodes: list[NodeResources]) -> tuple[str, str] | None:
    """(field of the sweep spec, reason) when one trial asking for ``resources`` fits no
    node of ``nodes``: Tune would keep it pending for ever."""
    problem = shortfall(nodes, each=NodeResources(cpu=resources.cpu, gpu=resources.gpu))
    if problem is None:
        return None
    field = "resources" if problem.resource == "count" else f"resources.{problem.resource}"
    return field, f"a trial {problem.reason}"


def worker_resources(request: LaunchRequest) -> NodeResources:
    """What each training worker of a run takes: one CPU, and its share of GPUs."""
    return NodeResources(cpu=1.0, gpu=request.gpus_per_worker)


def run_shortfall(request: LaunchRequest, nodes: list[NodeResources]) -> tuple[str, str] | None:
    """(field of the request, reason) when the run's workers cannot all run at once on
    ``nodes``: Ray Train starts them together, so the run would wait for ever."""
    problem = shortfall(nodes, each=worker_resources(request), count=request.workers)
    if problem is None:
        return None
    if problem.resource == "gpu":
        return "gpus_per_worker", f"each worker {problem.reason}"
    if problem.resource == "cpu":
        return "workers", f"each worker {problem.reason}"
    return "workers", f"{request.workers} workers {problem.reason}"


def _amount(value: float, unit: str) -> str:
    return f"{value:g} {unit}{'' if value == 1 else 's'}"


def _times(capacity: float, asked: float) -> float:
    return float("inf") if asked <= 0 else capacity // asked


def _describe(node: NodeResources, nodes: list[NodeResources]) -> str:
    return f"{sum(n == node for n in nodes)} node(s) of {node}"


def ensure_ray(settings: Settings) -> None:
    """Join the configured cluster (bounded: `RayUnreachable` naming the address when it
    does not answer within ``ray_connect_timeout_s``), else start a local one of our own."""
    if ray.is_initialized():
        return
    address = settings.ray_address
    if address is not None:
        _wait_until_reachable(address, settings.ray_connect_timeout_s)
    # ray.init puts a SIGTERM handler of its own (a bare sys.exit) in place of the driver's.
    handler = signal.getsignal(signal.SIGTERM)
    try:
        if address is None:
            node = local_node()
            # "local": a new cluster, whatever ray_current_cluster says.
            ray.init(
                address="local",
                num_cpus=int(node.cpu),
                num_gpus=int(node.gpu),
                include_dashboard=False,
                log_to_driver=False,
            )
        else:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
    finally:
        if threading.current_thread() is threading.main_thread() and handler is not None:
            signal.signal(signal.SIGTERM, handler)


def _wait_until_reachable(address: str, timeout_s: float) -> None:
    """Until the cluster's port at ``address`` accepts a connection. Ray's own connect
    retries a dead address far longer (minutes, and it ignores SIGTERM meanwhile)."""
    host, port = host_and_port(address)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, timeout_s)):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise RayUnreachable(
                    f"no Ray cluster answers at {address} ({host}:{port}) after"
                    f" {timeout_s:g} s: {e.strerror or e}"
                ) from None
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def host_and_port(address: str) -> tuple[str, int]:
    """``host:port``, ``ray://host:port`` or ``auto`` (the cluster Ray would find here)."""
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address  # no public API

        resolved = canonicalize_bootstrap_address("auto")
        if resolved is None:
            raise RayUnreachable("Ray address auto: no Ray cluster runs on this machine")
        address = resolved
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"Ray address {address!r} is not host:port, ray://host:port or auto")
    return host.strip("[]"), int(port)
