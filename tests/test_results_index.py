"""benchmarks/results/README.md indexes the folder it sits in: one table row per top-level
entry, the row's first cell the entry's name in backquotes (`gemm.json`, `depth/`). A result
committed without a row, or a row left behind by a removed or renamed file, fails here."""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
INDEX = RESULTS / "README.md"
# SQLite's side files, git-ignored, appear next to a database whenever something opens it
# (proof_report, the service): they are not results.
SIDE_FILES = ("-shm", "-wal", "-journal")

# A table row whose first cell is one backquoted name: "| `gemm.json` | ...".
ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|", re.M)
# A backquoted result file named anywhere in the index (notes cite other runs by name);
# globs and brace patterns (`train_throughput_{4096,8192}_h100_clocks.json`) do not match.
CITED = re.compile(r"`(?:benchmarks/results/)?([\w.-]+(?:/[\w.-]+)*\.(?:json|jsonl|db|log))`")


def entries() -> set[str]:
    """The folder's top-level entries as the index names them: folders with a trailing /."""
    return {
        p.name + "/" if p.is_dir() else p.name
        for p in RESULTS.iterdir()
        if p.name != "README.md" and not p.name.endswith(SIDE_FILES)
    }


def rows() -> list[str]:
    return ROW.findall(INDEX.read_text(encoding="utf-8"))


def test_every_entry_of_the_folder_has_a_row():
    missing = sorted(entries() - set(rows()))
    assert not missing, f"not in benchmarks/results/README.md: {missing}"


def test_every_row_names_an_entry_that_exists_once():
    named = rows()
    stale = sorted(set(named) - entries())
    assert not stale, f"benchmarks/results/README.md names entries that do not exist: {stale}"
    repeated = sorted({n for n in named if named.count(n) > 1})
    assert not repeated, f"more than one row for: {repeated}"


def test_every_result_file_cited_in_the_index_exists():
    # the "what it shows" and "status" cells point at other runs: those names must be real too
    cited = set(CITED.findall(INDEX.read_text(encoding="utf-8")))
    assert cited, "the pattern found no file names: the index's format changed"
    missing = sorted(name for name in cited if not (RESULTS / name).exists())
    assert not missing, f"cited in benchmarks/results/README.md but absent: {missing}"
