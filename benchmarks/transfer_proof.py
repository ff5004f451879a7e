"""The transfer proof (issue 15), by one command: µS FP8 transfers from proxies to the target
widths, SP does not. Every step goes through the product: sweeps on Ray Tune with packed
trials, the SQL store, the transfer, launches on Ray Train.

    python -m benchmarks.transfer_proof --db benchmarks/results/transfer_proof.db \\
        --data .devdata/shakespeare.txt [--spec examples/proof.yaml] [--budget-s 420] \\
        [--export $OUT]

The spec (`examples/proof.yaml`; `examples/proof_tiny.yaml` runs on a CPU in minutes) names
the proxies and the sides (a parametrization and a precision each, with its LR range), the
target widths and how each is checked. The stages, each a job with a deterministic name:

1. ``NAME/<side>-proxies``: a grid sweep of each side over the proxy widths.
2. At each target width, for each side: ``NAME/<side>-w<W>``, the run launched with the
   transferred values; ``NAME/check-<side>-w<W>``, an LR sweep at the target around the
   transferred LR (out to the drift line's value too, so a drifting side's own optimum is
   inside), which measures how far the transfer is from the target's best; and the same
   run in each precision of the side's ``also_launch`` (µS in BF16: the FP8 vs BF16 gap).

A rerun picks up where the last one stopped: a completed job is skipped, a failed, cancelled
or orphaned one is resumed (a sweep re-runs only its unfinished trials; a run continues from
its checkpoint, or starts afresh as a new run of the same name where it has none on this
machine: by default the runs, minutes long, write none), an absent one is created.
``--budget-s`` stops the run after that many seconds: in-flight jobs are cancelled, which
leaves them resumable, and what is done and what remains is printed. Exit
status: 0 all done, 3 stopped with work left (rerun to continue), 1 a job failed (a rerun
resumes it).

Without ``RAY_ADDRESS`` it starts one local Ray cluster for all its jobs (from Python: no
``ray`` console script needed) and stops it at the end. The results, computed from the
database (`proof_results`), go to ``--results`` (benchmarks/results/transfer_proof.json)
after every invocation, complete or not, with a record of every invocation so far (read back
from that file: it travels with the tree). ``--export DIR`` copies the database, as one
consistent file, and the results there: what a machine call hands back, to put in place
before the next one. ``benchmarks/proof_report.py`` turns them into docs/EXPERIMENTS.md with
the plots.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Self

import optuna
import ray
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

import db
from benchmarks.common import environment
from models import TrainConfig
from models.config import Parametrization, Precision
from sweeper import service
from sweeper.jobs import ACTIVE, JobKind, driver_gone
from sweeper.launch_request import LaunchRequest
from sweeper.settings import DB_URL_VAR, Settings
from sweeper.spec import LogRange, Resources, SearchSpace, SweepSpec
from sweeper.transfer import DRIFT_THRESHOLD
from sweeper.views import LrCurve, SweepComparison

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SPEC = REPO / "examples" / "proof.yaml"
DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "transfer_proof.json"
DB_FILE = "proof.db"  # the database's name in an --export folder
POLL_S = 2.0
PROGRESS_EVERY_S = 30.0
STOP_WAIT_S = 120.0  # for cancelled jobs' drivers to stop (a run sees a cancel at a report)
EXIT_DONE, EXIT_FAILED, EXIT_STOPPED = 0, 1, 3

Job = db.Sweep | db.Run


# --- the spec ---------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Side(_Strict):
    """One parametrization in one precision: its proxies, what is launched from them."""

    parametrization: Parametrization
    precision: Precision
    lr: LogRange = Field(description="the proxies' base LR grid")
    also_launch: list[Precision] = Field(
        [], description="the transferred setting again in these precisions (µS FP8: bf16)"
    )

    @property
    def label(self) -> str:
        return f"{self.parametrization}-{self.precision}"


class Proxies(_Strict):
    train: TrainConfig = Field(description="the base run; each side sets its parametrization")
    widths: list[int] = Field(min_length=2)
    wd: list[float] = Field([0.0], min_length=1)
    resources: Resources = Field(default_factory=Resources)


class Check(_Strict):
    """The LR sweep at a target: the transferred LR x 2^(k·log2_step), |k·log2_step| <=
    log2_span, extended to the drift line's value at the target."""

    log2_span: float = Field(1.0, gt=0.0)
    log2_step: float = Field(0.5, gt=0.0)


class Targets(_Strict):
    widths: list[int] = Field(min_length=1)
    steps: int = Field(ge=1, description="of every run and check trial at a target")
    resources: Resources = Field(
        default_factory=Resources, description="of each check trial, and each run's worker"
    )
    check: Check = Field(default_factory=Check)
    # A run of a few minutes gains little from checkpoints, and at width 4096 each is ~10 GB
    # (fp32 weights and Adam's moments) on the machine's disk.
    checkpoint_every: int | None = Field(
        None, ge=1, description="steps between the runs' checkpoints; None: none"
    )


class Goals(_Strict):
    """The issue's targets, as the results check them."""

    drift: float = Field(DRIFT_THRESHOLD, description="|µS drift|, log2 per doubling")
    loss_gap: float = Field(0.005, description="transferred vs the check's best, relative")
    fp8_vs_bf16: float = Field(0.005, description="FP8 run vs BF16 run, relative")


class ProofSpec(_Strict):
    name: str = Field(min_length=1, max_length=100, description="every job's name starts so")
    proxies: Proxies
    sides: list[Side] = Field(min_length=1)
    targets: Targets
    goals: Goals = Field(default_factory=Goals)

    @model_validator(mode="after")
    def _distinct_sides(self) -> Self:
        labels = [s.label for s in self.sides]
        if len(set(labels)) != len(labels):
            raise ValueError(f"sides must differ in parametrization or precision: {labels}")
        return self

    @classmethod
    def load(cls, path: str | Path, *, data: str | None = None) -> ProofSpec:
        """Read a YAML spec; ``data`` replaces the proxies' data file. A file path is made
        absolute: Ray runs each trial in a directory of its own."""
        raw: dict[str, Any] = yaml.safe_load(Path(path).read_text())
        train = raw.setdefault("proxies", {}).setdefault("train", {})
        if data is not None:
            train["data"] = data
        if train.get("data", "stdlib") != "stdlib":
            train["data"] = str(Path(train["data"]).resolve())
        return cls.model_validate(raw)


# --- the stages -------------------------------------------------------------------------

StageRole = Literal["proxies", "run", "check"]


@dataclass(frozen=True)
class Stage:
    name: str
    role: StageRole
    side: Side
    precision: Precision  # of a run: the side's or one of its also_launch
    width: int | None = None  # the target's; None for proxies

    @property
    def kind(self) -> JobKind:
        return "run" if self.role == "run" else "sweep"


def plan(spec: ProofSpec) -> list[Stage]:
    """Every stage, in the order they are started when ready: proxies, then each target."""
    stages = [
        Stage(f"{spec.name}/{side.label}-proxies", "proxies", side, side.precision)
        for side in spec.sides
    ]
    for width in spec.targets.widths:
        for side in spec.sides:
            run, check = (
                f"{spec.name}/{side.label}-w{width}",
                f"{spec.name}/check-{side.label}-w{width}",
            )
            stages.append(Stage(run, "run", side, side.precision, width))
            stages.append(Stage(check, "check", side, side.precision, width))
            for precision in side.also_launch:
                name = f"{spec.name}/{side.parametrization}-{precision}-w{width}"
                stages.append(Stage(name, "run", side, precision, width))
    return stages


def proxies_of(spec: ProofSpec, stage: Stage) -> Stage:
    return next(s for s in plan(spec) if s.role == "proxies" and s.side == stage.side)


def proxy_spec(spec: ProofSpec, stage: Stage) -> SweepSpec:
    train = spec.proxies.train
    model = train.model.model_dump() | {"parametrization": stage.side.parametrization}
    return SweepSpec.model_validate(
        {
            "name": stage.name,
            "train": train.model_dump() | {"model": model, "precision": stage.precision},
            "widths": spec.proxies.widths,
            "search": {"lr": stage.side.lr.model_dump(), "wd": spec.proxies.wd},
            "algorithm": "grid",
            "resources": spec.proxies.resources.model_dump(),
        }
    )


def check_spec(
    spec: ProofSpec, stage: Stage, proxies: SweepSpec, transfer: dict[str, Any]
) -> SweepSpec:
    """The LR sweep at the target: the proxies' base run at the target's steps, the
    transferred WD (and τ), LRs on a grid through the transferred LR (``transfer``: a
    transfer's result, `TransferResult.to_dict`)."""
    assert stage.width is not None
    check = spec.targets.check
    base = math.log2(transfer["base_lr"])
    extrapolated = transfer["extrapolated_lr"]
    toward = math.log2(extrapolated) - base if extrapolated else 0.0
    below = round((check.log2_span + max(0.0, -toward)) / check.log2_step)
    above = round((check.log2_span + max(0.0, toward)) / check.log2_step)
    lr = LogRange(
        min=2 ** (base - below * check.log2_step),
        max=2 ** (base + above * check.log2_step),
        points=below + above + 1,
    )
    model = proxies.train.model.model_dump()
    if transfer["base_tau"] is not None:
        model["tau"] = transfer["base_tau"]
    train = proxies.train.model_dump() | {"model": model, "steps": spec.targets.steps}
    return SweepSpec(
        name=stage.name,
        train=TrainConfig.model_validate(train),
        widths=[stage.width],
        search=SearchSpace(lr=lr, wd=[transfer["base_wd"]]),
        resources=spec.targets.resources,
    )


def launch_request(spec: ProofSpec, stage: Stage, proxies_id: int) -> LaunchRequest:
    assert stage.width is not None
    return LaunchRequest(
        sweep_id=proxies_id,
        to_width=stage.width,
        steps=spec.targets.steps,
        precision=stage.precision,
        gpus_per_worker=spec.targets.resources.gpu,
        # Past the last step: no checkpoint at all.
        checkpoint_every=spec.targets.checkpoint_every or spec.targets.steps + 1,
        name=stage.name,
    )


# --- the jobs in the database -----------------------------------------------------------


def find_jobs(database: db.Database, stages: list[Stage]) -> dict[str, Job]:
    """The newest sweep or run named like each stage (a restarted run leaves its old one)."""
    wanted = {s.name: s.kind for s in stages}
    found: dict[str, Job] = {}
    jobs: list[Job] = [*db.list_sweeps(database, limit=100_000).items]
    jobs += db.list_runs(database, limit=100_000).items  # both newest first
    for job in jobs:
        kind = _kind(job)
        if wanted.get(job.name) == kind:
            found.setdefault(job.name, job)
    return found


def _resumable_here(database: db.Database, run: db.Run) -> bool:
    """A run continues cleanly from its checkpoint when that is on this machine, or from
    step 0 when it has recorded nothing; else it starts afresh as a new run (a resume from
    step 0 would keep the old attempt's points)."""
    path = run.checkpoint_path
    if path is not None:
        return "://" in path or Path(path).exists()
    return not service.run_progress(database, run.id).curve


def _driver_gone(job: Job) -> bool:
    """Its driver has stopped (`sweeper.jobs.driver_gone`: its process, on this host)."""
    return driver_gone(_kind(job), job, Settings())


def _kind(job: Job) -> JobKind:
    return "run" if isinstance(job, db.Run) else "sweep"


def _reread(database: db.Database, job: Job) -> Job:
    if isinstance(job, db.Run):
        return db.get_run(database, run_id=job.id)
    return db.get_sweep(database, sweep_id=job.id)


def _data_present(data: str) -> bool:
    return data == "stdlib" or Path(data).is_file()


# --- Ray --------------------------------------------------------------------------------


class RayCluster:
    """One local Ray cluster for every driver this process starts (they join it through
    RAY_ADDRESS), started on first use; a cluster named by RAY_ADDRESS is used as it is."""

    def __init__(self) -> None:
        self.started = False

    def ensure(self) -> None:
        if self.started or os.environ.get("RAY_ADDRESS"):
            return
        # "local": a new cluster, never one that `ray start` left on this machine.
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
        self.started = True

    def stop(self) -> None:
        if self.started:
            ray.shutdown()
            os.environ.pop("RAY_ADDRESS", None)
            self.started = False


# --- driving ----------------------------------------------------------------------------


@dataclass
class Outcome:
    done: list[str]
    remaining: list[str]
    failed: list[str]  # ended failed, or the service would not start them

    @property
    def exit_code(self) -> int:
        if self.failed:
            return EXIT_FAILED
        return EXIT_STOPPED if self.remaining else EXIT_DONE


class Runner:
    """Drives the stages of one spec to their end, or until the budget is spent."""

    def __init__(
        self,
        database: db.Database,
        spec: ProofSpec,
        *,
        budget_s: float | None = None,
        export: Path | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.database, self.spec, self.budget_s, self.export = database, spec, budget_s, export
        self.stages = plan(spec)
        self.refused: dict[str, str] = {}  # stages the service would not start, and why
        self.cluster = RayCluster()
        self.started_at = time.monotonic()
        self.stop_requested = False
        self._say = say
        self._shown: dict[str, str] = {}
        self._last_progress = 0.0

    def say(self, text: str) -> None:
        self._say(f"{time.monotonic() - self.started_at:6.0f}s  {text}")

    def over_budget(self) -> bool:
        spent = time.monotonic() - self.started_at
        return self.stop_requested or (self.budget_s is not None and spent >= self.budget_s)

    def run(self) -> Outcome:
        jobs = find_jobs(self.database, self.stages)
        todo = [s.name for s in self.stages if not _completed(jobs.get(s.name))]
        budget = f"budget {self.budget_s:.0f} s" if self.budget_s is not None else "no budget"
        self.say(
            f"{self.spec.name}: {len(self.stages)} stages, {len(self.stages) - len(todo)}"
            f" completed, {len(todo)} to do; {budget}"
        )
        active: dict[str, Job] = {}  # what this invocation started, resumed or joined
        try:
            while True:
                jobs = find_jobs(self.database, self.stages)
                for stage in self.stages:
                    job = jobs.get(stage.name)
                    if stage.name in active or _completed(job) or self.over_budget():
                        continue  # a job that ended failed in this invocation waits for a rerun
                    if stage.name in self.refused or not self._ready(stage, jobs):
                        continue
                    try:
                        active[stage.name] = self._advance(stage, job, jobs)
                    except (service.InvalidInput, db.Conflict) as e:
                        self.refused[stage.name] = str(e)
                        self.say(f"{stage.name}: not started: {e}")
                jobs = find_jobs(self.database, self.stages)
                active = {name: jobs[name] for name in active}
                self._progress(active)
                in_flight = [job for job in active.values() if not job.status.finished]
                if self.over_budget():
                    self._stop(in_flight)
                    break
                if not in_flight:
                    break
                time.sleep(POLL_S)
        finally:
            self.cluster.stop()
        return self._outcome()

    def _ready(self, stage: Stage, jobs: dict[str, Job]) -> bool:
        if stage.role == "proxies":
            return True
        return _completed(jobs.get(proxies_of(self.spec, stage).name))

    def _advance(self, stage: Stage, job: Job | None, jobs: dict[str, Job]) -> Job:
        """Start the stage's job, resume it, or join the live driver that drives it."""
        if job is not None and job.status in ACTIVE and not _driver_gone(job):
            return self._said(stage, job, "joined (its driver is alive)")
        if job is not None:
            self._check_data(job)
        self.cluster.ensure()
        if isinstance(job, db.Sweep):
            service.resume_sweep(self.database, job.id)
            return self._said(stage, job, f"resumed (was {job.status})")
        if isinstance(job, db.Run) and _resumable_here(self.database, job):
            service.resume_run(self.database, job.id)
            return self._said(stage, job, f"resumed (was {job.status})")
        started = self._start(stage, jobs)
        afresh = f" afresh (run {job.id} has no checkpoint here)" if job is not None else ""
        return self._said(stage, started, f"started{afresh}")

    def _said(self, stage: Stage, job: Job, what: str) -> Job:
        line = _describe(self.database, _reread(self.database, job))
        self._shown[stage.name] = line
        self.say(f"{stage.name}: {what}: {line}")
        return job

    def _start(self, stage: Stage, jobs: dict[str, Job]) -> Job:
        if stage.role == "proxies":
            created = service.start_sweep(self.database, proxy_spec(self.spec, stage))
            return db.get_sweep(self.database, sweep_id=created.id)
        proxies = jobs[proxies_of(self.spec, stage).name]
        if stage.role == "run":
            request = launch_request(self.spec, stage, proxies.id)
            run = service.launch_run(self.database, request)
            return db.get_run(self.database, run_id=run.id)
        assert stage.width is not None
        transferred = service.transfer(self.database, sweep_id=proxies.id, to_width=stage.width)
        stored = SweepSpec.stored(db.get_sweep(self.database, sweep_id=proxies.id).spec)
        check = check_spec(self.spec, stage, stored, transferred.result)
        created = service.start_sweep(self.database, check)
        return db.get_sweep(self.database, sweep_id=created.id)

    def _check_data(self, job: Job) -> None:
        config = job.spec["train"] if isinstance(job, db.Sweep) else job.config["train"]
        if not _data_present(config["data"]):
            raise service.InvalidInput(
                "data",
                f"{job.name} reads {config['data']!r}, which is not on this machine: put the"
                " data file there (the same path) and rerun",
            )

    def _stop(self, in_flight: list[Job]) -> None:
        """Cancel the in-flight jobs (they stay resumable) and wait for their drivers."""
        for job in in_flight:
            self._cancel(job)
        deadline = time.monotonic() + STOP_WAIT_S
        waiting = list(in_flight)
        while waiting and time.monotonic() < deadline:
            time.sleep(POLL_S)
            waiting = [_reread(self.database, job) for job in waiting]
            for job in waiting:
                if job.status in ACTIVE:  # its driver had not started when it was cancelled
                    self._cancel(job)
            waiting = [job for job in waiting if not _driver_gone(job)]
        for job in waiting:
            self.say(f"{job.name}: its driver had not stopped after {STOP_WAIT_S:.0f} s")

    def _cancel(self, job: Job) -> None:
        try:
            if isinstance(job, db.Run):
                service.cancel_run(self.database, job.id)
            else:
                service.cancel_sweep(self.database, job.id)
        except db.Conflict:  # it ended meanwhile
            return
        self.say(f"{job.name}: cancelled at the budget (resumable)")

    def _progress(self, jobs: dict[str, Job]) -> None:
        """A line for each job that changed; every PROGRESS_EVERY_S one for each that runs."""
        lines = {name: _describe(self.database, job) for name, job in jobs.items()}
        changed = {n: line for n, line in lines.items() if self._shown.get(n) != line}
        now = time.monotonic()
        periodic = now - self._last_progress >= PROGRESS_EVERY_S
        for name, line in (lines if periodic else changed).items():
            if periodic and jobs[name].status.finished and name not in changed:
                continue  # a periodic line shows what still moves
            self.say(f"{name}: {line}")
        self._shown = lines
        if periodic:
            self._last_progress = now
            if self.export is not None:  # what a hard kill of this process leaves behind
                export_database(self.database, self.export / DB_FILE)

    def _outcome(self) -> Outcome:
        jobs = find_jobs(self.database, self.stages)
        done = [s.name for s in self.stages if _completed(jobs.get(s.name))]
        failed = [
            s.name
            for s in self.stages
            if s.name in self.refused
            or ((job := jobs.get(s.name)) is not None and job.status is db.JobStatus.FAILED)
        ]
        remaining = [s.name for s in self.stages if s.name not in done]
        self.say(f"done ({len(done)}): {', '.join(done) or '-'}")
        self.say(f"remaining ({len(remaining)}): {', '.join(remaining) or '-'}")
        if failed:
            self.say(f"failed (a rerun resumes them): {', '.join(failed)}")
        return Outcome(done, remaining, failed)


def _completed(job: Job | None) -> bool:
    return job is not None and job.status is db.JobStatus.COMPLETED


def _describe(database: db.Database, job: Job) -> str:
    if isinstance(job, db.Run):
        curve = service.run_progress(database, job.id).curve
        steps = job.config["launch"]["steps"]
        loss = curve[-1].eval_loss if curve else None
        at = f", eval loss {loss:.4f}" if loss is not None else ""
        return f"run {job.id} {job.status}, step {curve[-1].step if curve else 0}/{steps}{at}"
    progress = service.sweep_progress(database, job.id)
    return f"sweep {job.id} {job.status}, {progress.finished}/{progress.planned} trials"


# --- results ----------------------------------------------------------------------------


def proof_results(
    database: db.Database, spec: ProofSpec, invocations: list[dict[str, Any]]
) -> dict[str, Any]:
    """Every number of the experiment, from the database: per side the proxies' optima and
    drift, per target the transferred LR against the check sweep's best and the loss gap;
    FP8 against BF16; µS against SP at each side's best; time and GPU-hours (with the
    runner's ``invocations``: when each ran, how long, on how many GPUs)."""
    stages = plan(spec)
    jobs = find_jobs(database, stages)
    sweep_ids = [job.id for s in stages if s.kind == "sweep" and (job := jobs.get(s.name))]
    compared = {c.sweep_id: c for c in service.compare_sweeps(database, sweep_ids)}

    def sweep_of(stage: Stage) -> SweepComparison | None:
        job = jobs.get(stage.name)
        return compared.get(job.id) if job is not None else None

    def run_loss(stage: Stage) -> float | None:
        job = jobs.get(stage.name)
        if job is None or job.status is not db.JobStatus.COMPLETED:
            return None
        curve = service.run_progress(database, job.id).curve
        return curve[-1].eval_loss if curve else None

    sides: dict[str, Any] = {}
    for side in spec.sides:
        proxies = next(s for s in stages if s.role == "proxies" and s.side == side)
        swept = sweep_of(proxies)
        targets = {}
        for width in spec.targets.widths:
            at = [s for s in stages if s.side == side and s.width == width]
            run = next(s for s in at if s.role == "run" and s.precision == side.precision)
            check = next(s for s in at if s.role == "check")
            mark = (
                next((m for m in swept.transfers if m.to_width == width), None) if swept else None
            )
            targets[str(width)] = _target(
                transferred_lr=mark.base_lr if mark else None,
                drift_line_lr=mark.extrapolated_lr if mark else None,
                run=_job_ref(jobs.get(run.name)) | {"final_eval_loss": run_loss(run)},
                check=sweep_of(check),
                also={
                    s.precision: _job_ref(jobs.get(s.name)) | {"final_eval_loss": run_loss(s)}
                    for s in at
                    if s.role == "run" and s.precision != side.precision
                },
            )
        sides[side.label] = {
            "parametrization": side.parametrization,
            "precision": side.precision,
            "proxies": _job_ref(jobs.get(proxies.name)),
            "optima": [_optimum(c) for c in swept.curves] if swept else [],
            "drift": _drift(swept),
            "targets": targets,
        }
    return {
        "experiment": spec.name,
        "begun_utc": experiment_begun(database, spec),
        "complete": all(_completed(jobs.get(s.name)) for s in stages),
        "stages": {s.name: {"kind": s.kind} | _job_ref(jobs.get(s.name)) for s in stages},
        "sides": sides,
        "comparisons": _comparisons(spec, sides),
        "goals": _goals(spec, sides),
        "time": work_time(database, [jobs[s.name] for s in stages if s.name in jobs], invocations),
        "spec": spec.model_dump(mode="json"),
        "environment": _environment(),
    }


def _job_ref(job: Job | None) -> dict[str, Any]:
    if job is None:
        return {"id": None, "status": None}
    return {"id": job.id, "status": str(job.status)}


def _optimum(curve: LrCurve) -> dict[str, Any]:
    return {
        "width": curve.width,
        "lr": curve.optimum.value,
        "log2_lr": math.log2(curve.optimum.value),
        "log2_uncertainty": curve.optimum.log2_uncertainty,
        "method": curve.optimum.method,
        "at_edge": curve.optimum.at_edge,
        "wd": curve.wd,
        "best_lr": curve.best_lr,
        "best_loss": curve.best_loss,
        "points": len(curve.lr),
    }


def _drift(swept: SweepComparison | None) -> dict[str, float] | None:
    if swept is None or swept.drift is None:
        return None
    return {"slope": swept.drift.slope, "uncertainty": swept.drift.uncertainty}


def _target(
    *,
    transferred_lr: float | None,
    drift_line_lr: float | None,
    run: dict[str, Any],
    check: SweepComparison | None,
    also: dict[str, Any],
) -> dict[str, Any]:
    best = _optimum(check.curves[0]) if check is not None and check.curves else None
    checked = check is not None and check.status is db.JobStatus.COMPLETED and best is not None
    loss = run["final_eval_loss"]
    return {
        "transferred_lr": transferred_lr,
        "drift_line_lr": drift_line_lr,
        "run": run,
        "check": {"id": check.sweep_id if check else None, "complete": checked, "best": best},
        # log2(transferred / the check's fitted optimum), and the run against its best loss
        "log2_lr_error": math.log2(transferred_lr) - best["log2_lr"]
        if transferred_lr and best
        else None,
        "loss_gap": loss / best["best_loss"] - 1 if loss is not None and best else None,
        "also": also,
    }


def _comparisons(spec: ProofSpec, sides: dict[str, Any]) -> dict[str, Any]:
    """FP8 against BF16 at each target; µS at its transferred LR against SP at SP's own
    best (its check sweep's best) at each target, and both sides' best at each proxy."""
    fp8_vs_bf16: dict[str, Any] = {}
    mus_vs_sp: dict[str, Any] = {}
    mus = next((s for s in spec.sides if s.parametrization == "mus"), None)
    sp = next((s for s in spec.sides if s.parametrization == "sp"), None)
    for width in map(str, spec.targets.widths):
        for side in spec.sides:
            target = sides[side.label]["targets"][width]
            if side.precision == "fp8" and "bf16" in target["also"]:
                fp8 = target["run"]["final_eval_loss"]
                bf16 = target["also"]["bf16"]["final_eval_loss"]
                fp8_vs_bf16.setdefault(width, {})[side.label] = {
                    "fp8": fp8,
                    "bf16": bf16,
                    "gap": fp8 / bf16 - 1 if fp8 is not None and bf16 is not None else None,
                }
        if mus is not None and sp is not None:
            mus_loss = sides[mus.label]["targets"][width]["run"]["final_eval_loss"]
            sp_best = sides[sp.label]["targets"][width]["check"]["best"]
            sp_loss = sp_best["best_loss"] if sp_best else None
            mus_vs_sp[width] = {
                "mus_transferred": mus_loss,
                "sp_best": sp_loss,
                "sp_best_lr": sp_best["best_lr"] if sp_best else None,
                "gap": mus_loss / sp_loss - 1 if mus_loss is not None and sp_loss else None,
            }
    proxies: dict[str, Any] = {}
    if mus is not None and sp is not None:
        best = {
            label: {o["width"]: o["best_loss"] for o in sides[label]["optima"]}
            for label in (mus.label, sp.label)
        }
        for proxy in spec.proxies.widths:
            m, s = best[mus.label].get(proxy), best[sp.label].get(proxy)
            proxies[str(proxy)] = {
                "mus_best": m,
                "sp_best": s,
                "gap": m / s - 1 if m is not None and s else None,
            }
    return {"fp8_vs_bf16": fp8_vs_bf16, "mus_vs_sp": mus_vs_sp, "mus_vs_sp_proxies": proxies}


def _goals(spec: ProofSpec, sides: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value (a drift in log2 per doubling of
    width, or a relative loss gap) and whether it is met (None: not measured, or no goal)."""
    goals = spec.goals
    out: list[dict[str, Any]] = []

    def goal(text: str, unit: str, value: float | None, met: bool | None) -> None:
        out.append({"goal": text, "unit": unit, "value": value, "met": met})

    def at_most(value: float | None, limit: float) -> bool | None:
        return None if value is None else value <= limit

    for side in spec.sides:
        drift = sides[side.label]["drift"]
        slope = drift["slope"] if drift else None
        if side.parametrization != "mus":
            goal(f"{side.label}: drift (reported as measured)", "log2", slope, None)
            continue
        size = None if slope is None else abs(slope)
        goal(
            f"{side.label}: drift within ±{goals.drift}", "log2", slope, at_most(size, goals.drift)
        )
        for width, target in sides[side.label]["targets"].items():
            text = f"{side.label} at {width}: transferred within {goals.loss_gap:.1%} of the best"
            goal(text, "relative", target["loss_gap"], at_most(target["loss_gap"], goals.loss_gap))
    comparisons = _comparisons(spec, sides)
    for width, by_side in comparisons["fp8_vs_bf16"].items():
        for label, gap in by_side.items():
            text = f"{label} at {width}: FP8 within {goals.fp8_vs_bf16:.1%} of BF16"
            goal(text, "relative", gap["gap"], at_most(gap["gap"], goals.fp8_vs_bf16))
    for width, c in comparisons["mus_vs_sp"].items():
        text = f"at {width}: µS transferred no worse than SP at its best"
        goal(text, "relative", c["gap"], at_most(c["gap"], 0.0))
    return out


def work_time(
    database: db.Database, jobs: list[Job], invocations: list[dict[str, Any]]
) -> dict[str, Any]:
    """The machine's time, from the runner's invocations (wall time, and GPU-hours as
    wall time x the GPUs it held), and the GPU-hours the results rest on: each trial's and
    run's final attempt, its training time x its share of a GPU (startup excluded, attempts
    that a budget stop cancelled not counted)."""
    allocated_s = 0.0
    for job in jobs:
        if isinstance(job, db.Run):
            curve = service.run_progress(database, job.id).curve
            if job.status is db.JobStatus.COMPLETED and curve:
                launch = job.config["launch"]
                allocated_s += curve[-1].time_s * launch["workers"] * launch["gpus_per_worker"]
            continue
        gpu = SweepSpec.stored(job.spec).resources.gpu
        curves = db.get_curves(database, sweep_id=job.id)
        for trial in db.list_trials(database, sweep_id=job.id):
            points = curves.get(trial.id, [])
            if trial.status.finished and points:
                allocated_s += points[-1].time_s * gpu
    return {
        "wall_s": sum(i["wall_s"] for i in invocations),
        "gpu_hours": sum(i["wall_s"] * i["gpus"] for i in invocations) / 3600,
        "allocated_gpu_hours": allocated_s / 3600,
        "invocations": invocations,
    }


def _environment() -> dict[str, Any]:
    return environment() | {"ray": ray.__version__, "optuna": optuna.__version__}


# --- the command ------------------------------------------------------------------------


def export_database(database: db.Database, path: Path) -> None:
    """A consistent one-file copy of the SQLite database (no -wal beside it to forget),
    replacing ``path`` at once: a kill midway leaves the previous copy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    source = database.url.removeprefix("sqlite:///")
    with closing(sqlite3.connect(source, timeout=30)) as connection:
        connection.execute("VACUUM INTO ?", (str(partial),))
    partial.replace(path)


@contextmanager
def _stop_on_signals(runner: Runner) -> Iterator[None]:
    def stop(signum: int, frame: object) -> None:
        runner.stop_requested = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    parser.add_argument("--db", type=Path, help="the SQLite file (default: $SWEEPER_DB_URL)")
    parser.add_argument("--data", help="the proxies' text file (default: the spec's)")
    parser.add_argument("--budget-s", type=float, help="stop after this many seconds")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument(
        "--export",
        type=Path,
        help=f"a folder to copy the database ({DB_FILE}, every 30 s too) and the results to",
    )
    args = parser.parse_args(argv)
    if args.db is not None:
        os.environ[DB_URL_VAR] = f"sqlite:///{args.db.resolve()}"
    elif not os.environ.get(DB_URL_VAR):
        parser.error(f"name the database: --db FILE or {DB_URL_VAR}")
    spec = ProofSpec.load(args.spec, data=args.data)
    database = db.connect(os.environ[DB_URL_VAR])
    if args.export is not None and database.backend != "sqlite":
        parser.error("--export copies an SQLite database")
    runner = Runner(database, spec, budget_s=args.budget_s, export=args.export)
    started = datetime.now(UTC)
    with _stop_on_signals(runner):
        outcome = runner.run()
    invocation = {
        "command": shlex.join(["python", "-m", "benchmarks.transfer_proof", *sys.argv[1:]]),
        "started_utc": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "wall_s": round(time.monotonic() - runner.started_at, 1),
        "gpus": _gpu_count(),
        "budget_s": args.budget_s,
        "exit": outcome.exit_code,
    }
    begun = experiment_begun(database, spec)
    results = proof_results(
        database, spec, [*_invocations_so_far(args.results, spec, begun), invocation]
    )
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    runner.say(f"this invocation: {invocation['wall_s']:.0f} s; results in {args.results}")
    if args.export is not None:
        export_database(database, args.export / DB_FILE)
        shutil.copyfile(args.results, args.export / args.results.name)
        runner.say(f"database and results copied to {args.export}")
    database.dispose()
    return outcome.exit_code


def experiment_begun(database: db.Database, spec: ProofSpec) -> str | None:
    """When the experiment's first job was created: which database a results file is of."""
    jobs = find_jobs(database, plan(spec)).values()
    first = min((job.created_at for job in jobs), default=None)
    return first.strftime("%Y-%m-%dT%H:%M:%SZ") if first is not None else None


def _invocations_so_far(path: Path, spec: ProofSpec, begun: str | None) -> list[dict[str, Any]]:
    """The earlier invocations that the results file at ``path`` records, if it is of this
    experiment in this database (the file travels with the tree between machine calls)."""
    if not path.is_file():
        return []
    previous = json.loads(path.read_text())
    if (previous.get("experiment"), previous.get("begun_utc")) != (spec.name, begun):
        return []
    invocations: list[dict[str, Any]] = previous["time"]["invocations"]
    return invocations


def _gpu_count() -> int:
    return torch.cuda.device_count()


if __name__ == "__main__":
    sys.exit(main())
