"""A node's kernel warm-up, beside Ray Tune's start: an FP8 sweep's widths tuned once per node.

An FP8 trial's first steps tune its kernels and keep the choices on disk (`kernels.tuning`).
Without a warm-up, every trial of a width would start cold at once and each would tune the
same shapes while the others load the GPU: slower, and noisier choices. So the engine
submits one task per node before it builds the Tuner (`warm_kernel_caches`); the task
tunes every width of the sweep, alone on the GPU, while Tune starts its trials, and each
trial waits for its own node's warm-up before it trains (`wait_for_warm_up`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from models import TrainConfig
from sweeper.cluster import NodeResources, nodes_that_fit
from sweeper.jobs import traceback_tail
from sweeper.spec import SweepSpec, TrialPlan

log = logging.getLogger(__name__)

# A trial waits this long at most for the sweep's kernel warm-up (seconds; a cold one takes
# ~35 s on one H200 for three proxy widths), then goes on and tunes what it needs itself.
WARM_UP_WAIT_S = 600.0


def warm_up_configs(spec: SweepSpec, widths: Iterable[int]) -> list[dict[str, Any]]:
    """What the warm-up trains at each width: the sweep's trial there at its base values (the
    kernels' shapes depend on the width and the run's shape, not on LR or WD), as JSON for
    the task's arguments."""
    values = {"lr": spec.train.lr, "wd": spec.train.wd}
    return [spec.trial_config(w, values).model_dump(mode="json") for w in sorted(set(widths))]


def warm_up_widths(configs: list[dict[str, Any]]) -> dict[int, float]:
    """One per width, one after another in one process: the kernels' tuning times each
    candidate alone on the GPU, and the packed trials that follow start from the cache.
    Returns each width's seconds. (This module imports no Ray Tune, Optuna or engine, so
    the warm-up's worker starts seconds sooner than a trial's.)"""
    # The trainer (torch) here, in the task's worker: the driver imports this module too.
    from models.train import warm_up

    runs = [TrainConfig.model_validate(c) for c in configs]
    return {run.model.width: warm_up(run) for run in runs}


def wait_for_warm_up(warm_up: ray.ObjectRef | None, timeout_s: float = WARM_UP_WAIT_S) -> None:
    """Wait for a node's kernel warm-up, if it has one. The warm-up only saves time: if it
    fails, or is not done within ``timeout_s``, the trial goes on and tunes what it needs
    itself (its own error, if any, is the one to report)."""
    if warm_up is None:
        return
    started = time.monotonic()
    try:
        ray.get(warm_up, timeout=timeout_s)
    except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as e:
        log.warning("going on without the kernel warm-up: %s", traceback_tail(str(e)))
    log.info("waited %.1f s for the kernel warm-up", time.monotonic() - started)


def warm_kernel_caches(spec: SweepSpec, remaining: list[TrialPlan]) -> dict[str, ray.ObjectRef]:
    """Start tuning each width's FP8 kernels once on every node a trial fits on (the cache
    is each machine's own), one Ray task per node; returns their refs by node id (none when
    there is nothing to tune: BF16 and CPU trials).

    Otherwise every trial of a width starts at once, cold, and each tunes the same shapes
    while the others load the GPU (slower, and noisier choices). The tasks are submitted
    before Tune starts, so each holds its GPU share first; Tune's start and the trials'
    worker starts (~13 s on one node) then overlap them, and each trial waits for its node's
    before training (`wait_for_warm_up`), so that no kernel is timed while trials load it.
    """
    if spec.train.precision != "fp8" or spec.resources.gpu == 0:
        return {}
    configs = warm_up_configs(spec, (p.width for p in remaining))
    task = ray.remote(warm_up_widths)
    share = NodeResources(cpu=spec.resources.cpu, gpu=min(spec.resources.gpu, 1.0))
    return {
        node: task.options(
            num_cpus=share.cpu,
            num_gpus=share.gpu,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
        ).remote(configs)
        for node in nodes_that_fit(share)
    }


def log_warm_up(warm_up: dict[str, ray.ObjectRef]) -> None:
    """Each node's warm-up seconds per width, or its error, for the driver's log."""
    for node, ref in warm_up.items():
        try:
            seconds = ray.get(ref, timeout=0)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as e:
            log.warning("node %s: no kernel warm-up: %s", node, traceback_tail(str(e)))
        else:
            per_width = {w: round(s, 1) for w, s in seconds.items()}
            log.info("node %s: kernel warm-up, seconds per width: %s", node, per_width)
