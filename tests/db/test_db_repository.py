"""Every repository function, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, text

import db


def _points(*steps: int, loss: float = 2.0) -> list[dict[str, Any]]:
    return [{"step": s, "tokens": 1024 * s, "train_loss": loss, "time_s": 0.5 * s} for s in steps]


@pytest.fixture
def sweep_id(database: db.Database) -> int:
    return db.create_sweep(database, name="lr-wd", spec={"widths": [64, 128]})


# --- sweeps ------------------------------------------------------------------------------


def test_create_and_get_sweep(database: db.Database) -> None:
    before = datetime.now(UTC)
    spec = {"name": "lr-wd", "widths": [64, 128], "space": {"lr": [1e-4, 1e-1]}, "asha": True}
    sweep_id = db.create_sweep(database, name="lr-wd", spec=spec)

    sweep = db.get_sweep(database, sweep_id=sweep_id)
    assert (sweep.id, sweep.name, sweep.spec) == (sweep_id, "lr-wd", spec)
    assert sweep.status is db.JobStatus.QUEUED
    assert before <= sweep.created_at <= datetime.now(UTC)
    assert sweep.created_at.tzinfo is not None
    assert sweep.started_at is sweep.finished_at is sweep.error is None
    assert sweep.optuna_study_name is sweep.driver_host is sweep.driver_pid is None
    assert sweep.driver_heartbeat_at == sweep.created_at  # the grace period starts here
    assert sweep.auto_resumes == 0


def test_get_missing_sweep_is_not_found(database: db.Database) -> None:
    with pytest.raises(db.NotFound, match="sweep 404 not found"):
        db.get_sweep(database, sweep_id=404)


def test_list_sweeper_sweeps_pages_newest_first_with_total(database: db.Database) -> None:
    ids = [db.create_sweep(database, name=f"s{i}", spec={}) for i in range(5)]
    db.set_sweep_status(database, sweep_id=ids[1], status=db.JobStatus.RUNNING)
    db.set_sweep_status(database, sweep_id=ids[3], status=db.JobStatus.RUNNING)

    first = db.list_sweeps(database, offset=0, limit=2)
    assert ([s.id for s in first.items], first.total) == ([ids[4], ids[3]], 5)
    last = db.list_sweeps(database, offset=4, limit=2)
    assert ([s.id for s in last.items], last.total) == ([ids[0]], 5)
    running = db.list_sweeps(database, status=db.JobStatus.RUNNING)
    assert ([s.id for s in running.items], running.total) == ([ids[3], ids[1]], 2)
    with pytest.raises(ValueError, match="limit"):
        db.list_sweeps(database, limit=0)


def test_sweep_status_lifecycle_with_resume(database: db.Database, sweep_id: int) -> None:
    running = db.set_sweep_status(database, sweep_id=sweep_id, status=db.JobStatus.RUNNING)
    assert running.status is db.JobStatus.RUNNING
    assert running.started_at is not None and running.finished_at is None

    failed = db.set_sweep_status(
        database, sweep_id=sweep_id, status=db.JobStatus.FAILED, error="driver died"
    )
    assert failed.finished_at is not None and failed.finished_at >= running.started_at
    assert failed.error == "driver died"

    resumed = db.set_sweep_status(database, sweep_id=sweep_id, status="running")  # type: ignore[arg-type]
    assert resumed.started_at == running.started_at  # the first start is kept
    assert resumed.finished_at is None and resumed.error is None
    assert db.get_sweep(database, sweep_id=sweep_id) == resumed


def test_set_sweep_status_with_expected_refuses_a_stale_transition(
    database: db.Database, sweep_id: int
) -> None:
    db.set_sweep_status(database, sweep_id=sweep_id, status=db.JobStatus.CANCELLED)
    with pytest.raises(db.Conflict, match=r"sweep .* is cancelled, not running"):
        db.set_sweep_status(
            database,
            sweep_id=sweep_id,
            status=db.JobStatus.COMPLETED,
            expected={db.JobStatus.RUNNING},
        )
    assert db.get_sweep(database, sweep_id=sweep_id).status is db.JobStatus.CANCELLED


def test_set_sweep_status_errors(database: db.Database, sweep_id: int) -> None:
    with pytest.raises(ValueError, match="'paused' is not a valid JobStatus"):
        db.set_sweep_status(database, sweep_id=sweep_id, status="paused")  # type: ignore[arg-type]
    with pytest.raises(db.NotFound, match="sweep 404"):
        db.set_sweep_status(database, sweep_id=404, status=db.JobStatus.RUNNING)


def test_heartbeat_and_optuna_study(database: db.Database, sweep_id: int) -> None:
    db.touch_sweep_heartbeat(database, sweep_id=sweep_id)
    first = db.get_sweep(database, sweep_id=sweep_id).driver_heartbeat_at
    db.touch_sweep_heartbeat(database, sweep_id=sweep_id)
    second = db.get_sweep(database, sweep_id=sweep_id).driver_heartbeat_at
    assert first is not None and second is not None and second >= first

    db.set_sweep_optuna_study(database, sweep_id=sweep_id, study_name="sweeper-1")
    assert db.get_sweep(database, sweep_id=sweep_id).optuna_study_name == "sweeper-1"

    with pytest.raises(db.NotFound, match="sweep 404"):
        db.touch_sweep_heartbeat(database, sweep_id=404)
    with pytest.raises(db.NotFound, match="sweep 404"):
        db.set_sweep_optuna_study(database, sweep_id=404, study_name="x")


def test_latest_completed_sweep_is_the_last_to_complete(database: db.Database) -> None:
    assert db.latest_completed_sweep(database) is None
    older, newer, running = (db.create_sweep(database, name=n, spec={}) for n in "abc")
    db.set_sweep_status(database, sweep_id=newer, status=db.JobStatus.COMPLETED)
    db.set_sweep_status(database, sweep_id=older, status=db.JobStatus.COMPLETED)
    db.set_sweep_status(database, sweep_id=running, status=db.JobStatus.RUNNING)
    assert db.latest_completed_sweep(database) == older


# --- trials -----------------------------------------------------------------------------


def test_upsert_trial_twice_gives_one_trial(database: db.Database, sweep_id: int) -> None:
    params = {"lr": 0.0039, "wd": 0.1}
    first = db.upsert_trial(
        database, sweep_id=sweep_id, key="w128-lr0.0039-wd0.1", width=128, params=params
    )
    second = db.upsert_trial(
        database, sweep_id=sweep_id, key="w128-lr0.0039-wd0.1", width=128, params=params
    )
    assert first == second
    (trial,) = db.list_trials(database, sweep_id=sweep_id)
    assert (trial.id, trial.key, trial.width, trial.params) == (
        first,
        "w128-lr0.0039-wd0.1",
        128,
        params,
    )
    assert trial.status is db.TrialStatus.RUNNING
    assert trial.final_eval_loss is trial.steps is trial.finished_at is None


def test_the_same_key_in_two_sweeper_sweeps_is_two_trials(
    database: db.Database, sweep_id: int
) -> None:
    other = db.create_sweep(database, name="other", spec={})
    a = db.upsert_trial(database, sweep_id=sweep_id, key="k", width=64, params={})
    b = db.upsert_trial(database, sweep_id=other, key="k", width=64, params={})
    assert a != b


@pytest.mark.parametrize("left_as", [db.TrialStatus.RUNNING, db.TrialStatus.ERROR])
def test_upsert_restarts_an_unfinished_trial_from_scratch(
    database: db.Database, sweep_id: int, left_as: db.TrialStatus
) -> None:
    trial_id = db.upsert_trial(
        database, sweep_id=sweep_id, key="k", width=64, params={}, ray_trial_id="a1"
    )
    db.add_metric_points(database, trial_id=trial_id, points=_points(0, 10, 20))
    if left_as is db.TrialStatus.ERROR:
        db.finish_trial(
            database,
            trial_id=trial_id,
            status=left_as,
            final_eval_loss=None,
            steps=20,
            tokens=100,
            tokens_per_s=5.0,
            error="node lost",
        )

    again = db.upsert_trial(
        database, sweep_id=sweep_id, key="k", width=64, params={}, ray_trial_id="b2", node_id="n2"
    )
    assert again == trial_id
    trial = db.get_trial(database, trial_id=trial_id)
    assert trial.status is db.TrialStatus.RUNNING
    assert (trial.ray_trial_id, trial.node_id) == ("b2", "n2")
    assert trial.error is trial.steps is trial.tokens is trial.finished_at is None
    # The crashed attempt's points are gone: the new attempt starts again from step 0.
    assert db.get_curves(database, sweep_id=sweep_id) == {trial_id: []}


@pytest.mark.parametrize(
    "status", [db.TrialStatus.COMPLETED, db.TrialStatus.DIVERGED, db.TrialStatus.PRUNED]
)
def test_upsert_keeps_a_finished_trial(
    database: db.Database, sweep_id: int, status: db.TrialStatus
) -> None:
    trial_id = db.upsert_trial(database, sweep_id=sweep_id, key="k", width=64, params={})
    db.add_metric_points(database, trial_id=trial_id, points=_points(0, 10))
    db.finish_trial(
        database,
        trial_id=trial_id,
        status=status,
        final_eval_loss=3.5,
        steps=10,
        tokens=10240,
        tokens_per_s=1e5,
        node_id="n1",
    )
    finished = db.get_trial(database, trial_id=trial_id)

    assert db.upsert_trial(database, sweep_id=sweep_id, key="k", width=64, params={}) == trial_id
    assert db.get_trial(database, trial_id=trial_id) == finished
    assert len(db.get_curves(database, sweep_id=sweep_id)[trial_id]) == 2


def test_finish_trial_stores_the_outcome(database: db.Database, sweep_id: int) -> None:
    trial_id = db.upsert_trial(
        database, sweep_id=sweep_id, key="k", width=64, params={}, node_id="n1"
    )
    db.finish_trial(
        database,
        trial_id=trial_id,
        status=db.TrialStatus.COMPLETED,
        final_eval_loss=3.25,
        steps=200,
        tokens=204800,
        tokens_per_s=12345.5,
    )
    trial = db.get_trial(database, trial_id=trial_id)
    assert trial.status is db.TrialStatus.COMPLETED
    assert (trial.final_eval_loss, trial.steps, trial.tokens, trial.tokens_per_s) == (
        3.25,
        200,
        204800,
        12345.5,
    )
    assert trial.node_id == "n1"  # kept when finish_trial is given none
    assert trial.finished_at is not None and trial.finished_at >= trial.created_at


def test_finish_trial_errors(database: db.Database, sweep_id: int) -> None:
    trial_id = db.upsert_trial(database, sweep_id=sweep_id, key="k", width=64, params={})
    outcome: dict[str, Any] = {
        "final_eval_loss": 1.0,
        "steps": 1,
        "tokens": 1,
        "tokens_per_s": 1.0,
    }
    with pytest.raises(ValueError, match="final status"):
        db.finish_trial(database, trial_id=trial_id, status=db.TrialStatus.RUNNING, **outcome)
    with pytest.raises(db.NotFound, match="trial 404"):
        db.finish_trial(database, trial_id=404, status=db.TrialStatus.COMPLETED, **outcome)
    with pytest.raises(db.Conflict, match="finishing trial"):
        db.finish_trial(
            database, trial_id=trial_id, status=db.TrialStatus.COMPLETED, **{**outcome, "steps": -1}
        )


def test_list_sweeper_trials_in_start_order_and_by_status(
    database: db.Database, sweep_id: int
) -> None:
    ids = [
        db.upsert_trial(database, sweep_id=sweep_id, key=f"k{i}", width=64, params={"i": i})
        for i in range(3)
    ]
    db.finish_trial(
        database,
        trial_id=ids[1],
        status=db.TrialStatus.PRUNED,
        final_eval_loss=4.0,
        steps=5,
        tokens=5,
        tokens_per_s=1.0,
    )
    assert [t.id for t in db.list_trials(database, sweep_id=sweep_id)] == ids
    pruned = db.list_trials(database, sweep_id=sweep_id, status=db.TrialStatus.PRUNED)
    assert [t.id for t in pruned] == [ids[1]]
    with pytest.raises(db.NotFound, match="sweep 404"):
        db.list_trials(database, sweep_id=404)
    with pytest.raises(db.NotFound, match="sweep 404"):
        db.upsert_trial(database, sweep_id=404, key="k", width=64, params={})


# --- metric points ----------------------------------------------------------------------


def test_writing_the_same_points_twice_stores_them_once(
    database: db.Database, sweep_id: int
) -> None:
    trial_id = db.upsert_trial(database, sweep_id=sweep_id, key="k", width=64, params={})
    db.add_metric_points(database, trial_id=trial_id, points=_points(0, 10, 20, loss=2.0))
    # A replay after a crash: the same steps again (one with another value), plus a new one.
    db.add_metric_points(database, trial_id=trial_id, points=_points(20, 30, loss=9.0))
    # Duplicates inside one batch are stored once too.
    db.add_metric_points(database, trial_id=trial_id, points=_points(40, 40))

    curve = db.get_curves(database, sweep_id=sweep_id)[trial_id]
    assert [p.step for p in curve] == [0, 10, 20, 30, 40]
    assert [p.train_loss for p in curve] == [2.0, 2.0, 2.0, 9.0, 2.0]  # first write wins


def test_points_round_trip_and_accept_mappings_with_extra_keys(
    database: db.Database, sweep_id: int
) -> None:
    trial_id = db.upsert_trial(database, sweep_id=sweep_id, key="k", width=64, params={})
    point = db.MetricPoint(
        step=3, tokens=3072, train_loss=3.5, eval_loss=3.75, tokens_per_s=1e4, time_s=1.5
    )
    ray_result = {"step": 4, "tokens": 4096, "train_loss": 3.25, "time_s": 2.0, "done": False}
    db.add_metric_points(database, trial_id=trial_id, points=[point, ray_result])

    curve = db.get_curves(database, sweep_id=sweep_id)[trial_id]
    assert curve == [
        point,
        db.MetricPoint(step=4, tokens=4096, train_loss=3.25, time_s=2.0),
    ]


def test_add_sweeper_metric_points_errors(database: db.Database, sweep_id: int) -> None:
    trial_id = db.upsert_trial(database, sweep_id=sweep_id, key="k", width=64, params={})
    run_id = db.create_run(database, name="r", config={})
    with pytest.raises(ValueError, match="exactly one"):
        db.add_metric_points(database, points=_points(0))
    with pytest.raises(ValueError, match="exactly one"):
        db.add_metric_points(database, trial_id=trial_id, run_id=run_id, points=_points(0))
    with pytest.raises(db.NotFound, match="trial 404"):
        db.add_metric_points(database, trial_id=404, points=_points(0))
    with pytest.raises(db.NotFound, match="run 404"):
        db.add_metric_points(database, run_id=404, points=[])
    with pytest.raises(TypeError, match="time_s"):
        db.add_metric_points(database, trial_id=trial_id, points=[{"step": 0, "tokens": 0}])


def test_get_curves_reads_a_whole_sweep_in_one_query(database: db.Database, sweep_id: int) -> None:
    ids = [
        db.upsert_trial(database, sweep_id=sweep_id, key=f"k{i}", width=64, params={})
        for i in range(6)
    ]
    for trial_id in ids[:-1]:
        db.add_metric_points(database, trial_id=trial_id, points=_points(20, 0, 10))
    other_sweep = db.create_sweep(database, name="other", spec={})
    other_trial = db.upsert_trial(database, sweep_id=other_sweep, key="k", width=64, params={})
    db.add_metric_points(database, trial_id=other_trial, points=_points(0))

    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(database.engine, "before_cursor_execute", count)
    try:
        curves = db.get_curves(database, sweep_id=sweep_id)
    finally:
        event.remove(database.engine, "before_cursor_execute", count)

    assert list(curves) == ids
    assert all([p.step for p in curves[t]] == [0, 10, 20] for t in ids[:-1])
    assert curves[ids[-1]] == []
    assert len(statements) == 2  # the sweep's existence, then every curve at once
    with pytest.raises(db.NotFound, match="sweep 404"):
        db.get_curves(database, sweep_id=404)


# --- non-finite values ------------------------------------------------------------------


def test_non_finite_values_are_stored_as_none(database: db.Database) -> None:
    # SQLite cannot store NaN (it becomes NULL) and JSON has no NaN, so every backend
    # stores NaN and ±inf as NULL; a diverged trial's status says why its loss is missing.
    sweep_id = db.create_sweep(database, name="s", spec={"bound": math.inf, "xs": [1.0, math.nan]})
    assert db.get_sweep(database, sweep_id=sweep_id).spec == {"bound": None, "xs": [1.0, None]}

    trial_id = db.upsert_trial(database, sweep_id=sweep_id, key="k", width=64, params={})
    db.add_metric_points(
        database,
        trial_id=trial_id,
        points=[
            {"step": 0, "tokens": 0, "train_loss": 5.0, "eval_loss": math.nan, "time_s": 0.0},
            {"step": 1, "tokens": 8, "train_loss": math.inf, "tokens_per_s": math.inf, "time_s": 1},
            {"step": 2, "tokens": 16, "train_loss": math.nan, "eval_loss": -math.inf, "time_s": 2},
        ],
    )
    db.finish_trial(
        database,
        trial_id=trial_id,
        status=db.TrialStatus.DIVERGED,
        final_eval_loss=math.nan,
        steps=2,
        tokens=16,
        tokens_per_s=math.inf,
    )

    curve = db.get_curves(database, sweep_id=sweep_id)[trial_id]
    assert [(p.train_loss, p.eval_loss, p.tokens_per_s) for p in curve] == [
        (5.0, None, None),
        (None, None, None),
        (None, None, None),
    ]
    trial = db.get_trial(database, trial_id=trial_id)
    assert trial.status is db.TrialStatus.DIVERGED
    assert trial.final_eval_loss is None and trial.tokens_per_s is None


# --- transfers --------------------------------------------------------------------------


def test_transfers(database: db.Database, sweep_id: int) -> None:
    result = {"drift": -0.02, "target": {"width": 2048, "lr": 0.004, "groups": {"hidden": 0.1}}}
    first = db.create_transfer(database, sweep_id=sweep_id, to_width=1024, result=result)
    second = db.create_transfer(database, sweep_id=sweep_id, to_width=2048, result=result)

    transfer = db.get_transfer(database, transfer_id=first)
    assert (transfer.sweep_id, transfer.to_width, transfer.result) == (sweep_id, 1024, result)
    assert [t.id for t in db.list_transfers(database, sweep_id=sweep_id)] == [second, first]

    with pytest.raises(db.NotFound, match="sweep 404"):
        db.create_transfer(database, sweep_id=404, to_width=1024, result={})
    with pytest.raises(db.NotFound, match="transfer 404"):
        db.get_transfer(database, transfer_id=404)
    with pytest.raises(db.Conflict, match="storing a transfer"):
        db.create_transfer(database, sweep_id=sweep_id, to_width=0, result={})


# --- runs -------------------------------------------------------------------------------


def test_create_and_get_run(database: db.Database, sweep_id: int) -> None:
    transfer_id = db.create_transfer(database, sweep_id=sweep_id, to_width=1024, result={})
    config = {"model": {"width": 1024}, "lr": 0.004}
    run_id = db.create_run(database, name="target", config=config, transfer_id=transfer_id)

    run = db.get_run(database, run_id=run_id)
    assert (run.name, run.config, run.transfer_id) == ("target", config, transfer_id)
    assert run.sweep_id == sweep_id  # taken from the transfer
    assert run.status is db.JobStatus.QUEUED
    assert run.checkpoint_path is run.started_at is run.driver_pid is None
    assert run.driver_heartbeat_at == run.created_at and run.auto_resumes == 0

    standalone = db.get_run(database, run_id=db.create_run(database, name="solo", config={}))
    assert standalone.sweep_id is standalone.transfer_id is None


def test_create_run_errors(database: db.Database, sweep_id: int) -> None:
    transfer_id = db.create_transfer(database, sweep_id=sweep_id, to_width=1024, result={})
    other = db.create_sweep(database, name="other", spec={})
    with pytest.raises(db.Conflict, match=f"belongs to sweep {sweep_id}"):
        db.create_run(database, name="r", config={}, sweep_id=other, transfer_id=transfer_id)
    with pytest.raises(db.NotFound, match="sweep 404"):
        db.create_run(database, name="r", config={}, sweep_id=404)
    with pytest.raises(db.NotFound, match="transfer 404"):
        db.create_run(database, name="r", config={}, transfer_id=404)
    with pytest.raises(db.NotFound, match="run 404"):
        db.get_run(database, run_id=404)


def test_list_runs(database: db.Database) -> None:
    ids = [db.create_run(database, name=f"r{i}", config={}) for i in range(3)]
    db.set_run_status(database, run_id=ids[0], status=db.JobStatus.RUNNING)
    page = db.list_runs(database, offset=1, limit=1)
    assert ([r.id for r in page.items], page.total) == ([ids[1]], 3)
    running = db.list_runs(database, status=db.JobStatus.RUNNING)
    assert ([r.id for r in running.items], running.total) == ([ids[0]], 1)


def test_run_lifecycle(database: db.Database) -> None:
    run_id = db.create_run(database, name="r", config={})
    running = db.set_run_status(database, run_id=run_id, status=db.JobStatus.RUNNING)
    assert running.started_at is not None and running.finished_at is None

    db.touch_run_heartbeat(database, run_id=run_id)
    db.set_run_checkpoint(database, run_id=run_id, checkpoint_path="/ckpt/step-100")
    assert (running.restarts, running.resumed_from_step) == (0, None)
    db.note_run_resumed(database, run_id=run_id, step=100)
    resumed = db.get_run(database, run_id=run_id)
    assert (resumed.restarts, resumed.resumed_from_step) == (1, 100)
    with pytest.raises(db.Conflict, match=r"run .* is running, not queued"):
        db.set_run_status(
            database, run_id=run_id, status=db.JobStatus.RUNNING, expected={db.JobStatus.QUEUED}
        )
    done = db.set_run_status(
        database, run_id=run_id, status=db.JobStatus.COMPLETED, expected={db.JobStatus.RUNNING}
    )
    assert done.status is db.JobStatus.COMPLETED
    assert done.checkpoint_path == "/ckpt/step-100"
    assert done.driver_heartbeat_at is not None
    assert done.finished_at is not None and done.finished_at >= running.started_at

    for call in (
        lambda: db.set_run_status(database, run_id=404, status=db.JobStatus.FAILED),
        lambda: db.set_run_checkpoint(database, run_id=404, checkpoint_path="x"),
        lambda: db.touch_run_heartbeat(database, run_id=404),
        lambda: db.note_run_resumed(database, run_id=404, step=1),
        lambda: db.get_run_curve(database, run_id=404),
    ):
        with pytest.raises(db.NotFound, match="run 404"):
            call()


def test_run_curve_resumes_from_a_checkpoint_without_duplicates(
    database: db.Database, sweep_id: int
) -> None:
    run_id = db.create_run(database, name="r", config={})
    trial_id = db.upsert_trial(database, sweep_id=sweep_id, key="k", width=64, params={})
    db.add_metric_points(database, run_id=run_id, points=_points(0, 100, 200))
    # Resumed from the checkpoint at step 100: steps 100 and 200 are reported again.
    db.add_metric_points(database, run_id=run_id, points=_points(100, 200, 300))
    # A trial's point at the same step is another curve's.
    db.add_metric_points(database, trial_id=trial_id, points=_points(100))

    assert [p.step for p in db.get_run_curve(database, run_id=run_id)] == [0, 100, 200, 300]
    assert [p.step for p in db.get_curves(database, sweep_id=sweep_id)[trial_id]] == [100]


# --- constraints and deletes ------------------------------------------------------------


@pytest.mark.parametrize("table", ["sweeper_sweeps", "sweeper_trials", "sweeper_runs"])
def test_status_check_rejects_an_unknown_status(database: db.Database, table: str) -> None:
    sweep_id = db.create_sweep(database, name="s", spec={})
    db.upsert_trial(database, sweep_id=sweep_id, key="k", width=64, params={})
    db.create_run(database, name="r", config={})
    # Raw SQL: the repository refuses unknown statuses before SQL, the database must too.
    with pytest.raises(db.Conflict, match="status"), database.session() as s:
        s.execute(text(f"UPDATE {table} SET status = 'paused'"))


def test_a_metric_point_belongs_to_exactly_one_owner(database: db.Database) -> None:
    with pytest.raises(db.Conflict, match="one_owner"), database.session() as s:
        s.execute(
            text("INSERT INTO sweeper_metric_points (step, tokens, time_s) VALUES (0, 0, 0.0)")
        )


def test_foreign_keys_are_enforced(database: db.Database) -> None:
    # SQLite enforces them only with PRAGMA foreign_keys=ON, which `connect` sets.
    with pytest.raises(db.Conflict, match=r"(?i)foreign key"), database.session() as s:
        s.execute(
            text(
                "INSERT INTO sweeper_transfers (sweep_id, to_width, result, created_at) "
                "VALUES (404, 64, '{}', CURRENT_TIMESTAMP)"
            )
        )


def test_deleting_a_sweep_cascades_but_keeps_its_runs(database: db.Database, sweep_id: int) -> None:
    trial_id = db.upsert_trial(database, sweep_id=sweep_id, key="k", width=64, params={})
    db.add_metric_points(database, trial_id=trial_id, points=_points(0, 1))
    transfer_id = db.create_transfer(database, sweep_id=sweep_id, to_width=1024, result={})
    run_id = db.create_run(database, name="target", config={}, transfer_id=transfer_id)
    db.add_metric_points(database, run_id=run_id, points=_points(0, 1))
    kept = db.create_sweep(database, name="kept", spec={})
    kept_trial = db.upsert_trial(database, sweep_id=kept, key="k", width=64, params={})

    db.delete_sweep(database, sweep_id=sweep_id)

    with database.session() as s:
        count = {
            table: s.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar()
            for table in (
                "sweeper_sweeps",
                "sweeper_trials",
                "sweeper_transfers",
                "sweeper_runs",
                "sweeper_metric_points",
            )
        }
    assert count == {
        "sweeper_sweeps": 1,
        "sweeper_trials": 1,
        "sweeper_transfers": 0,
        "sweeper_runs": 1,
        "sweeper_metric_points": 2,
    }
    run = db.get_run(database, run_id=run_id)
    assert run.sweep_id is run.transfer_id is None
    assert len(db.get_run_curve(database, run_id=run_id)) == 2
    assert db.get_trial(database, trial_id=kept_trial).sweep_id == kept
    with pytest.raises(db.NotFound, match=f"sweep {sweep_id}"):
        db.delete_sweep(database, sweep_id=sweep_id)


def test_queuing_again_takes_a_job_over_only_from_the_heartbeat_seen(
    database: db.Database, sweep_id: int
) -> None:
    """What the watchdog relies on: a take-over names the heartbeat it judged stale, so a
    driver that beat since, or a second watchdog that was first, makes it a Conflict."""
    db.set_sweep_status(database, sweep_id=sweep_id, status=db.JobStatus.RUNNING)
    db.set_sweep_driver(database, sweep_id=sweep_id, host="node-a", pid=4242)
    seen = db.get_sweep(database, sweep_id=sweep_id)
    assert (seen.driver_host, seen.driver_pid) == ("node-a", 4242)

    taken = db.set_sweep_status(
        database,
        sweep_id=sweep_id,
        status=db.JobStatus.QUEUED,
        expected={db.JobStatus.RUNNING},
        expected_heartbeat=seen.driver_heartbeat_at,
        automatic=True,
    )
    assert taken.auto_resumes == 1 and taken.driver_pid is taken.driver_host is None
    assert taken.driver_heartbeat_at is not None
    assert seen.driver_heartbeat_at is not None
    assert taken.driver_heartbeat_at > seen.driver_heartbeat_at  # a new grace period
    with pytest.raises(db.Conflict, match="its driver beat since"):
        db.set_sweep_status(
            database,
            sweep_id=sweep_id,
            status=db.JobStatus.QUEUED,
            expected_heartbeat=seen.driver_heartbeat_at,
            automatic=True,
        )
    db.set_sweep_status(database, sweep_id=sweep_id, status=db.JobStatus.QUEUED, automatic=True)
    assert db.get_sweep(database, sweep_id=sweep_id).auto_resumes == 2
    by_hand = db.set_sweep_status(database, sweep_id=sweep_id, status=db.JobStatus.QUEUED)
    assert by_hand.auto_resumes == 0  # a user's resume starts the count again


def test_close_running_trials_ends_them_from_their_last_point(
    database: db.Database, sweep_id: int
) -> None:
    done = db.upsert_trial(database, sweep_id=sweep_id, key="done", width=64, params={})
    db.finish_trial(
        database,
        trial_id=done,
        status=db.TrialStatus.COMPLETED,
        final_eval_loss=2.0,
        steps=20,
        tokens=640,
        tokens_per_s=10.0,
    )
    midway = db.upsert_trial(database, sweep_id=sweep_id, key="midway", width=64, params={})
    points = [
        db.MetricPoint(step=s, tokens=32 * s, train_loss=3.0, eval_loss=2.5, time_s=s)
        for s in (10, 20)
    ]
    db.add_metric_points(database, trial_id=midway, points=points)
    fresh = db.upsert_trial(database, sweep_id=sweep_id, key="fresh", width=64, params={})

    closed = db.close_running_trials(
        database, sweep_id=sweep_id, status=db.TrialStatus.ERROR, error="the sweep failed: x"
    )
    assert closed == 2
    trials = {t.key: t for t in db.list_trials(database, sweep_id=sweep_id)}
    assert trials["done"].status is db.TrialStatus.COMPLETED and trials["done"].error is None
    assert (trials["midway"].status, trials["midway"].steps, trials["midway"].tokens) == (
        db.TrialStatus.ERROR,
        20,
        640,
    )
    assert trials["midway"].error == "the sweep failed: x"
    assert trials["midway"].finished_at is not None
    assert (trials["fresh"].steps, trials["fresh"].tokens) == (0, 0)
    assert db.get_trial(database, trial_id=fresh).status is db.TrialStatus.ERROR
    assert db.close_running_trials(database, sweep_id=sweep_id, status="cancelled") == 0  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cancelled or error"):
        db.close_running_trials(database, sweep_id=sweep_id, status=db.TrialStatus.COMPLETED)


def test_a_stopped_sweep_keeps_no_trial_running(database: db.Database, sweep_id: int) -> None:
    """Failing or cancelling a sweep closes its running trials in the same write: a reader
    never sees the sweep stopped with a trial still running (a test polling for the end saw
    that between two writes)."""
    db.set_sweep_status(database, sweep_id=sweep_id, status=db.JobStatus.RUNNING)
    running = db.upsert_trial(database, sweep_id=sweep_id, key="running", width=64, params={})
    stopped = db.set_sweep_status(
        database, sweep_id=sweep_id, status=db.JobStatus.FAILED, error="Unavailable: locked"
    )
    assert stopped.status is db.JobStatus.FAILED
    trial = db.get_trial(database, trial_id=running)
    assert (trial.status, trial.error) == (
        db.TrialStatus.ERROR,
        "the sweep failed: Unavailable: locked",
    )

    db.set_sweep_status(database, sweep_id=sweep_id, status=db.JobStatus.QUEUED)
    db.set_sweep_status(database, sweep_id=sweep_id, status=db.JobStatus.RUNNING)
    again = db.upsert_trial(database, sweep_id=sweep_id, key="again", width=64, params={})
    db.set_sweep_status(database, sweep_id=sweep_id, status=db.JobStatus.CANCELLED)
    trial = db.get_trial(database, trial_id=again)
    assert (trial.status, trial.error) == (db.TrialStatus.CANCELLED, None)


def test_ids_beyond_64_bits_name_no_row(database: db.Database, sweep_id: int) -> None:
    """Not an OverflowError from the driver: no row has such an id."""
    for huge in (2**63, 2**64, -(2**70)):
        with pytest.raises(db.NotFound, match=f"sweep {huge} not found"):
            db.get_sweep(database, sweep_id=huge)
        with pytest.raises(db.NotFound, match=f"run {huge} not found"):
            db.set_run_status(database, run_id=huge, status=db.JobStatus.CANCELLED)
    with pytest.raises(ValueError, match="2\\^63"):
        db.list_sweeps(database, offset=2**63)
