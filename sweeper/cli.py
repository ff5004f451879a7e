"""The `sweeper` command line: a thin shell over models/ (and, later, the service layer).

Every TrainConfig and ModelConfig field is an option of `sweeper train`, generated from the
pydantic fields so the config is defined once. Bad options exit with code 2 and one line on
stderr, never a traceback. `--wait` exits 1 when the job ends other than completed, or when
its driver is gone and nothing resumed it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import sys
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

# Typer vendors click (>= 0.22); its usage errors are these classes, not click's own.
from typer._click.exceptions import BadParameter, UsageError

import db
from models import PRESETS, MetricPoint, ModelConfig, TrainConfig, preset, train
from models.coord_check import CoordCheck, coord_check, plot_coord_check
from sweeper import service
from sweeper.jobs import JobKind, JobRecord, JobSettings
from sweeper.launch import LaunchRequest
from sweeper.spec import SweepSpec
from sweeper.transfer import TransferResult

app = typer.Typer(
    help="Hyperparameter-transfer sweeps for FP8 LLM training with unit scaling (µS).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
sweep_app = typer.Typer(
    help="Proxy sweeps on Ray Tune: start, watch, list, cancel, resume.", no_args_is_help=True
)
app.add_typer(sweep_app, name="sweep")
run_app = typer.Typer(help="Full-size runs launched from a transfer.", no_args_is_help=True)
app.add_typer(run_app, name="run")
stderr = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def _option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _config_parameters() -> list[inspect.Parameter]:
    """One keyword option per config field; None means 'the preset's or the default value'."""
    params = []
    for config_cls in (ModelConfig, TrainConfig):
        for name, field in config_cls.model_fields.items():
            if name == "model":
                continue
            annotation = field.annotation
            decls = [_option_name(name)]
            if annotation is bool:
                decls = [f"{_option_name(name)}/--no-{name.replace('_', '-')}"]
            default = field.get_default(call_default_factory=True)
            help_text = f"{field.description or name} [default: {default}]"
            option = typer.Option(None, *decls, help=help_text, show_default=False)
            params.append(
                inspect.Parameter(
                    name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=option,
                    annotation=annotation | None,  # type: ignore[operator]
                )
            )
    return params


def with_config_options(func: F) -> F:
    """Add every config field as an option; the command receives them as ``overrides``."""
    hints = typing.get_type_hints(func, include_extras=True)
    own = [
        p.replace(annotation=hints[p.name])
        for p in inspect.signature(func).parameters.values()
        if p.name != "overrides"
    ]
    config_params = _config_parameters()
    names = {p.name for p in config_params}

    @functools.wraps(func)
    def command(**kwargs: Any) -> Any:
        overrides = {k: v for k, v in kwargs.items() if k in names and v is not None}
        rest = {k: v for k, v in kwargs.items() if k not in names}
        return func(overrides=overrides, **rest)

    command.__signature__ = inspect.Signature(own + config_params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in own + config_params}
    return command  # type: ignore[return-value]


def _validation_message(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"] if part != "model")
    message = first["msg"].removeprefix("Value error, ")
    return f"{_option_name(where)}: {message}" if where else message


def config_from_options(preset_name: str, overrides: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of a preset with option overrides; raises a UsageError."""
    try:
        base = preset(preset_name)
    except ValueError as e:
        raise BadParameter(str(e), param_hint="--preset") from None
    model_fields = {k: v for k, v in overrides.items() if k in ModelConfig.model_fields}
    train_fields = {k: v for k, v in overrides.items() if k not in model_fields}
    try:
        # Only the preset's own fields count as set: a prepared dataset fills vocab_size.
        model = ModelConfig.model_validate(base.model_dump(exclude_unset=True) | model_fields)
        return TrainConfig.model_validate(train_fields | {"model": model})
    except ValidationError as e:
        raise UsageError(_validation_message(e)) from None


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _print_json(payload: dict[str, Any]) -> None:
    typer.echo(json.dumps(payload, indent=2, allow_nan=False))


def _config_json(config: BaseModel) -> dict[str, Any]:
    return config.model_dump(mode="json")


PresetOption = Annotated[str, typer.Option("--preset", help=f"model preset: {', '.join(PRESETS)}")]
JsonOption = Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")]


@app.command("train")
@with_config_options
def train_command(
    overrides: dict[str, Any],
    preset_name: PresetOption = "debug",
    json_output: JsonOption = False,
) -> None:
    """Train one model; the defaults are a tiny µS FP8 run on the stdlib corpus."""
    config = config_from_options(preset_name, overrides)
    with Progress(
        TextColumn("[bold]train[/]"),
        BarColumn(),
        TextColumn("step {task.completed}/{task.total}"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=stderr,
        transient=json_output,
    ) as progress:
        task = progress.add_task("", total=config.steps)

        def report(point: MetricPoint) -> None:
            progress.update(
                task,
                completed=point.step,
                description=f"train {point.train_loss:.3f}  eval {point.eval_loss:.3f}  "
                f"{point.tokens_per_s:,.0f} tok/s (startup {point.startup_s:.1f} s)",
            )

        result = train(config, report=report)
    if json_output:
        _print_json(result.summary() | {"config": _config_json(config)})
        return
    loss = _finite_or_none(result.final_eval_loss)
    typer.echo(
        f"{result.status} after {result.steps} steps: eval loss "
        f"{'n/a' if loss is None else f'{loss:.4f}'}, {result.tokens_per_s:,.0f} tokens/s"
        f" after {result.startup_s:.1f} s of startup"
    )


def _parse_widths(text: str) -> list[int]:
    try:
        widths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BadParameter(f"{text!r} is not a comma-separated list of integers") from None
    if not widths or min(widths) < 1:
        raise BadParameter("give at least one positive width, e.g. 64,128,256")
    return widths


def _coord_table(result: CoordCheck, title: str, table_of: dict[int, dict[str, float]]) -> Table:
    table = Table(title=title)
    table.add_column("layer")
    for width in result.widths:
        table.add_column(str(width), justify="right")
    for layer in table_of[result.widths[0]]:
        table.add_row(layer, *(f"{table_of[w][layer]:.3f}" for w in result.widths))
    return table


@app.command("coord-check")
@with_config_options
def coord_check_command(
    overrides: dict[str, Any],
    widths: Annotated[
        str, typer.Option(help="comma-separated widths, each a multiple of head_dim")
    ] = "64,128,256",
    plot: Annotated[Path | None, typer.Option(help="save RMS-vs-width plots to this PNG")] = None,
    preset_name: PresetOption = "debug",
    json_output: JsonOption = False,
) -> None:
    """Per-layer RMS at init and after --steps optimizer steps (default 10), across widths."""
    parsed = _parse_widths(widths)
    config = config_from_options(preset_name, {"steps": 10} | overrides)
    for width in parsed:  # every width must be a valid model, checked before any work
        config_from_options(preset_name, {**overrides, "width": width})
    with stderr.status(f"coordinate check at widths {widths} ..."):
        result = coord_check(parsed, config, steps=config.steps)
    if plot is not None:
        plot_coord_check(result, plot)
    if json_output:
        _print_json(
            {
                "widths": result.widths,
                "steps": result.steps,
                "init": {str(w): rms for w, rms in result.init.items()},
                "trained": {str(w): rms for w, rms in result.trained.items()},
                "config": _config_json(config),
            }
        )
        return
    console = Console()
    console.print(_coord_table(result, "RMS at init", result.init))
    console.print(_coord_table(result, f"RMS after {result.steps} steps", result.trained))
    if plot is not None:
        console.print(f"plot saved to {plot}")


def _load_spec(path: Path) -> SweepSpec:
    if not path.is_file():
        raise BadParameter(f"no such file {str(path)!r}", param_hint="SPEC")
    try:
        return SweepSpec.load(path)
    except ValidationError as e:
        raise UsageError(f"{path}: {_validation_message(e)}") from None
    except (ValueError, yaml.YAMLError) as e:  # JSON/YAML syntax
        raise UsageError(f"{path}: not valid YAML/JSON: {str(e).splitlines()[0]}") from None


def _trial_json(trial: db.Trial) -> dict[str, Any]:
    return {
        "id": trial.id,
        "key": trial.key,
        "width": trial.width,
        "params": trial.params,
        "status": str(trial.status),
        "final_eval_loss": trial.final_eval_loss,
        "steps": trial.steps,
        "tokens_per_s": trial.tokens_per_s,
        "startup_s": trial.startup_s,
        "node_id": trial.node_id,
        "error": trial.error,
    }


def _progress_json(progress: service.SweepProgress) -> dict[str, Any]:
    sweep = progress.sweep
    return {
        "id": sweep.id,
        "name": sweep.name,
        "status": str(sweep.status),
        "stale": progress.stale,
        "auto_resumes": sweep.auto_resumes,
        "planned": progress.planned,
        "finished": progress.finished,
        "created_at": sweep.created_at.isoformat(),
        "finished_at": sweep.finished_at.isoformat() if sweep.finished_at else None,
        "error": sweep.error,
        "data": _data_json(progress.data),
        "best": {str(w): _trial_json(t) for w, t in progress.best_per_width().items()},
        "trials": [_trial_json(t) for t in progress.trials],
    }


def _data_json(data: service.DataIdentity | None) -> dict[str, Any] | None:
    return None if data is None else data.model_dump(mode="json")


def _data_line(data: service.DataIdentity | None) -> str:
    if data is None:
        return "data: not recorded (stored before data identities were)"
    counts = (
        ""
        if data.train_tokens is None or data.val_tokens is None
        else f", {data.train_tokens:,} train + {data.val_tokens:,} validation tokens"
    )
    return (
        f"data: {data.source} (tokenizer {data.tokenizer}, vocabulary {data.vocab_size:,}"
        f"{counts}; sha256 {data.sha256[:12]})"
    )


def _stale(stale: bool) -> str:
    return " (stale: its driver is gone)" if stale else ""


def _print_progress(progress: service.SweepProgress) -> None:
    sweep = progress.sweep
    console = Console()
    console.print(
        f"sweep {sweep.id} [bold]{sweep.name}[/]: {sweep.status}{_stale(progress.stale)}, "
        f"{progress.finished}/{progress.planned} trials finished"
    )
    console.print(_data_line(progress.data), highlight=False)
    if sweep.error:
        console.print(f"error: {sweep.error}", highlight=False)
    table = Table()
    for column in ("key", "status", "final eval loss", "steps", "tokens/s", "startup s"):
        table.add_column(column)
    for t in progress.trials:
        loss = "-" if t.final_eval_loss is None else f"{t.final_eval_loss:.4f}"
        speed = "-" if t.tokens_per_s is None else f"{t.tokens_per_s:,.0f}"
        startup = "-" if t.startup_s is None else f"{t.startup_s:.1f}"
        table.add_row(t.key, str(t.status), loss, str(t.steps or "-"), speed, startup)
    console.print(table)
    for width, best in progress.best_per_width().items():
        console.print(f"best at width {width}: {best.key} (eval loss {best.final_eval_loss:.4f})")


class Unfinished(Exception):
    """What `--wait` followed did not complete (exit 1, the message on stderr)."""


class DriverWatch:
    """For `--wait`: a job whose driver is gone (`service.is_stale`) and that nothing resumed
    within the time a watchdog needs to notice (`stale_s`) will not end by itself."""

    def __init__(self, kind: JobKind, job_id: int):
        self.kind, self.job_id = kind, job_id
        self.grace_s = JobSettings().stale_s
        self.gone_since: float | None = None

    def check(self, job: JobRecord, stale: bool) -> None:
        if not stale:
            self.gone_since = None
            return
        now = time.monotonic()
        self.gone_since = self.gone_since or now
        if now - self.gone_since > self.grace_s:
            raise Unfinished(
                f"{self.kind} {self.job_id} is {job.status} but its driver is gone (last"
                f" heartbeat {service.last_beat_text(job)}) and nothing resumed it in"
                f" {self.grace_s:.0f} s: `sweeper {self.kind} resume {self.job_id}` continues it"
            )


def _ended(kind: str, job: JobRecord) -> None:
    """After the job's progress is shown: exit 1 unless it completed."""
    if job.status is not db.JobStatus.COMPLETED:
        reason = f": {job.error}" if job.error else ""
        raise Unfinished(f"{kind} {job.id} ended {job.status}{reason}")


def _watch(database: db.Database, sweep_id: int) -> service.SweepProgress:
    """Live progress on stderr until the sweep ends."""
    progress = service.sweep_progress(database, sweep_id)
    driver = DriverWatch("sweep", sweep_id)
    with Progress(
        TextColumn(f"[bold]sweep {sweep_id}[/]"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} trials"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=stderr,
    ) as bar:
        task = bar.add_task("", total=progress.planned)
        while True:
            best = ", ".join(
                f"w{w} {t.final_eval_loss:.3f}" for w, t in progress.best_per_width().items()
            )
            bar.update(
                task,
                completed=progress.finished,
                description=f"{progress.sweep.status}  best: {best or '-'}",
            )
            if progress.sweep.status.finished:
                return progress
            driver.check(progress.sweep, progress.stale)
            time.sleep(1.0)
            progress = service.sweep_progress(database, sweep_id)


IdArgument = Annotated[int, typer.Argument(help="sweep id")]


@sweep_app.command("start")
def sweep_start(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="sweep spec, YAML or JSON")],
    wait: Annotated[bool, typer.Option("--wait", help="follow the sweep until it ends")] = False,
    json_output: JsonOption = False,
) -> None:
    """Start a sweep in the background and print its id."""
    spec = _load_spec(spec_path)
    database = db.connect()
    try:
        sweep = service.start_sweep(database, spec)
    except service.InvalidInput as e:
        raise UsageError(f"{spec_path}: {e}") from None
    if not wait:
        if json_output:
            _print_json({"id": sweep.id, "status": str(sweep.status)})
        else:
            typer.echo(sweep.id)
        return
    stderr.print(f"sweep {sweep.id} started")
    progress = _watch(database, sweep.id)
    if json_output:
        _print_json(_progress_json(progress))
    else:
        _print_progress(progress)
    _ended("sweep", progress.sweep)


@sweep_app.command("status")
def sweep_status(sweep_id: IdArgument, json_output: JsonOption = False) -> None:
    """A sweep's state, its trials and the best trial at each width."""
    progress = service.sweep_progress(db.connect(), sweep_id)
    if json_output:
        _print_json(_progress_json(progress))
    else:
        _print_progress(progress)


@sweep_app.command("list")
def sweep_list(
    limit: Annotated[int, typer.Option(min=1, help="newest first, at most this many")] = 50,
    json_output: JsonOption = False,
) -> None:
    """Sweeps, newest first."""
    page = service.list_sweeps(db.connect(), limit=limit)
    if json_output:
        _print_json(
            {
                "total": page.total,
                "sweeps": [
                    {
                        "id": s.id,
                        "name": s.name,
                        "status": str(s.status),
                        "created_at": s.created_at.isoformat(),
                    }
                    for s in page.items
                ],
            }
        )
        return
    table = Table(title=f"{page.total} sweeps")
    for column in ("id", "name", "status", "created"):
        table.add_column(column)
    for s in page.items:
        table.add_row(str(s.id), s.name, str(s.status), f"{s.created_at:%Y-%m-%d %H:%M}")
    Console().print(table)


@sweep_app.command("cancel")
def sweep_cancel(sweep_id: IdArgument, json_output: JsonOption = False) -> None:
    """Stop a sweep's running trials; what was recorded stays."""
    sweep = service.cancel_sweep(db.connect(), sweep_id)
    if json_output:
        _print_json({"id": sweep.id, "status": str(sweep.status)})
    else:
        typer.echo(f"sweep {sweep.id} {sweep.status}")


@sweep_app.command("resume")
def sweep_resume(
    sweep_id: IdArgument,
    wait: Annotated[bool, typer.Option("--wait", help="follow the sweep until it ends")] = False,
    json_output: JsonOption = False,
) -> None:
    """Continue a sweep whose driver died (or that failed or was cancelled)."""
    database = db.connect()
    service.resume_sweep(database, sweep_id)
    _after_resume(
        "sweep",
        sweep_id,
        watch=functools.partial(_watch, database, sweep_id) if wait else None,
        as_json=_progress_json if json_output else None,
        show=_print_progress,
        job_of=lambda progress: progress.sweep,
    )


ProgressT = TypeVar("ProgressT")


def _after_resume(
    kind: str,
    job_id: int,
    *,
    watch: Callable[[], ProgressT] | None,
    as_json: Callable[[ProgressT], dict[str, Any]] | None,
    show: Callable[[ProgressT], None],
    job_of: Callable[[ProgressT], JobRecord],
) -> None:
    """Follow a resumed job to its end when there is a ``watch`` (--wait), else say that it
    resumed; in JSON when there is ``as_json`` (--json)."""
    if watch is None:
        if as_json is None:
            typer.echo(f"{kind} {job_id} resumed")
        else:
            _print_json({"id": job_id, "resumed": True})
        return
    progress = watch()
    if as_json is None:
        show(progress)
    else:
        _print_json(as_json(progress))
    _ended(kind, job_of(progress))


def _print_transfer(sweep_id: int, result: TransferResult) -> None:
    console = Console()
    table = Table(title=f"sweep {sweep_id} ({result.parametrization}): optimum per proxy width")
    for column in ("width", "base LR", "± log2", "fit", "loss", "WD", "tau", "finite pts"):
        table.add_column(column, justify="right")
    for w in result.widths:
        table.add_row(
            str(w.width),
            f"{w.lr.value:.4g}",
            f"{w.lr.log2_uncertainty:.2f}",
            w.lr.method,
            f"{w.lr.loss:.4f}",
            f"{w.wd:g}",
            "-" if w.tau is None else f"{w.tau:g}",
            str(w.finite_points),
        )
    console.print(table)
    if result.drift is not None:
        console.print(
            f"drift: {result.drift.slope:+.3f} ± {result.drift.uncertainty:.3f} log2(LR) per"
            " doubling of width"
        )
    console.print(
        f"base LR {result.base_lr:.4g}, base WD {result.base_wd:g}"
        + ("" if result.base_tau is None else f", tau {result.base_tau:g}")
        + (
            ""
            if result.extrapolated_lr is None
            else f" (drift line at {result.to_width}: {result.extrapolated_lr:.4g})"
        )
    )
    groups = Table(title=f"per parameter group at width {result.to_width}")
    for column in ("group", "fan_in", "LR", "WD"):
        groups.add_column(column, justify="right")
    for g in result.groups:
        groups.add_row(g.group, str(g.fan_in), f"{g.lr:.4g}", f"{g.wd:g}")
    console.print(groups)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)


SweepOption = Annotated[
    int | None,
    typer.Option("--sweep", help="the sweep to transfer from [default: the latest completed]"),
]


@app.command("transfer")
def transfer_command(
    to_width: Annotated[int, typer.Option("--to-width", help="the target model's width")],
    sweep_id: SweepOption = None,
    json_output: JsonOption = False,
) -> None:
    """Fit the proxies' optima, check their drift, and give the target width's LR/WD."""
    database = db.connect()
    try:
        transfer_id, result = service.transfer(database, sweep_id=sweep_id, to_width=to_width)
    except service.InvalidInput as e:
        raise BadParameter(e.message, param_hint=_option_name(e.field)) from None
    if json_output:
        _print_json({"transfer_id": transfer_id} | result.to_dict())
    else:
        _print_transfer(db.get_transfer(database, transfer_id=transfer_id).sweep_id, result)


def _run_json(progress: service.RunProgress) -> dict[str, Any]:
    run = progress.run
    return {
        "id": run.id,
        "name": run.name,
        "status": str(run.status),
        "stale": progress.stale,
        "auto_resumes": run.auto_resumes,
        "sweep_id": run.sweep_id,
        "transfer_id": run.transfer_id,
        "checkpoint_path": run.checkpoint_path,
        "restarts": run.restarts,
        "resumed_from_step": run.resumed_from_step,
        "error": run.error,
        "data": _data_json(progress.data),
        "config": run.config,
        "curve": [dataclasses.asdict(p) for p in progress.curve],
    }


def _print_run(progress: service.RunProgress) -> None:
    run, console = progress.run, Console()
    console.print(
        f"run {run.id} [bold]{run.name}[/]: {run.status}{_stale(progress.stale)}", highlight=False
    )
    console.print(_data_line(progress.data), highlight=False)
    if run.restarts:
        console.print(
            f"restarted {run.restarts}x, last from the checkpoint of step {run.resumed_from_step}"
        )
    if run.error:
        console.print(f"error: {run.error}", highlight=False)
    if progress.curve:
        last = progress.curve[-1]
        eval_loss = "-" if last.eval_loss is None else f"{last.eval_loss:.4f}"
        startup = "-" if last.startup_s is None else f"{last.startup_s:.1f}"
        console.print(
            f"step {last.step}: eval loss {eval_loss}, {last.tokens_per_s or 0:,.0f} tok/s"
            f" (startup {startup} s)"
        )


def _watch_run(database: db.Database, run_id: int) -> service.RunProgress:
    progress = service.run_progress(database, run_id)
    driver = DriverWatch("run", run_id)
    steps = progress.run.config["train"]["steps"]
    with Progress(
        TextColumn(f"[bold]run {run_id}[/]"),
        BarColumn(),
        TextColumn("step {task.completed}/{task.total}"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=stderr,
    ) as bar:
        task = bar.add_task("", total=steps)
        while True:
            last = progress.curve[-1] if progress.curve else None
            loss = "" if last is None or last.eval_loss is None else f"eval {last.eval_loss:.3f}"
            bar.update(
                task,
                completed=last.step if last else 0,
                description=f"{progress.run.status} {loss}",
            )
            if progress.run.status.finished:
                return progress
            driver.check(progress.run, progress.stale)
            time.sleep(1.0)
            progress = service.run_progress(database, run_id)


@app.command("launch")
def launch_command(
    to_width: Annotated[int, typer.Option("--to-width", help="the target model's width")],
    steps: Annotated[int, typer.Option(help="optimizer steps of the full-size run")],
    sweep_id: SweepOption = None,
    depth: Annotated[int | None, typer.Option(help="[default: the sweep's depth]")] = None,
    workers: Annotated[int, typer.Option(help="data-parallel workers")] = 1,
    gpus_per_worker: Annotated[float, typer.Option(help="0: train on CPUs")] = 0.0,
    precision: Annotated[str, typer.Option(help="fp8, bf16 or fp32")] = "fp8",
    checkpoint_every: Annotated[
        int | None, typer.Option(help="steps between checkpoints [default: eval interval]")
    ] = None,
    strategy: Annotated[str, typer.Option(help="auto, ddp or fsdp")] = "auto",
    data: Annotated[
        str | None, typer.Option(help="the target's data [default: the sweep's]")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="follow the run until it ends")] = False,
    json_output: JsonOption = False,
) -> None:
    """Start the full-size run with the values transferred from a sweep (Ray Train)."""
    try:
        request = LaunchRequest(
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
        raise UsageError(_validation_message(e)) from None
    database = db.connect()
    try:
        run = service.launch_run(database, request)
    except service.InvalidInput as e:
        raise BadParameter(e.message, param_hint=_option_name(e.field)) from None
    assert run.transfer_id is not None  # a launch always stores its transfer
    for warning in db.get_transfer(database, transfer_id=run.transfer_id).result["warnings"]:
        stderr.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if not wait:
        if json_output:
            _print_json({"id": run.id, "status": str(run.status)})
        else:
            typer.echo(run.id)
        return
    progress = _watch_run(database, run.id)
    if json_output:
        _print_json(_run_json(progress))
    else:
        _print_run(progress)
    _ended("run", progress.run)


RunIdArgument = Annotated[int, typer.Argument(help="run id")]


@run_app.command("status")
def run_status(run_id: RunIdArgument, json_output: JsonOption = False) -> None:
    """A run's state, its restarts and its latest point."""
    progress = service.run_progress(db.connect(), run_id)
    if json_output:
        _print_json(_run_json(progress))
    else:
        _print_run(progress)


@run_app.command("list")
def run_list(
    limit: Annotated[int, typer.Option(min=1, help="newest first, at most this many")] = 50,
    json_output: JsonOption = False,
) -> None:
    """Runs, newest first."""
    page = service.list_runs(db.connect(), limit=limit)
    if json_output:
        _print_json(
            {
                "total": page.total,
                "runs": [
                    {
                        "id": r.id,
                        "name": r.name,
                        "status": str(r.status),
                        "sweep_id": r.sweep_id,
                        "created_at": r.created_at.isoformat(),
                    }
                    for r in page.items
                ],
            }
        )
        return
    table = Table(title=f"{page.total} runs")
    for column in ("id", "name", "status", "sweep", "created"):
        table.add_column(column)
    for r in page.items:
        table.add_row(
            str(r.id),
            r.name,
            str(r.status),
            str(r.sweep_id or "-"),
            f"{r.created_at:%Y-%m-%d %H:%M}",
        )
    Console().print(table)


@run_app.command("cancel")
def run_cancel(run_id: RunIdArgument, json_output: JsonOption = False) -> None:
    """Stop a run at its next report; its checkpoints stay."""
    run = service.cancel_run(db.connect(), run_id)
    if json_output:
        _print_json({"id": run.id, "status": str(run.status)})
    else:
        typer.echo(f"run {run.id} {run.status}")


@run_app.command("resume")
def run_resume(
    run_id: RunIdArgument,
    wait: Annotated[bool, typer.Option("--wait", help="follow the run until it ends")] = False,
    json_output: JsonOption = False,
) -> None:
    """Continue a run whose driver died (or that failed or was cancelled) from its latest
    checkpoint."""
    database = db.connect()
    service.resume_run(database, run_id)
    _after_resume(
        "run",
        run_id,
        watch=functools.partial(_watch_run, database, run_id) if wait else None,
        as_json=_run_json if json_output else None,
        show=_print_run,
        job_of=lambda progress: progress.run,
    )


@app.command("serve")
def serve_command(
    host: Annotated[
        str, typer.Option(help="interface to bind; beyond loopback, reads need the token too")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8000,
) -> None:
    """Run the REST API and the live dashboard (prints a token once if none is set)."""
    from api import serve  # here, not at the top: the other commands need no web stack

    serve(host, port)


# --- sweeper data: one self-contained block (its logic is models.prepare) --------------

data_app = typer.Typer(
    help="Datasets: local text tokenized into the token files a run reads.", no_args_is_help=True
)
app.add_typer(data_app, name="data")


@data_app.command("prepare")
def data_prepare(
    inputs: Annotated[
        list[Path], typer.Argument(metavar="INPUT...", help=".txt, .jsonl or .parquet files")
    ],
    tokenizer: Annotated[
        str, typer.Option(help="bytes, bpe (trained on the inputs) or a tokenizer.json path")
    ],
    out: Annotated[Path, typer.Option(help="the directory to create (must not exist)")],
    vocab_size: Annotated[int | None, typer.Option(help="bpe: its vocabulary size")] = None,
    text_field: Annotated[
        str, typer.Option(help="the text's field (.jsonl) or column (.parquet)")
    ] = "text",
    dtype: Annotated[str, typer.Option(help="token files: auto, uint16 or uint32")] = "auto",
    json_output: JsonOption = False,
) -> None:
    """Tokenize local text files into a dataset directory: train.bin, val.bin (nanoGPT's
    layout) and meta.json; give it to a run as --data DIR or a spec's train.data."""
    # Imported here so that the block moves into another module as one piece.
    from models.data import DataError
    from models.prepare import DtypeChoice, PrepareError, prepare

    if dtype not in ("auto", "uint16", "uint32"):
        raise BadParameter(f"{dtype!r} is not auto, uint16 or uint32", param_hint="--dtype")
    try:
        with stderr.status(f"preparing {out} ..."):
            identity = prepare(
                inputs,
                tokenizer=tokenizer,
                out=out,
                vocab_size=vocab_size,
                text_field=text_field,
                dtype=typing.cast(DtypeChoice, dtype),
            )
    except PrepareError as e:
        hint = "INPUT" if e.field == "inputs" else _option_name(e.field)
        raise BadParameter(str(e), param_hint=hint) from None
    except DataError as e:
        raise UsageError(str(e)) from None
    if json_output:
        _print_json(identity.model_dump(mode="json"))
    else:
        typer.echo(_data_line(identity).removeprefix("data: "))


def main() -> None:
    """Entry point: click's usage errors become one line on stderr and exit code 2."""
    command = typer.main.get_command(app)
    try:
        command.main(prog_name="sweeper", standalone_mode=False)
    except UsageError as e:
        stderr.print(f"sweeper: error: {e.format_message()}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (db.StorageError, Unfinished) as e:  # NotFound, Conflict, a job that did not end well
        stderr.print(f"sweeper: error: {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except typer.Abort:
        stderr.print("sweeper: aborted")
        sys.exit(130)
