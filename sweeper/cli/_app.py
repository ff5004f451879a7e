"""The Typer apps, the options every command group shares, and the entry point."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

# Typer vendors click (>= 0.22); its usage errors are these classes, not click's own.
from typer._click.exceptions import BadParameter, UsageError

from sweeper import service

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
data_app = typer.Typer(
    help="Datasets: local text tokenized into the token files a run reads.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
stderr = Console(stderr=True)

JsonOption = Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")]
WaitOption = Annotated[bool, typer.Option("--wait", help="follow the job until it ends")]
OffsetOption = Annotated[int, typer.Option(min=0, help="newest first, skip this many")]
LimitOption = Annotated[int, typer.Option(min=1, max=500, help="at most this many")]


class Unfinished(Exception):
    """What `--wait` followed did not complete (exit 1, the message on stderr)."""


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def validation_message(error: ValidationError) -> str:
    """A pydantic error as one line naming the option (nested model fields by their own
    name: every config field is an option of its own)."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"] if part != "model")
    message = first["msg"].removeprefix("Value error, ")
    return f"{option_name(where)}: {message}" if where else message


def invalid_input(error: service.InvalidInput) -> BadParameter:
    return BadParameter(error.message, param_hint=option_name(error.field))


def settings() -> service.Settings:
    """This command's settings, from the environment (one line and exit 2 when invalid)."""
    try:
        return service.Settings()
    except ValidationError as e:
        first = e.errors()[0]
        name = "SWEEPER_" + ".".join(str(part) for part in first["loc"]).upper()
        raise UsageError(f"{name}: {first['msg']}") from None


def database(config: service.Settings) -> service.Database:
    return service.open_database(config)


def main() -> None:
    """Entry point: click's usage errors become one line on stderr and exit code 2."""
    command = typer.main.get_command(app)
    try:
        command.main(prog_name="sweeper", standalone_mode=False)
    except UsageError as e:
        stderr.print(f"sweeper: error: {e.format_message()}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (service.StorageError, Unfinished) as e:  # NotFound, Conflict, a job that failed
        stderr.print(f"sweeper: error: {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except typer.Abort:
        stderr.print("sweeper: aborted")
        sys.exit(130)
