"""The sweep engine: one sweep = one Ray Tune experiment, every result written to the database.

The driver process (`run_sweep`) is the only writer of a sweep's trial results: a Tune
callback stores each reported point as it arrives, so the database is the sweep's record
even if the driver is killed. Resume recomputes the plan and runs only the trials the
database does not hold as finished; a re-run trial's stale points are cleared first. While
the database refuses writes (another process holds its lock), a callback retries; Tune
holds the results meanwhile, so no point is lost and none is stored twice.

Search: a grid over every proxy width, or Optuna TPE through Ray Tune's `OptunaSearch`,
with one Optuna study per width (the optimum is wanted at *each* width, so width must not
be a searched parameter), stored by Optuna's RDBStorage in the same database.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

import db
from sweeper.cluster import (
    NotEnoughResources,
    cluster_nodes,
    ensure_ray,
    trial_shortfall,
)
from sweeper.jobs import DatabaseHandle, Job, traceback_tail, writes
from sweeper.settings import Settings
from sweeper.spec import TRIAL_VALUES, SweepSpec, TrialPlan
from sweeper.warm_up import log_warm_up, wait_for_warm_up, warm_kernel_caches

if TYPE_CHECKING:
    from models.train import TrainStatus

log = logging.getLogger(__name__)

OBJECTIVE = "objective"
# The trainer's status after each report (`models.train.status_after`): the trial's, unless
# the sweep was cancelled; a trial Tune stopped while running was pruned (ASHA).
STATUS = "train_status"
TRIAL_STATUS: dict[TrainStatus, db.TrialStatus] = {
    "completed": db.TrialStatus.COMPLETED,
    "diverged": db.TrialStatus.DIVERGED,
    "running": db.TrialStatus.PRUNED,
}
# Optuna and ASHA need a number for a diverged trial: anything worse than an untrained
# model (whose loss is about ln(vocab)) ranks it last without poisoning TPE's density fit.
DIVERGED_PENALTY = 2.0


# --- inside a Ray worker ----------------------------------------------------------------


def run_trial(
    config: dict[str, Any], spec: dict[str, Any], warm_up: dict[str, ray.ObjectRef]
) -> None:
    """One Tune trial: train the spec's base run at the trial's width and values. Its run
    builds itself, then waits for the kernel warm-up of its node (``warm_up``: the
    warm-ups' refs by node id) to fill the node's cache before its first step."""
    # The trainer here, in the trial's worker, not with the module: the driver only
    # schedules trials, and torch's import would cost it seconds of CPU.
    from models.train import status_after, train

    node_id = ray.get_runtime_context().get_node_id()
    sweep = SweepSpec.model_validate(spec)
    trial = config["trial"]
    params = {k: trial[k] for k in TRIAL_VALUES if k in trial}
    train_config = sweep.trial_config(trial["width"], params)
    penalty = DIVERGED_PENALTY * math.log(train_config.model.vocab_size)

    def report(point: db.MetricPoint) -> None:
        status = status_after(point, train_config.steps)
        objective = point.eval_loss if status != "diverged" else penalty
        tune.report(asdict(point) | {OBJECTIVE: objective, "node_id": node_id, STATUS: status})

    train(
        train_config,
        report=report,
        before_first_step=lambda: wait_for_warm_up(warm_up.get(node_id)),
    )


# --- in the driver ----------------------------------------------------------------------


class PerWidthOptuna(Searcher):
    """Hands out the planned TPE slots round-robin over widths, each width asking its own
    `OptunaSearch`, so every width's study searches LR/WD on its own."""

    def __init__(self, slots: list[TrialPlan], searchers: dict[int, OptunaSearch]):
        super().__init__(metric=OBJECTIVE, mode="min")
        self._slots = deque(slots)
        self._searchers = searchers
        self._width_of: dict[str, int] = {}

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        return True  # metric and mode are fixed at construction

    def suggest(self, trial_id: str) -> dict | None:
        if not self._slots:
            return Searcher.FINISHED  # type: ignore[return-value]  # Tune's own sentinel
        slot = self._slots.popleft()
        params = self._searchers[slot.width].suggest(trial_id)
        self._width_of[trial_id] = slot.width
        return {"trial": {"key": slot.key, "width": slot.width, **(params or {})}}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._searchers[self._width_of[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        self._searchers[self._width_of[trial_id]].on_trial_complete(trial_id, result, error)


def optuna_study_name(sweep_id: int, width: int | str) -> str:
    """Optuna's study of one width; the sweep row records the pattern (width ``*``)."""
    return f"sweeper-{sweep_id}-w{width}"


def _optuna_searcher(
    spec: SweepSpec, sweep_id: int, width: int, storage: optuna.storages.RDBStorage
) -> OptunaSearch:
    space: dict[str, optuna.distributions.BaseDistribution] = {
        "lr": optuna.distributions.FloatDistribution(
            spec.search.lr.min, spec.search.lr.max, log=True
        ),
        "wd": optuna.distributions.CategoricalDistribution(spec.search.wd),
    }
    if spec.search.tau is not None:
        space["tau"] = optuna.distributions.CategoricalDistribution(spec.search.tau)
    name = optuna_study_name(sweep_id, width)
    _fail_unfinished_optuna_trials(storage, name)
    # TPE's default 10 random startup trials would be all of a small sweep; constant_liar
    # keeps parallel asks from all landing on the same point while earlier trials run.
    sampler = optuna.samplers.TPESampler(
        seed=spec.seed + width,
        n_startup_trials=max(2, min(10, spec.trials_per_width // 3)),
        constant_liar=True,
    )
    return OptunaSearch(
        space, metric=OBJECTIVE, mode="min", sampler=sampler, study_name=name, storage=storage
    )


def _fail_unfinished_optuna_trials(storage: optuna.storages.RDBStorage, name: str) -> None:
    """A killed driver leaves its Optuna trials RUNNING; a resumed study must not wait on them."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


class _SweepAware(DatabaseHandle):
    """Knows its sweep's database. Tune copies its callbacks and stoppers, and the copies
    share nothing in memory, so a cancel is always read from the database."""

    def __init__(self, database: db.Database, sweep_id: int, settings: Settings):
        super().__init__(database, settings)
        self.sweep_id = sweep_id

    def sweep_cancelled(self) -> bool:
        sweep = db.get_sweep(self.database, sweep_id=self.sweep_id)
        return sweep.status is db.JobStatus.CANCELLED


class SweepRecorder(_SweepAware, tune.Callback):
    """Writes every trial start, reported point and outcome to the database."""

    def __init__(self, database: db.Database, sweep_id: int, settings: Settings):
        super().__init__(database, sweep_id, settings)
        self.trial_ids: dict[str, int] = {}

    def _start(self, trial: tune.experiment.Trial) -> None:
        spec = trial.config["trial"]
        params = {k: v for k, v in spec.items() if k not in ("key", "width")}
        self.trial_ids[trial.trial_id] = db.upsert_trial(
            self.database,
            sweep_id=self.sweep_id,
            key=spec["key"],
            width=spec["width"],
            params=params,
            ray_trial_id=trial.trial_id,
        )

    @writes
    def on_trial_start(
        self, iteration: int, trials: list, trial: tune.experiment.Trial, **info: Any
    ) -> None:
        self._start(trial)

    @writes
    def on_trial_recover(
        self, iteration: int, trials: list, trial: tune.experiment.Trial, **info: Any
    ) -> None:
        self._start(trial)  # a retried trial starts again from step 0: clear its points

    @writes
    def on_trial_result(
        self, iteration: int, trials: list, trial: tune.experiment.Trial, result: dict, **info: Any
    ) -> None:
        db.add_metric_points(
            self.database, trial_id=self.trial_ids[trial.trial_id], points=[result]
        )

    @writes
    def on_trial_complete(
        self, iteration: int, trials: list, trial: tune.experiment.Trial, **info: Any
    ) -> None:
        last = trial.last_result or {}
        step = int(last.get("step", 0))
        if self.sweep_cancelled():
            status = db.TrialStatus.CANCELLED
        else:  # no report at all: nothing to show for it, as for a diverged run
            status = TRIAL_STATUS[last.get(STATUS, "diverged")]
        db.finish_trial(
            self.database,
            trial_id=self.trial_ids[trial.trial_id],
            status=status,
            final_eval_loss=last.get("eval_loss") if step else None,
            steps=step,
            tokens=int(last.get("tokens", 0)),
            tokens_per_s=last.get("tokens_per_s"),
            startup_s=last.get("startup_s"),
            node_id=last.get("node_id"),
        )

    @writes
    def on_trial_error(
        self, iteration: int, trials: list, trial: tune.experiment.Trial, **info: Any
    ) -> None:
        last = trial.last_result or {}
        db.finish_trial(
            self.database,
            trial_id=self.trial_ids[trial.trial_id],
            status=db.TrialStatus.CANCELLED if self.sweep_cancelled() else db.TrialStatus.ERROR,
            final_eval_loss=None,
            steps=int(last.get("step", 0)),
            tokens=int(last.get("tokens", 0)),
            tokens_per_s=last.get("tokens_per_s"),
            startup_s=last.get("startup_s"),
            error=_error_text(trial),
            node_id=last.get("node_id"),
        )


class CancelStopper(_SweepAware, tune.Stopper):
    """Stops every trial once the sweep is cancelled (by the API or the CLI, any process)."""

    def __init__(self, database: db.Database, sweep_id: int, settings: Settings):
        super().__init__(database, sweep_id, settings)
        self._cancelled = False
        self._last_poll = 0.0

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._last_poll >= 1.0:  # at most one read a second
            self._last_poll = now
            try:
                self._cancelled = self.sweep_cancelled()
            except db.Unavailable as e:  # asked again in a second
                log.warning("reading whether sweep %s is cancelled: %s", self.sweep_id, e)
        return self._cancelled


def _error_text(trial: tune.experiment.Trial) -> str:
    """The trial's error as one line (its exception, e.g. an out-of-memory error's message);
    the whole traceback goes to the driver's log."""
    path = getattr(trial, "error_file", None)
    if not (path and Path(path).is_file()):
        return "the trial failed (no error file)"
    text = Path(path).read_text(errors="replace")
    log.error("trial %s failed:\n%s", trial.trial_id, text[-20_000:])
    return traceback_tail(text)


def remaining_plan(database: db.Database, sweep_id: int, spec: SweepSpec) -> list[TrialPlan]:
    """The planned trials the database does not hold as finished, in plan order."""
    finished = {t.key for t in db.list_trials(database, sweep_id=sweep_id) if t.status.finished}
    return [p for p in spec.plan() if p.key not in finished]


def _interleave_widths(plan: list[TrialPlan]) -> list[TrialPlan]:
    """Round-robin over widths so that every width's search advances together."""
    by_width: dict[int, deque[TrialPlan]] = {}
    for p in plan:
        by_width.setdefault(p.width, deque()).append(p)
    out: list[TrialPlan] = []
    while any(by_width.values()):
        out.extend(q.popleft() for q in by_width.values() if q)
    return out


def build_tuner(
    database: db.Database,
    sweep_id: int,
    spec: SweepSpec,
    remaining: list[TrialPlan],
    settings: Settings,
    warm_up: dict[str, ray.ObjectRef],
) -> tune.Tuner:
    trainable = tune.with_resources(
        # the warm-ups' refs travel in a dict: Ray puts each parameter, and won't put a ref
        tune.with_parameters(run_trial, spec=spec.model_dump(mode="json"), warm_up=warm_up),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )
    scheduler: TrialScheduler = FIFOScheduler()
    if spec.asha:
        reports = math.ceil(spec.train.steps / spec.train.eval_interval)
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=reports,
            grace_period=min(spec.asha_grace_period, reports),
        )
    plan = _interleave_widths(remaining)
    if spec.algorithm == "grid":
        param_space: dict[str, Any] = {
            "trial": tune.grid_search([{"key": p.key, "width": p.width, **p.params} for p in plan])
        }
        search_alg = None
    else:
        # Optuna writes through its own engine: on SQLite it waits out another process's
        # lock as long as the driver's own writes retry.
        connect_args = {"timeout": settings.write_retry_s} if database.backend == "sqlite" else {}
        storage = optuna.storages.RDBStorage(
            database.url, engine_kwargs={"connect_args": connect_args}
        )
        searchers = {w: _optuna_searcher(spec, sweep_id, w, storage) for w in spec.widths}
        db.set_sweep_optuna_study(
            database, sweep_id=sweep_id, study_name=optuna_study_name(sweep_id, "*")
        )
        param_space, search_alg = {}, PerWidthOptuna(plan, searchers)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=OBJECTIVE,
            mode="min",
            scheduler=scheduler,
            search_alg=search_alg,
            num_samples=1 if search_alg is None else len(plan),
            # With a searcher and no explicit cap, Tune keeps one trial pending at a time,
            # which starts short proxies one after another: the cap lifts that (see
            # ray.tune.execution.tune_controller._get_max_pending_trials).
            max_concurrent_trials=spec.max_concurrency or len(plan),
            # A trial's process start (interpreter, imports, CUDA context, corpus) costs
            # more than a proxy's training: a finished trial's worker runs the next one,
            # with its kernels, tuned choices and data already loaded.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"sweep-{sweep_id}-{int(time.time())}",
            storage_path=settings.ray_storage_path,
            callbacks=[SweepRecorder(database, sweep_id, settings)],
            stop=CancelStopper(database, sweep_id, settings),
            failure_config=tune.FailureConfig(max_failures=1),
            verbose=0,
        ),
    )


def run_sweep(database: db.Database, sweep_id: int, settings: Settings) -> db.JobStatus:
    """Drive sweep ``sweep_id`` to its end; returns the status it ends in.

    Joins the Ray cluster of ``settings.ray_address`` when set, else starts a local one (see
    `sweeper.cluster`). Any error, from reading the spec on, fails the sweep with its reason.
    """
    job = Job(database, "sweep", sweep_id, settings)
    with job.driving():
        spec = SweepSpec.model_validate(db.get_sweep(database, sweep_id=sweep_id).spec)
        remaining = remaining_plan(database, sweep_id, spec)
        if remaining:
            ensure_ray(job.settings)
            _check_resources(spec)
            warm_up = warm_kernel_caches(spec, remaining)
            build_tuner(database, sweep_id, spec, remaining, job.settings, warm_up).fit()
            log_warm_up(warm_up)
        if job.status() is db.JobStatus.CANCELLED:
            return job.finish(db.JobStatus.CANCELLED)
        left = remaining_plan(database, sweep_id, spec)
        if left:
            return job.finish(db.JobStatus.FAILED, _unfinished(database, sweep_id, left, spec))
        return job.finish(db.JobStatus.COMPLETED)
    return job.status()  # the block failed: `driving` recorded why


def _check_resources(spec: SweepSpec) -> None:
    """A trial must fit one node of the cluster, or it would wait for ever."""
    problem = trial_shortfall(spec.resources, cluster_nodes())
    if problem is not None:
        raise NotEnoughResources(": ".join(problem))


def _unfinished(
    database: db.Database, sweep_id: int, left: list[TrialPlan], spec: SweepSpec
) -> str:
    keys = {p.key for p in left}
    errors = [t for t in db.list_trials(database, sweep_id=sweep_id) if t.key in keys and t.error]
    first = f": {errors[0].key}: {errors[0].error}" if errors else ""
    return f"{len(left)} of {len(spec.plan())} trials did not finish{first}; resume to re-run them"
