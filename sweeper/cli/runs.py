"""`sweeper launch` and `sweeper run status|metrics|list|cancel|resume`."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError
from typer._click.exceptions import UsageError

from sweeper import service
from sweeper.cli import render
from sweeper.cli._app import (
    JsonOption,
    LimitOption,
    OffsetOption,
    WaitOption,
    app,
    database,
    invalid_input,
    run_app,
    settings,
    validation_message,
)
from sweeper.cli.sweeps import SweepOption

RunIdArgument = Annotated[int, typer.Argument(help="run id")]
_PRECISIONS = ", ".join(service.PRECISIONS)


def _show(db: service.Database, config: service.Settings, run_id: int, as_json: bool) -> None:
    view = service.get_run(db, run_id, config)
    render.emit(view, as_json, lambda: render.run(view, service.run_metrics(db, run_id)))


def _follow(db: service.Database, config: service.Settings, run_id: int, as_json: bool) -> None:
    """--wait: live progress, then the run as `status` shows it; exit 1 unless completed."""
    watch = render.DriverWatch("run", run_id, config)
    view, _ = render.watch_run(
        lambda: (service.get_run(db, run_id, config), service.run_metrics(db, run_id)), watch
    )
    _show(db, config, run_id, as_json)
    render.ended("run", run_id, view.status, view.error)


@app.command("launch")
def launch_command(
    to_width: Annotated[int, typer.Option("--to-width", help="the target model's width")],
    steps: Annotated[int, typer.Option(help="optimizer steps of the full-size run")],
    sweep_id: SweepOption = None,
    depth: Annotated[int | None, typer.Option(help="[default: the sweep's depth]")] = None,
    workers: Annotated[int, typer.Option(help="data-parallel workers")] = 1,
    gpus_per_worker: Annotated[float, typer.Option(help="0: train on CPUs")] = 0.0,
    precision: Annotated[str, typer.Option(help=_PRECISIONS)] = "fp8",
    checkpoint_every: Annotated[
        int | None, typer.Option(help="steps between checkpoints [default: eval interval]")
    ] = None,
    strategy: Annotated[str, typer.Option(help="auto, ddp or fsdp")] = "auto",
    data: Annotated[
        str | None, typer.Option(help="the target's data [default: the sweep's]")
    ] = None,
    wait: WaitOption = False,
    json_output: JsonOption = False,
) -> None:
    """Start the full-size run with the values transferred from a sweep (Ray Train)."""
    try:
        request = service.LaunchRequest(
            sweep_id=sweep_id,
            to_width=to_width,
            steps=steps,
            depth=depth,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            precision=precision,
            checkpoint_every=checkpoint_every,
            strategy=strategy,
            data=data,
        )
    except ValidationError as e:
        raise UsageError(validation_message(e)) from None
    config = settings()
    db = database(config)
    try:
        run = service.launch_run(db, request, config)
    except service.InvalidInput as e:
        raise invalid_input(e) from None
    assert run.transfer_id is not None  # a launch always stores its transfer
    render.warnings(service.get_transfer(db, run.transfer_id))
    if wait:
        _follow(db, config, run.id, json_output)
    else:
        render.emit(run, json_output, str(run.id))


@run_app.command("status")
def run_status(run_id: RunIdArgument, json_output: JsonOption = False) -> None:
    """A run's state, its restarts and its latest point (`GET /runs/ID`)."""
    config = settings()
    _show(database(config), config, run_id, json_output)


@run_app.command("metrics")
def run_metrics(run_id: RunIdArgument, json_output: JsonOption = False) -> None:
    """A run's loss curve so far, as columns (`GET /runs/ID/metrics`)."""
    config = settings()
    metrics = service.run_metrics(database(config), run_id)
    render.emit(metrics, json_output, lambda: render.metrics(metrics))


@run_app.command("list")
def run_list(
    offset: OffsetOption = 0, limit: LimitOption = 50, json_output: JsonOption = False
) -> None:
    """Runs, newest first (`GET /runs`)."""
    config = settings()
    page = service.list_runs(database(config), offset=offset, limit=limit, settings=config)
    render.emit(page, json_output, lambda: render.runs(page))


@run_app.command("cancel")
def run_cancel(run_id: RunIdArgument, json_output: JsonOption = False) -> None:
    """Stop a run at its next report; its checkpoints stay."""
    config = settings()
    view = service.cancel_run(database(config), run_id, config)
    render.emit(view, json_output, f"run {view.id} {view.status}")


@run_app.command("resume")
def run_resume(
    run_id: RunIdArgument, wait: WaitOption = False, json_output: JsonOption = False
) -> None:
    """Continue a run whose driver died (or that failed or was cancelled) from its latest
    checkpoint."""
    config = settings()
    db = database(config)
    view = service.resume_run(db, run_id, config)
    if wait:
        _follow(db, config, run_id, json_output)
    else:
        render.emit(view, json_output, f"run {run_id} resumed")
