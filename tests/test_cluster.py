"""What a job asks of a Ray cluster against what the cluster holds (pure), and the forms of
a configured address."""

from __future__ import annotations

import pytest

from sweeper.cluster import NodeResources, host_and_port, shortfall

TWO_CPUS = NodeResources(cpu=2, gpu=0)
GPU_NODE = NodeResources(cpu=8, gpu=4)


def test_a_task_must_fit_one_node():
    assert shortfall([TWO_CPUS], each=NodeResources(cpu=1, gpu=0)) is None
    gpu = shortfall([TWO_CPUS, TWO_CPUS], each=NodeResources(cpu=1, gpu=0.25))
    assert gpu is not None and gpu.resource == "gpu"
    assert gpu.reason == "asks for 0.25 GPUs; the largest node has 0 (2 node(s) of 2 CPUs, 0 GPUs)"
    # 3 CPUs in all on two nodes is not 3 CPUs for one task.
    cpu = shortfall([TWO_CPUS, NodeResources(cpu=1, gpu=0)], each=NodeResources(cpu=3, gpu=0))
    assert cpu is not None and cpu.resource == "cpu" and "the largest node has 2" in cpu.reason
    assert shortfall([], each=NodeResources(cpu=1, gpu=0)) is not None


def test_tasks_that_run_together_must_all_fit_at_once():
    worker = NodeResources(cpu=1, gpu=1)
    assert shortfall([GPU_NODE, GPU_NODE], each=worker, count=8) is None
    many = shortfall([GPU_NODE, GPU_NODE], each=worker, count=9)
    assert many is not None and many.resource == "count"
    assert many.reason.startswith("need 9 CPUs and 9 GPUs at once; the cluster fits 8")
    # GPU-less workers are bounded by CPUs alone.
    assert shortfall([TWO_CPUS], each=NodeResources(cpu=1, gpu=0), count=2) is None
    assert shortfall([TWO_CPUS], each=NodeResources(cpu=1, gpu=0), count=3) is not None


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("10.0.0.5:6379", "10.0.0.5", 6379),
        ("ray://head:10001", "head", 10001),
        ("[::1]:6379", "::1", 6379),
    ],
)
def test_address_forms(address, host, port):
    assert host_and_port(address) == (host, port)


def test_a_malformed_address_says_what_is_expected():
    with pytest.raises(ValueError, match="not host:port, ray://host:port or auto"):
        host_and_port("head")
