"""`sweeper sweep start|status|trials|list|cancel|resume` and `sweeper transfer`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml
from pydantic import ValidationError
from typer._click.exceptions import BadParameter, UsageError

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
    settings,
    stderr,
    sweep_app,
    validation_message,
)

IdArgument = Annotated[int, typer.Argument(help="sweep id")]


def _load_spec(path: Path) -> service.SweepSpec:
    if not path.is_file():
        raise BadParameter(f"no such file {str(path)!r}", param_hint="SPEC")
    try:
        return service.SweepSpec.load(path)
    except ValidationError as e:
        raise UsageError(f"{path}: {validation_message(e)}") from None
    except (ValueError, yaml.YAMLError) as e:  # JSON/YAML syntax
        raise UsageError(f"{path}: not valid YAML/JSON: {str(e).splitlines()[0]}") from None


def _show(db: service.Database, config: service.Settings, sweep_id: int, as_json: bool) -> None:
    detail = service.get_sweep(db, sweep_id, config)
    render.emit(
        detail,
        as_json,
        lambda: render.sweep(
            detail, service.list_trials(db, sweep_id, limit=max(detail.planned, 1))
        ),
    )


def _follow(db: service.Database, config: service.Settings, sweep_id: int, as_json: bool) -> None:
    """--wait: live progress, then the sweep as `status` shows it; exit 1 unless completed."""
    watch = render.DriverWatch("sweep", sweep_id, config)
    detail = render.watch_sweep(lambda: service.get_sweep(db, sweep_id, config), watch)
    _show(db, config, sweep_id, as_json)
    render.ended("sweep", sweep_id, detail.status, detail.error)


@sweep_app.command("start")
def sweep_start(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="sweep spec, YAML or JSON")],
    wait: WaitOption = False,
    json_output: JsonOption = False,
) -> None:
    """Start a sweep in the background and print its id."""
    spec = _load_spec(spec_path)
    config = settings()
    db = database(config)
    try:
        created = service.start_sweep(db, spec, config)
    except service.InvalidInput as e:
        raise UsageError(f"{spec_path}: {e}") from None
    if not wait:
        render.emit(created, json_output, str(created.id))
        return
    stderr.print(f"sweep {created.id} started")
    _follow(db, config, created.id, json_output)


@sweep_app.command("status")
def sweep_status(sweep_id: IdArgument, json_output: JsonOption = False) -> None:
    """A sweep's state, its trials and the best trial at each width (`GET /sweeps/ID`)."""
    config = settings()
    _show(database(config), config, sweep_id, json_output)


@sweep_app.command("trials")
def sweep_trials(
    sweep_id: IdArgument,
    offset: OffsetOption = 0,
    limit: LimitOption = 50,
    json_output: JsonOption = False,
) -> None:
    """A sweep's trials in the order they started (`GET /sweeps/ID/trials`)."""
    config = settings()
    db = database(config)
    page = service.list_trials(db, sweep_id, offset=offset, limit=limit)
    render.emit(
        page, json_output, lambda: render.sweep(service.get_sweep(db, sweep_id, config), page)
    )


@sweep_app.command("list")
def sweep_list(
    offset: OffsetOption = 0, limit: LimitOption = 50, json_output: JsonOption = False
) -> None:
    """Sweeps, newest first, with their progress (`GET /sweeps`)."""
    config = settings()
    page = service.list_sweeps(database(config), offset=offset, limit=limit, settings=config)
    render.emit(page, json_output, lambda: render.sweeps(page))


@sweep_app.command("cancel")
def sweep_cancel(sweep_id: IdArgument, json_output: JsonOption = False) -> None:
    """Stop a sweep's running trials; what was recorded stays."""
    config = settings()
    summary = service.cancel_sweep(database(config), sweep_id, config)
    render.emit(summary, json_output, f"sweep {summary.id} {summary.status}")


@sweep_app.command("resume")
def sweep_resume(
    sweep_id: IdArgument, wait: WaitOption = False, json_output: JsonOption = False
) -> None:
    """Continue a sweep whose driver died (or that failed or was cancelled)."""
    config = settings()
    db = database(config)
    summary = service.resume_sweep(db, sweep_id, config)
    if wait:
        _follow(db, config, sweep_id, json_output)
    else:
        render.emit(summary, json_output, f"sweep {sweep_id} resumed")


SweepOption = Annotated[
    int | None,
    typer.Option("--sweep", help="the sweep to transfer from [default: the latest completed]"),
]


def _token_count(text: str | None) -> int | None:
    """``--to-tokens``: a whole number of tokens, written as 2000000000 or 2e9."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadParameter(f"{text!r} is not a number", param_hint="--to-tokens") from None
    if not value.is_integer() or value < 1:
        raise BadParameter(f"{text!r} is not a whole number >= 1", param_hint="--to-tokens")
    return int(value)


@app.command("transfer")
def transfer_command(
    to_width: Annotated[int, typer.Option("--to-width", help="the target model's width")],
    sweep_id: SweepOption = None,
    to_tokens: Annotated[
        str | None,
        typer.Option(
            "--to-tokens",
            metavar="N",
            help="the target's training tokens (e.g. 2e9): with proxies at two or more"
            " horizons the optimum is carried there",
        ),
    ] = None,
    to_depth: Annotated[
        int | None,
        typer.Option("--to-depth", help="the target's blocks [default: the proxies' depth]"),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Fit the proxies' optima, check their drift, and give the target's LR/WD (at its
    tokens with --to-tokens, at its depth with --to-depth)."""
    tokens = _token_count(to_tokens)
    config = settings()
    try:
        transferred = service.transfer(
            database(config),
            sweep_id=sweep_id,
            to_width=to_width,
            to_tokens=tokens,
            to_depth=to_depth,
        )
    except service.InvalidInput as e:
        raise invalid_input(e) from None
    render.emit(transferred, json_output, lambda: render.transfer(transferred))
