"""The API fuzzed from its own OpenAPI schema: schemathesis generates requests (every
operation, valid and invalid data, boundary values, integers of any size) and sends them
with the token to `sweeper serve` on loopback, over a database holding a completed sweep, a
failed one and a run, so that ids hit real rows. No response may be a server error or carry
a status code, content type or body the schema does not document.

The service is configured with a Ray cluster nobody answers at: a job the fuzzer manages to
start gets a real driver, which fails it within a second (no training here).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import db
from sweeper.settings import DB_URL_VAR
from tests.conftest import drivers_of, free_port, sweeper_serve
from tests.test_sweep_engine import wait_for

pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install -e .[dev])")

TOKEN = "fuzz-token-0123456789"
MAX_EXAMPLES = 25  # per operation and phase: about 1,600 cases in all, ~30 s here
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)


def test_fuzzing_the_api_finds_no_server_error_and_nothing_undocumented(
    env, database, record, make_spec, ray_tmp, tmp_path, monkeypatch
):
    record(make_spec())
    record(make_spec(name="failed"), status=db.JobStatus.FAILED)
    db.create_run(database, name="recorded", config={"launch": {}, "train": {}}, sweep_id=1)
    monkeypatch.setenv("SWEEPER_RAY_ADDRESS", f"127.0.0.1:{free_port()}")  # nobody there
    monkeypatch.setenv("SWEEPER_RAY_CONNECT_TIMEOUT_S", "0.5")
    report = tmp_path / "schemathesis.json"
    with sweeper_serve(tmp_path / "serve.log", TOKEN) as client:
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "run",
                f"{client.base_url}/openapi.json",
                f"--header=Authorization: Bearer {TOKEN}",
                f"--checks={CHECKS}",
                f"--max-examples={MAX_EXAMPLES}",
                "--seed=21",
                "--generation-database=none",  # nothing written into the checkout
                "--workers=1",
                "--no-color",
                "--report=json",
                f"--report-json-path={report}",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
        summary = json.loads(report.read_text())
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        assert summary["operations"]["tested"] == summary["operations"]["total"] == 17
        assert summary["failures"] == [] and summary["errors"] == []
        cases = summary["test_cases"]["generated"]
        assert cases > 1000
        print(f"{cases} cases, 0 server errors, 0 undocumented status codes")
    # A job the fuzzer started or resumed had a driver, which failed it: none is left.
    wait_for(lambda: not drivers_of(env[DB_URL_VAR]), "the fuzzed jobs' drivers to end", 60)
