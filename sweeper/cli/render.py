"""Everything the CLI prints. ``--json`` is a read model of `sweeper.views` serialised as
the REST API serves it; the rest are tables and live progress for a person (progress goes
to stderr, so that stdout holds only the result)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sweeper import service
from sweeper.cli._app import Unfinished, stderr


def print_json(payload: BaseModel | dict[str, Any]) -> None:
    data = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload
    typer.echo(json.dumps(data, indent=2, allow_nan=False))


def emit(view: BaseModel, as_json: bool, human: str | Callable[[], None]) -> None:
    """A command's result: with ``--json`` the read model as the API serves it, else what a
    person reads (a line, or a function that prints it)."""
    if as_json:
        print_json(view)
    elif isinstance(human, str):
        typer.echo(human)
    else:
        human()


def number(value: float | None, spec: str) -> str:
    """``value`` formatted, or "-" when it is missing or not finite."""
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def bar(title: str, unit: str, *, transient: bool = False) -> Progress:
    return Progress(
        TextColumn(f"[bold]{title}[/]"),
        BarColumn(),
        TextColumn(f"{unit} {{task.completed}}/{{task.total}}"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=stderr,
        transient=transient,
    )


# --- data -------------------------------------------------------------------------------


def data_text(data: service.DataIdentity) -> str:
    """What a dataset is, on one line (`data prepare`, and the data line of a job)."""
    counts = (
        ""
        if data.train_tokens is None or data.val_tokens is None
        else f", {data.train_tokens:,} train + {data.val_tokens:,} validation tokens"
    )
    return (
        f"{data.source} (tokenizer {data.tokenizer}, vocabulary {data.vocab_size:,}"
        f"{counts}; sha256 {data.sha256[:12]})"
    )


def data_line(data: service.DataIdentity | None) -> str:
    """`sweep status` and `run status`: what the job trains on."""
    if data is None:
        return "data: not recorded (stored before data identities were)"
    return f"data: {data_text(data)}"


# --- sweeps -----------------------------------------------------------------------------


def _stale(stale: bool) -> str:
    return " (stale: its driver is gone)" if stale else ""


def sweep(detail: service.SweepDetail, trials: service.Page[service.TrialView]) -> None:
    console = Console()
    console.print(
        f"sweep {detail.id} [bold]{detail.name}[/]: {detail.status}{_stale(detail.stale)}, "
        f"{detail.finished}/{detail.planned} trials finished"
    )
    console.print(data_line(detail.data), highlight=False)
    if detail.error:
        console.print(f"error: {detail.error}", highlight=False)
    table = Table()
    for column in ("key", "status", "final eval loss", "steps", "tokens/s", "startup s"):
        table.add_column(column)
    for t in trials.items:
        table.add_row(
            t.key,
            str(t.status),
            number(t.final_eval_loss, ".4f"),
            str(t.steps or "-"),
            number(t.tokens_per_s, ",.0f"),
            number(t.startup_s, ".1f"),
        )
    console.print(table)
    for width, best in detail.best.items():
        console.print(
            f"best at width {width}: {best.key} (eval loss {number(best.final_eval_loss, '.4f')})"
        )


def _jobs_table(
    page: service.Page[service.SweepSummary] | service.Page[service.RunView],
    title: str,
    column: str,
    cell: Callable[[Any], str],
) -> None:
    """A page of sweeps or runs: id, name, status (stale marked), ``column``, created."""
    table = Table(title=f"{page.total} {title}")
    for name in ("id", "name", "status", column, "created"):
        table.add_column(name)
    for job in page.items:
        table.add_row(
            str(job.id),
            job.name,
            f"{job.status}{' (stale)' if job.stale else ''}",
            cell(job),
            f"{job.created_at:%Y-%m-%d %H:%M}",
        )
    Console().print(table)


def sweeps(page: service.Page[service.SweepSummary]) -> None:
    _jobs_table(page, "sweeps", "trials", lambda s: f"{s.finished}/{s.planned}")


def transfer(transferred: service.TransferView) -> None:
    r, console = transferred.result, Console()
    table = Table(
        title=f"sweep {transferred.sweep_id} ({r['parametrization']}): optimum per proxy width"
    )
    for column in ("width", "base LR", "± log2", "fit", "loss", "WD", "tau", "finite pts"):
        table.add_column(column, justify="right")
    for w in r["widths"]:
        table.add_row(
            str(w["width"]),
            f"{w['lr']['value']:.4g}",
            f"{w['lr']['log2_uncertainty']:.2f}",
            w["lr"]["method"],
            f"{w['lr']['loss']:.4f}",
            f"{w['wd']:g}",
            number(w["tau"], "g"),
            str(w["finite_points"]),
        )
    console.print(table)
    if r["drift"] is not None:
        console.print(
            f"drift: {r['drift']['slope']:+.3f} ± {r['drift']['uncertainty']:.3f} log2(LR) per"
            " doubling of width"
            + (f" (at {r['horizons'][-1]['tokens']:,} tokens)" if r.get("horizons") else "")
        )
    for h in r.get("horizons", [])[:-1]:  # stored before horizons were: none
        if h["drift"] is not None:
            console.print(
                f"  at {h['tokens']:,} tokens: {h['drift']['slope']:+.3f} ±"
                f" {h['drift']['uncertainty']:.3f}"
            )
    if (d := r.get("depth_drift")) is not None:  # stored before depths were: none
        console.print(
            f"depth drift: {d['slope']:+.3f} ± {d['uncertainty']:.3f} log2(LR) per doubling"
            f" of depth, over depths {', '.join(str(o['depth']) for o in r['depths'])}"
        )
    if (h := r.get("horizon")) is not None:
        console.print(
            f"horizon: {h['slope']:+.3f} ± {h['uncertainty']:.3f} log2(LR) per doubling of"
            f" tokens; {h['from_tokens']:,} -> {h['to_tokens']:,} tokens moves the base LR by"
            f" 2^({h['log2_shift']:+.2f} ± {h['log2_shift_uncertainty']:.2f})"
        )
    console.print(
        f"base LR {r['base_lr']:.4g}, base WD {r['base_wd']:g}"
        + ("" if r["base_tau"] is None else f", tau {r['base_tau']:g}")
        + (
            ""
            if r["extrapolated_lr"] is None
            else f" (drift line at {r['to_width']}: {r['extrapolated_lr']:.4g})"
        )
    )
    depth = f", depth {r['to_depth']}" if r.get("to_depth") else ""
    groups = Table(title=f"per parameter group at width {r['to_width']}{depth}")
    for column in ("group", "fan_in", "LR", "WD"):
        groups.add_column(column, justify="right")
    for g in r["groups"]:
        groups.add_row(g["group"], str(g["fan_in"]), f"{g['lr']:.4g}", f"{g['wd']:g}")
    console.print(groups)
    for warning in r["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)


def warnings(transferred: service.TransferView) -> None:
    """A launch's transfer warnings, on stderr (stdout holds the run)."""
    for warning in transferred.result["warnings"]:
        stderr.print(f"[yellow]warning:[/] {warning}", highlight=False)


# --- runs -------------------------------------------------------------------------------


def run(view: service.RunView, metrics: service.RunMetrics) -> None:
    console = Console()
    console.print(
        f"run {view.id} [bold]{view.name}[/]: {view.status}{_stale(view.stale)}", highlight=False
    )
    console.print(data_line(view.data), highlight=False)
    if view.restarts:
        console.print(
            f"restarted {view.restarts}x, last from the checkpoint of step {view.resumed_from_step}"
        )
    if view.error:
        console.print(f"error: {view.error}", highlight=False)
    if metrics.step:
        console.print(
            f"step {metrics.step[-1]}: eval loss {number(metrics.eval_loss[-1], '.4f')}, "
            f"{number(metrics.tokens_per_s[-1], ',.0f')} tok/s"
            f" (startup {number(metrics.startup_s[-1], '.1f')} s)"
        )


def metrics(metrics: service.RunMetrics) -> None:
    for i, step in enumerate(metrics.step):
        typer.echo(
            f"step {step}: train {number(metrics.train_loss[i], '.4f')}"
            f"  eval {number(metrics.eval_loss[i], '.4f')}"
        )


def runs(page: service.Page[service.RunView]) -> None:
    _jobs_table(page, "runs", "sweep", lambda r: str(r.sweep_id or "-"))


# --- following a job (--wait) -----------------------------------------------------------


class DriverWatch:
    """For `--wait`: a job whose driver is gone (`stale`) and that nothing resumed within
    the time a watchdog needs to notice (`Settings.stale_s`) will not end by itself."""

    def __init__(self, kind: service.JobKind, job_id: int, settings: service.Settings):
        self.kind, self.job_id = kind, job_id
        self.grace_s = settings.stale_s
        self.gone_since: float | None = None

    def check(self, status: service.JobStatus, stale: bool, heartbeat: str) -> None:
        if not stale:
            self.gone_since = None
            return
        now = time.monotonic()
        self.gone_since = self.gone_since or now
        if now - self.gone_since > self.grace_s:
            raise Unfinished(
                f"{self.kind} {self.job_id} is {status} but its driver is gone (last"
                f" heartbeat {heartbeat}) and nothing resumed it in {self.grace_s:.0f} s:"
                f" `sweeper {self.kind} resume {self.job_id}` continues it"
            )


def ended(kind: str, job_id: int, status: service.JobStatus, error: str | None) -> None:
    """After the job's result is shown: exit 1 unless it completed."""
    if status is not service.JobStatus.COMPLETED:
        reason = f": {error}" if error else ""
        raise Unfinished(f"{kind} {job_id} ended {status}{reason}")


def _heartbeat(job: service.JobView) -> str:
    when = job.driver_heartbeat_at or job.created_at
    return f"{when:%Y-%m-%d %H:%M:%S} UTC"


def watch_sweep(read: Callable[[], service.SweepDetail], watch: DriverWatch) -> service.SweepDetail:
    """Live progress on stderr until the sweep ends; returns its final state."""
    detail = read()
    with bar(f"sweep {detail.id}", "trials") as progress:
        task = progress.add_task("", total=detail.planned)
        while True:
            best = ", ".join(
                f"w{w} {number(t.final_eval_loss, '.3f')}" for w, t in detail.best.items()
            )
            progress.update(
                task, completed=detail.finished, description=f"{detail.status}  best: {best or '-'}"
            )
            if detail.status.finished:
                return detail
            watch.check(detail.status, detail.stale, _heartbeat(detail))
            time.sleep(1.0)
            detail = read()


def watch_run(
    read: Callable[[], tuple[service.RunView, service.RunMetrics]], watch: DriverWatch
) -> tuple[service.RunView, service.RunMetrics]:
    """Live progress on stderr until the run ends; returns its final state."""
    view, metrics = read()
    with bar(f"run {view.id}", "step") as progress:
        task = progress.add_task("", total=view.config["train"]["steps"])
        while True:
            loss = "" if not metrics.step else f"eval {number(metrics.eval_loss[-1], '.3f')}"
            progress.update(
                task,
                completed=metrics.step[-1] if metrics.step else 0,
                description=f"{view.status} {loss}",
            )
            if view.status.finished:
                return view, metrics
            watch.check(view.status, view.stale, _heartbeat(view))
            time.sleep(1.0)
            view, metrics = read()
