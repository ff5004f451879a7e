"""Launch: the full-size run with the transferred values, on Ray Train.

`sweeper.launch_request` says what to run and which TrainConfig that makes; `run_launch`
(in the run's driver process) trains it with a `TorchTrainer` of ``workers`` processes: DDP,
or FSDP2 when the model and its Adam state do not fit one GPU. Every ``checkpoint_every``
steps rank 0 reports a checkpoint to Ray's storage path; when a worker dies, Ray Train
restarts the group and every rank resumes from the latest checkpoint (`models.train`
continues with the same batches, schedule and curve).
A callback on Ray Train's controller streams rank 0's points into the database, retrying while
the database refuses writes (the workers wait at their next report meanwhile).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray.train.torch import TorchTrainer
from ray.train.v2.api.callback import UserCallback

import db
from models import TrainConfig
from models.compressed_adam import moment_bytes_per_param
from models.gpt import GPT, Block
from models.train import Checkpointing, MetricPoint, Parallel, resolve_device, train
from sweeper.cluster import NotEnoughResources, cluster_nodes, ensure_ray, run_shortfall
from sweeper.jobs import DatabaseHandle, Job, Periodic, writes
from sweeper.launch_request import LaunchRequest, Strategy
from sweeper.settings import Settings

log = logging.getLogger(__name__)

# Bytes a parameter costs in training besides its Adam moments: fp32 master weight, gradient.
WEIGHT_AND_GRAD_BYTES_PER_PARAM = 8
# FSDP once the parameter state alone would take more than this share of one GPU.
FSDP_MEMORY_SHARE = 0.5
CHECKPOINT_FILE = "state.pt"


def choose_strategy(strategy: Strategy, config: TrainConfig, device: torch.device) -> Strategy:
    """FSDP when the parameters, gradients and Adam state (in ``config.optimizer_state``'s
    precision) would crowd one GPU, else DDP."""
    if strategy != "auto":
        return strategy
    if device.type != "cuda":
        return "ddp"
    gpu_bytes = torch.cuda.get_device_properties(device).total_memory
    per_param = WEIGHT_AND_GRAD_BYTES_PER_PARAM + moment_bytes_per_param(config.optimizer_state)
    needed = per_param * config.model.parameter_count
    return "fsdp" if needed > FSDP_MEMORY_SHARE * gpu_bytes else "ddp"


def wrap_model(model: GPT, strategy: Strategy, device: torch.device) -> torch.nn.Module:
    """DDP, or FSDP2 with every block sharded on its own and the rest at the root."""
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            assert isinstance(block, Block)
            fully_shard(block)
        fully_shard(model)
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


# The key of a resumed run's first report that carries its checkpoint's curve (`train_worker`).
RESTORED_CURVE = "restored_curve"


def _metrics(point: MetricPoint, resumed_from: int) -> dict[str, Any]:
    return dataclasses.asdict(point) | {"resumed_from": resumed_from}


def train_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: its shard of the data-parallel run, checkpoints from rank 0."""
    config = TrainConfig.model_validate(loop_config["train"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device() if config.device == "cuda" else resolve_device("cpu")
    config = config.model_copy(update={"device": str(device)})
    strategy = choose_strategy(loop_config["strategy"], config, device)

    restored, resumed_from = None, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            restored = torch.load(Path(path) / CHECKPOINT_FILE, weights_only=False)
        resumed_from = restored["step"]

    # A driver killed after Ray persisted a checkpoint but before its recorder stored that
    # report's point would lose the point: the resumed run starts after it. So the first
    # report after a restore also carries the curve the checkpoint holds (stored once: the
    # recorder's insert skips the steps it has).
    unstored: list[dict[str, Any]] = list(restored["curve"]) if restored is not None else []

    def metrics(point: MetricPoint) -> dict[str, Any]:
        nonlocal unstored
        out = _metrics(point, resumed_from) | ({RESTORED_CURVE: unstored} if unstored else {})
        unstored = []
        return out

    def report(point: MetricPoint) -> None:
        ray.train.report(metrics(point))

    def save(point: MetricPoint, state: dict[str, Any]) -> None:
        if rank != 0:  # every rank built the full state (FSDP gathers); rank 0 keeps it
            ray.train.report(metrics(point))
            return
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(state, Path(tmp) / CHECKPOINT_FILE)
            ray.train.report(metrics(point), checkpoint=ray.train.Checkpoint.from_directory(tmp))

    train(
        config,
        report,
        parallel=Parallel(
            rank, world_size, functools.partial(wrap_model, strategy=strategy, device=device)
        ),
        checkpointing=Checkpointing(loop_config["checkpoint_every"], save, restored),
    )


class RunRecorder(DatabaseHandle, UserCallback):
    """On Ray Train's controller: writes rank 0's points and checkpoints to the run's rows,
    counts resumes, and stops the run when it is cancelled."""

    def __init__(self, database: db.Database, run_id: int, settings: Settings):
        super().__init__(database, settings)
        self.run_id = run_id
        self.resumes_noted: set[int] = set()

    @writes
    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        point = metrics[0]
        resumed_from = int(point.get("resumed_from", 0))
        if resumed_from and resumed_from not in self.resumes_noted:
            db.note_run_resumed(self.database, run_id=self.run_id, step=resumed_from)
            self.resumes_noted.add(resumed_from)  # once written: a retry writes it again
        restored = point.get(RESTORED_CURVE, [])
        db.add_metric_points(self.database, run_id=self.run_id, points=[*restored, point])
        if checkpoint is not None:
            db.set_run_checkpoint(
                self.database, run_id=self.run_id, checkpoint_path=checkpoint.path
            )
        if db.get_run(self.database, run_id=self.run_id).status is db.JobStatus.CANCELLED:
            raise RunCancelled(f"run {self.run_id} was cancelled")


class RunCancelled(Exception):
    pass


class CancelWatch:
    """Ends a cancelled run's driver that `fit` still holds ``grace_s`` after the cancel.
    Training workers see a cancel at their next report and stop with their checkpoints;
    a run whose workers never started (waiting for resources) reports nothing, and Ray
    Train's own abort of a starting worker group can take minutes. Exiting is safe: the
    run is recorded cancelled already, and Ray ends the actors this driver owns."""

    def __init__(self, job: Job, grace_s: float):
        self.job, self.grace_s = job, grace_s
        self.seen_at: float | None = None

    def __call__(self) -> None:
        if self.seen_at is None:
            if self.job.status() is db.JobStatus.CANCELLED:
                self.seen_at = time.monotonic()
        elif time.monotonic() - self.seen_at >= self.grace_s:
            log.warning(
                "%s: cancelled %.0f s ago and still not stopped; exiting", self.job, self.grace_s
            )
            logging.shutdown()
            os._exit(0)


def run_launch(database: db.Database, run_id: int, settings: Settings) -> db.JobStatus:
    """Drive run ``run_id`` to its end on Ray Train; returns the status it ends in. Any
    error, from reading the run's config on, fails the run with its reason."""
    job = Job(database, "run", run_id, settings)
    with job.driving():
        run = db.get_run(database, run_id=run_id)
        request = LaunchRequest.model_validate(run.config["launch"])
        config = TrainConfig.model_validate(run.config["train"])
        ensure_ray(job.settings)
        problem = run_shortfall(request, cluster_nodes())
        if problem is not None:
            raise NotEnoughResources(f"{problem[0]}: {problem[1]}")
        # Ray Train gives up on a worker group that cannot start within 60 s and counts it
        # as one of `max_failures`: on a cluster busy with sweeps a feasible run would fail
        # after four minutes. The controller reads this from the driver's environment.
        os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(job.settings.run_start_timeout_s)
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={
                "train": config.model_dump(mode="json"),
                "strategy": request.strategy,
                "checkpoint_every": request.checkpoint_every or config.eval_interval,
            },
            scaling_config=ray.train.ScalingConfig(
                num_workers=request.workers,
                use_gpu=request.gpus_per_worker > 0,
                resources_per_worker={"CPU": 1, "GPU": request.gpus_per_worker}
                if request.gpus_per_worker
                else {"CPU": 1},
            ),
            run_config=ray.train.RunConfig(
                name=f"run-{run_id}",
                storage_path=settings.ray_storage_path,
                failure_config=ray.train.FailureConfig(max_failures=3),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                callbacks=[RunRecorder(database, run_id, job.settings)],  # type: ignore[list-item]  # V2 type
            ),
        )
        watch = CancelWatch(job, grace_s=job.settings.stale_s)
        with Periodic(watch, job.settings.heartbeat_s, f"cancel watch {job}"):
            try:
                trainer.fit()
            except Exception:
                if job.status() is not db.JobStatus.CANCELLED:
                    raise  # `driving` records why
        if job.status() is db.JobStatus.CANCELLED:
            return db.JobStatus.CANCELLED
        return job.finish(db.JobStatus.COMPLETED)
    return job.status()  # the block failed: `driving` recorded why
