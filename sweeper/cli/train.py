"""`sweeper train` and `sweeper coord-check`: every TrainConfig and ModelConfig field is an
option, generated from the pydantic fields so the config is defined once."""

from __future__ import annotations

import functools
import inspect
import math
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from typer._click.exceptions import BadParameter, UsageError

from sweeper import service
from sweeper.cli import render
from sweeper.cli._app import JsonOption, app, option_name, stderr, validation_message

F = TypeVar("F", bound=Callable[..., Any])

PresetOption = Annotated[
    str, typer.Option("--preset", help=f"model preset: {', '.join(service.PRESETS)}")
]


def _config_parameters() -> list[inspect.Parameter]:
    """One keyword option per config field; None means 'the preset's or the default value'."""
    params = []
    for config_cls in (service.ModelConfig, service.TrainConfig):
        for name, field in config_cls.model_fields.items():
            if name == "model":
                continue
            annotation = field.annotation
            decls = [option_name(name)]
            if annotation is bool:
                decls = [f"{option_name(name)}/--no-{name.replace('_', '-')}"]
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


def config_from_options(preset_name: str, overrides: dict[str, Any]) -> service.TrainConfig:
    """The TrainConfig of a preset with option overrides; raises a UsageError."""
    try:
        return service.train_config(preset_name, overrides)
    except ValidationError as e:
        raise UsageError(validation_message(e)) from None
    except ValueError as e:  # an unknown preset
        raise BadParameter(str(e), param_hint="--preset") from None


@app.command("train")
@with_config_options
def train_command(
    overrides: dict[str, Any],
    preset_name: PresetOption = "debug",
    json_output: JsonOption = False,
) -> None:
    """Train one model; the defaults are a tiny µS FP8 run on the stdlib corpus."""
    config = config_from_options(preset_name, overrides)
    with render.bar("train", "step", transient=json_output) as progress:
        task = progress.add_task("", total=config.steps)

        def report(point: service.MetricPoint) -> None:
            progress.update(
                task,
                completed=point.step,
                description=f"train {render.number(point.train_loss, '.3f')}  "
                f"eval {render.number(point.eval_loss, '.3f')}  "
                f"{render.number(point.tokens_per_s, ',.0f')} tok/s "
                f"(startup {render.number(point.startup_s, '.1f')} s)",
            )

        result = service.train(config, report=report)
    if json_output:
        render.print_json(result.summary() | {"config": config.model_dump(mode="json")})
        return
    loss = result.final_eval_loss
    typer.echo(
        f"{result.status} after {result.steps} steps: eval loss "
        f"{f'{loss:.4f}' if math.isfinite(loss) else 'n/a'}, "
        f"{result.tokens_per_s:,.0f} tokens/s after {result.startup_s:.1f} s of startup"
    )


def _parse_widths(text: str) -> list[int]:
    try:
        widths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BadParameter(f"{text!r} is not a comma-separated list of integers") from None
    if not widths or min(widths) < 1:
        raise BadParameter("give at least one positive width, e.g. 64,128,256")
    return widths


def _coord_table(
    result: service.CoordCheck, title: str, table_of: dict[int, dict[str, float]]
) -> Table:
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
        result = service.coord_check(parsed, config, steps=config.steps)
    if plot is not None:
        service.plot_coord_check(result, plot)
    if json_output:
        render.print_json(
            {
                "widths": result.widths,
                "steps": result.steps,
                "init": {str(w): rms for w, rms in result.init.items()},
                "trained": {str(w): rms for w, rms in result.trained.items()},
                "config": config.model_dump(mode="json"),
            }
        )
        return
    console = Console()
    console.print(_coord_table(result, "RMS at init", result.init))
    console.print(_coord_table(result, f"RMS after {result.steps} steps", result.trained))
    if plot is not None:
        console.print(f"plot saved to {plot}")
