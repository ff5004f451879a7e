"""`sweeper data prepare`: local text tokenized into the token files a run reads (the
work is `service.prepare_data`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer._click.exceptions import BadParameter, UsageError

from sweeper import service
from sweeper.cli import render
from sweeper.cli._app import JsonOption, data_app, option_name, stderr

_DTYPES = ", ".join(service.DTYPE_CHOICES)


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
    dtype: Annotated[str, typer.Option(help=f"token files: {_DTYPES}")] = "auto",
    json_output: JsonOption = False,
) -> None:
    """Tokenize local text files into a dataset directory: train.bin, val.bin (nanoGPT's
    layout) and meta.json; give it to a run as --data DIR or a spec's train.data."""
    try:
        with stderr.status(f"preparing {out} ..."):
            identity = service.prepare_data(
                inputs,
                tokenizer=tokenizer,
                out=out,
                vocab_size=vocab_size,
                text_field=text_field,
                dtype=dtype,
            )
    except service.InvalidInput as e:
        hint = "INPUT" if e.field == "inputs" else option_name(e.field)
        raise BadParameter(e.message, param_hint=hint) from None
    except service.DataError as e:
        raise UsageError(str(e)) from None
    render.emit(identity, json_output, render.data_text(identity))
