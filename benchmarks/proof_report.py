"""docs/EXPERIMENTS.md and its pictures, from the transfer proof's results and database.

    python -m benchmarks.proof_report --db benchmarks/results/transfer_proof.db \\
        [--results benchmarks/results/transfer_proof.json] [--out docs]

Serves the database through the API on a loopback port (in this process), opens the
comparison view of the experiment's sweeps and each target run's page in Debian's chromium
(Playwright), saves them as PNGs in OUT/experiments/, and writes OUT/EXPERIMENTS.md from the
results that `benchmarks.transfer_proof` computed where it ran: the goals, the drift of each
side's optimum with its standard error, the transferred LR against each target's own best
and their loss gap, FP8 against BF16, µS against SP, the machine, versions, commands, wall
time and GPU-hours. A database with jobs still queued or running is refused: the service
would resume them when it starts.
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import SecretStr

import db
from api.main import create_app
from sweeper.settings import Settings

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# The comparison view is drawn: its drift plot and an LR-curve panel per sweep.
COMPARE_DRAWN = """(n) => Array.isArray(document.getElementById('compare-drift')?.data)
    && document.querySelectorAll('#compare-panels .js-plotly-plot').length === n"""
RUN_DRAWN = "() => document.getElementById('run-plot')?.data?.[0]?.x.length > 0"


# --- the service and the browser --------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(database_url: str) -> Iterator[str]:
    """The API and dashboard over ``database_url`` on a free loopback port; yields its URL."""
    database = db.connect(database_url)
    try:
        busy = [
            f"{kind} {job.id} ({job.name}) {job.status}"
            for status in (db.JobStatus.QUEUED, db.JobStatus.RUNNING)
            for kind, jobs in (
                ("sweep", db.list_sweeps(database, status=status, limit=1000).items),
                ("run", db.list_runs(database, status=status, limit=1000).items),
            )
            for job in jobs
        ]
    finally:
        database.dispose()
    if busy:
        raise SystemExit(
            f"jobs still in flight, which the service would resume: {', '.join(busy)};"
            " let the runner finish or stop them first"
        )
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            db_url=database_url,
            data_dir=Path(tmp),
            api_host="127.0.0.1",
            api_token=SecretStr(secrets.token_urlsafe(16)),
            curves_worker=False,
        )
        port = _free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while not server.started:
                if time.monotonic() > deadline or not thread.is_alive():
                    raise RuntimeError("the API did not start")
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(30)


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless page in Debian's chromium (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.is_file():
        raise SystemExit(f"no chromium at {CHROMIUM}: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def screenshot_compare(page: Any, url: str, sweep_ids: list[int], path: Path) -> None:
    page.goto(f"{url}/#/compare/{','.join(map(str, sweep_ids))}")
    page.wait_for_function(COMPARE_DRAWN, arg=len(sweep_ids))
    page.screenshot(path=str(path), full_page=True)


def screenshot_run(page: Any, url: str, run_id: int, path: Path) -> None:
    page.goto(f"{url}/#/runs/{run_id}")
    page.wait_for_function(RUN_DRAWN)
    page.locator("#run-plot").screenshot(path=str(path))


# --- the note ---------------------------------------------------------------------------


def _lr(value: float | None, uncertainty: float | None = None) -> str:
    if value is None:
        return "–"
    text = f"2^{math.log2(value):.2f} ({value:.3g})"
    return text if uncertainty is None else f"2^{math.log2(value):.2f} ± {uncertainty:.2f}"


def _num(value: float | None, form: str = ".4f") -> str:
    return "–" if value is None else format(value, form)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2%}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def experiments_markdown(results: dict[str, Any], pictures: dict[str, str]) -> str:
    """The note, from the results JSON; ``pictures`` maps "compare" and each run's stage
    name to a picture's path relative to the note."""
    spec, env, time_ = results["spec"], results["environment"], results["time"]
    sides, comparisons = results["sides"], results["comparisons"]
    proxies, targets = spec["proxies"], spec["targets"]
    train, model = proxies["train"], proxies["train"]["model"]
    invocations = time_["invocations"]
    parts = [
        "# Experiments: the transfer proof (issue 15)",
        "Generated by `python -m benchmarks.proof_report` from "
        "`benchmarks/results/transfer_proof.json` and the database it was computed from; "
        "rerun it rather than editing by hand."
        + ("" if results["complete"] else " **The experiment is not complete.**"),
        "Beyond width, with the same machinery (issue 20): transfer across the token horizon "
        "in [HORIZON.md](HORIZON.md), across depth in [DEPTH.md](DEPTH.md).",
        "## What ran",
        f"Proxies: widths {', '.join(map(str, proxies['widths']))}, depth {model['depth']}, "
        f"head_dim {model['head_dim']}, seq {model['seq_len']}, batch {train['batch_size']}, "
        f"{train['steps']} steps, data `{Path(train['data']).name}`, WD values "
        f"{', '.join(map(str, proxies['wd']))}; {proxies['resources']['gpu']} GPU per trial. "
        f"Targets: widths {', '.join(map(str, targets['widths']))}, {targets['steps']} steps, "
        f"checked by an LR sweep at 2^(±{targets['check']['log2_span']}) around the "
        f"transferred LR in steps of 2^{targets['check']['log2_step']} (out to the drift "
        "line's value too).",
        _table(
            ["", ""],
            [
                ["GPU", str(env.get("device", "none (CPU)"))],
                [
                    "versions",
                    f"torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
                    f"Ray {env['ray']}, Optuna {env['optuna']}, Python {env['python']}",
                ],
                [
                    "commands",
                    "<br>".join(f"`{c}`" for c in dict.fromkeys(i["command"] for i in invocations)),
                ],
                [
                    "wall time",
                    f"{time_['wall_s'] / 60:.1f} min in the {len(invocations)} invocations on "
                    "record: " + ", ".join(f"{i['wall_s']:.0f} s" for i in invocations),
                ],
                [
                    "GPU-hours",
                    f"{time_['gpu_hours']:.2f} held; {time_['allocated_gpu_hours']:.2f} in the "
                    "final attempts' training, by their GPU share",
                ],
            ],
        ),
        "## Goals",
        "Drifts in log2 of the optimal base LR per doubling of width; gaps relative, in eval loss.",
        _table(
            ["goal", "measured", "met"],
            [
                [
                    g["goal"],
                    _pct(g["value"]) if g["unit"] == "relative" else _num(g["value"], "+.2f"),
                    {True: "yes", False: "**no**", None: "–"}[g["met"]],
                ]
                for g in results["goals"]
            ],
        ),
        "## The optimum across the proxies",
        _table(
            ["side", "width", "optimal base LR (log2 ± SE)", "fit", "best measured", "its loss"],
            [
                [
                    label,
                    str(o["width"]),
                    _lr(o["lr"], o["log2_uncertainty"]),
                    o["method"] + (f", at the {o['at_edge']} edge" if o["at_edge"] else ""),
                    _lr(o["best_lr"]),
                    _num(o["best_loss"]),
                ]
                for label, side in sides.items()
                for o in side["optima"]
            ],
        ),
        _table(
            ["side", "drift of the optimum (log2 per doubling of width)"],
            [
                [
                    label,
                    f"{side['drift']['slope']:+.2f} ± {side['drift']['uncertainty']:.2f}"
                    if side["drift"]
                    else "–",
                ]
                for label, side in sides.items()
            ],
        ),
    ]
    if "compare" in pictures:
        parts.append(f"![the comparison view]({pictures['compare']})")
    parts += [
        "## Transferred against the target's own best",
        _table(
            [
                "target",
                "side",
                "transferred LR",
                "drift line",
                "check's best LR (± SE)",
                "log2 error",
                "transferred run",
                "check's best loss",
                "gap",
            ],
            [
                [
                    width,
                    label,
                    _lr(t["transferred_lr"]),
                    _lr(t["drift_line_lr"]),
                    _lr(t["check"]["best"]["lr"], t["check"]["best"]["log2_uncertainty"])
                    if t["check"]["best"]
                    else "–",
                    _num(t["log2_lr_error"], "+.2f"),
                    _num(t["run"]["final_eval_loss"]),
                    _num(t["check"]["best"]["best_loss"]) if t["check"]["best"] else "–",
                    _pct(t["loss_gap"]),
                ]
                for label, side in sides.items()
                for width, t in side["targets"].items()
            ],
        ),
        "## FP8 against BF16 (the same transferred setting)",
        _table(
            ["target", "side", "FP8", "BF16", "gap"],
            [
                [width, label, _num(g["fp8"]), _num(g["bf16"]), _pct(g["gap"])]
                for width, by_side in comparisons["fp8_vs_bf16"].items()
                for label, g in by_side.items()
            ],
        ),
        "## µS against SP, each at its best",
        "At the proxies, each side's best trial; at the targets, µS at its transferred LR "
        "against SP at the best LR of its own check sweep.",
        _table(
            ["width", "µS", "SP", "gap"],
            [
                [w, _num(c["mus_best"]), _num(c["sp_best"]), _pct(c["gap"])]
                for w, c in comparisons["mus_vs_sp_proxies"].items()
            ]
            + [
                [
                    f"{w} (target)",
                    _num(c["mus_transferred"]),
                    f"{_num(c['sp_best'])} at {_lr(c['sp_best_lr'])}",
                    _pct(c["gap"]),
                ]
                for w, c in comparisons["mus_vs_sp"].items()
            ],
        ),
        "## The target runs' training curves",
    ]
    for name, path in pictures.items():
        if name != "compare":
            parts.append(f"`{name}`\n\n![{name}]({path})")
    parts += [
        "## How to rerun",
        "On a GPU machine, until it exits 0 (3: stopped at its budget, resumable; each call "
        "hands back the database and the results in `$OUT`, to put in place before the next):",
        "```bash\npython -m benchmarks.transfer_proof --db benchmarks/results/transfer_proof.db "
        "--data .devdata/shakespeare.txt --budget-s 420 --export $OUT\n```",
        "Then, anywhere with chromium: `python -m benchmarks.proof_report --db "
        "benchmarks/results/transfer_proof.db` writes this note and its pictures.",
        "## Raw data",
        "Every number above is in `benchmarks/results/transfer_proof.json` (with the spec, "
        "each stage's sweep or run id and every invocation); the curves are in the database, "
        "`benchmarks/results/transfer_proof.db`, committed with them (a rerun resumes from it).",
    ]
    return "\n\n".join(parts) + "\n"


def write_report(database_url: str, results: dict[str, Any], out: Path) -> Path:
    """Screenshots under OUT/experiments/ and OUT/EXPERIMENTS.md; returns the note's path."""
    stages = results["stages"]
    sweep_ids = [s["id"] for s in stages.values() if s["kind"] == "sweep" and s["id"]]
    runs = {
        n: s["id"] for n, s in stages.items() if s["kind"] == "run" and s["status"] == "completed"
    }
    shots = out / "experiments"
    shots.mkdir(parents=True, exist_ok=True)
    pictures: dict[str, str] = {}
    with serve(database_url) as url, chromium() as page:
        if sweep_ids:
            screenshot_compare(page, url, sweep_ids, shots / "compare.png")
            pictures["compare"] = "experiments/compare.png"
        for name, run_id in runs.items():
            file = f"run-{name.rsplit('/', 1)[-1]}.png"
            screenshot_run(page, url, run_id, shots / file)
            pictures[name] = f"experiments/{file}"
    note = out / "EXPERIMENTS.md"
    note.write_text(experiments_markdown(results, pictures))
    return note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True, help="the runner's SQLite file")
    parser.add_argument(
        "--results", type=Path, default=REPO / "benchmarks" / "results" / "transfer_proof.json"
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    note = write_report(f"sqlite:///{args.db.resolve()}", results, args.out)
    print(f"wrote {note} and {args.out / 'experiments'}/*.png")


if __name__ == "__main__":
    main()
