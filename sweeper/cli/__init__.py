"""The `sweeper` command line: small modules over `sweeper.service`, the only package it
imports from (with the types the service re-exports).

    _app      the Typer apps, shared options, the settings and database of a command, and
              `main` (bad options: one line on stderr, exit 2; a missing or conflicting
              job, or a `--wait` that did not end well: exit 1)
    render    everything printed: `--json` (the read models of `sweeper.views`, as the REST
              API serves them), tables and live progress
    train     `train` and `coord-check` (every config field an option)
    sweeps    `sweep start|status|trials|list|cancel|resume` and `transfer`
    runs      `launch` and `run status|metrics|list|cancel|resume`
    serve     `serve`: the REST API and dashboard, in a process of the API's own
    data      `data prepare`: local text tokenized into a dataset directory
"""

from sweeper.cli import data, runs, serve, sweeps, train
from sweeper.cli._app import app, main

__all__ = ["app", "data", "main", "runs", "serve", "sweeps", "train"]
