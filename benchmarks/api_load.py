"""Load benchmark of the REST API (not a test): many clients on a sweep's curves while the
sweep writes.

    python benchmarks/api_load.py [--clients 200] [--duration 20] [--out PATH]

Starts the service (one uvicorn process, as `sweeper serve` runs it, without the access
log unless ``--access-log``) on a free loopback port over a fresh SQLite file, starts a
sweep whose driver trains on a real Ray local cluster and writes a point every other step,
waits for its first points, then runs two scenarios of ``--clients`` concurrent clients on
``GET /sweeps/{id}/curves``, each client on its own keep-alive connection:

- ``closed_loop``: every client sends its next request as soon as the last one answered
  (the most load that many clients can make);
- ``polling``: every client asks every ``--interval`` seconds, as the dashboard does
  (it polls every 2 s; the default 0.5 s is four times that).

Each scenario lasts ``--duration`` seconds. Every request is bounded by a 10 s timeout; a
non-200 answer, a timeout or a broken connection counts as an error. The JSON written to
``--out`` holds throughput, latency percentiles (ms) and errors of each scenario, what the
sweep wrote meanwhile, and the machine. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "shakespeare.txt"
TOKEN = "api-load-benchmark-token"
HOST = "127.0.0.1"
REQUEST_TIMEOUT_S = 10.0
GOAL = {"p99_ms": 50.0, "errors": 0}


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    errors: Counter[str] = field(default_factory=Counter)
    bytes: int = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def writer_spec(data: str) -> dict[str, Any]:
    """A sweep that keeps writing for minutes: one trial at a time, a point every 2 steps."""
    return {
        "name": "api-load-writer",
        "train": {
            "model": {"depth": 2, "head_dim": 16, "seq_len": 32},
            "data": data,
            "steps": 100_000,
            "batch_size": 4,
            "eval_interval": 2,
            "eval_batches": 1,
            "device": "cpu",
            "precision": "fp32",
        },
        "widths": [16, 32],
        "search": {"lr": {"min": 2**-6, "max": 2**-2, "points": 2}, "wd": [0.0]},
        "resources": {"cpu": 1},
        "max_concurrency": 1,  # one core trains; the server and the clients share the rest
    }


def start_server(env: dict[str, str], port: int, access_log: bool) -> subprocess.Popen[bytes]:
    code = (
        "import uvicorn\n"
        "from sweeper.settings import Settings\n"
        "from api.main import create_app\n"
        f"uvicorn.run(create_app(Settings()), host={HOST!r}, port={port}, "
        f"log_level='warning', access_log={access_log}, server_header=False)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO)


def wait_until(predicate: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def points_written(client: httpx.Client, sweep_id: int) -> int:
    curves = client.get(f"/sweeps/{sweep_id}/curves").json()
    return sum(len(t["step"]) for t in curves["trials"])


async def one_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, int]:
    writer.write(request)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length)
    return status, len(body)


async def client_loop(port: int, path: str, end: float, interval: float, tally: Tally) -> None:
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: application/json\r\n\r\n"
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while loop.time() < end:
        if interval:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += interval
            if loop.time() >= end:
                break
        started = time.perf_counter()
        try:
            if conn is None:
                conn = await asyncio.wait_for(
                    asyncio.open_connection(HOST, port), REQUEST_TIMEOUT_S
                )
            status, size = await asyncio.wait_for(
                one_request(*conn, request.encode()), REQUEST_TIMEOUT_S
            )
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
            tally.errors[type(e).__name__] += 1
            if conn is not None:
                conn[1].close()
            conn = None
            continue
        if status != 200:
            tally.errors[f"HTTP {status}"] += 1
            continue
        tally.latencies.append(time.perf_counter() - started)
        tally.bytes += size
    if conn is not None:
        conn[1].close()


async def scenario(port: int, path: str, clients: int, duration: float, interval: float) -> Tally:
    tally = Tally()
    loop = asyncio.get_running_loop()
    end = loop.time() + duration

    # Spread the first requests of paced clients over one interval, as real pollers are.
    async def staggered(i: int) -> None:
        if interval:
            await asyncio.sleep(interval * i / clients)
        await client_loop(port, path, end, interval, tally)

    await asyncio.gather(*(staggered(i) for i in range(clients)))
    return tally


def summary(name: str, tally: Tally, clients: int, duration: float, interval: float) -> dict:
    lat = sorted(tally.latencies)

    def pct(q: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2) if lat else None

    errors = sum(tally.errors.values())
    return {
        "scenario": name,
        "clients": clients,
        "interval_s": interval or None,
        "duration_s": duration,
        "requests": len(lat) + errors,
        "ok": len(lat),
        "errors": errors,
        "error_kinds": dict(tally.errors),
        "throughput_rps": round(len(lat) / duration, 1),
        "latency_ms": {
            "p50": pct(0.50),
            "p90": pct(0.90),
            "p99": pct(0.99),
            "max": round(lat[-1] * 1000, 2) if lat else None,
            "mean": round(statistics.fmean(lat) * 1000, 2) if lat else None,
        },
        "mean_body_bytes": round(tally.bytes / len(lat)) if lat else None,
        "goal_met": bool(lat) and errors == GOAL["errors"] and (pct(0.99) or 0) <= GOAL["p99_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per scenario")
    parser.add_argument("--interval", type=float, default=0.5, help="polling scenario period")
    parser.add_argument("--data", default=str(SHAKESPEARE) if SHAKESPEARE.is_file() else "stdlib")
    parser.add_argument("--access-log", action="store_true", help="keep uvicorn's access log")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "api_load.json"
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="api-load-"))
    env = os.environ | {
        "SWEEPER_DB_URL": f"sqlite:///{tmp / 'sweeper.db'}",
        "SWEEPER_DATA_DIR": str(tmp / "data"),
        "SWEEPER_API_TOKEN": TOKEN,
        "SWEEPER_RAY_STORAGE": str(tmp / "ray_results"),
        "XDG_STATE_HOME": str(tmp / "state"),
    }
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    server = start_server(env, port, args.access_log)
    base = f"http://{HOST}:{port}"
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"})
    sweep_id = None
    try:
        wait_until(lambda: client.get("/health").status_code == 200, "the server", 60)
        created = client.post("/sweeps", json=writer_spec(args.data))
        created.raise_for_status()
        sweep_id = created.json()["id"]
        path = f"/sweeps/{sweep_id}/curves"
        print(f"sweep {sweep_id} started; waiting for its first points", file=sys.stderr)
        wait_until(lambda: points_written(client, sweep_id) >= 20, "the sweep's points", 180)

        results = []
        writes = []
        for name, interval in (("closed_loop", 0.0), ("polling", args.interval)):
            before, started = points_written(client, sweep_id), time.monotonic()
            tally = asyncio.run(scenario(port, path, args.clients, args.duration, interval))
            elapsed = time.monotonic() - started
            load_1min = os.getloadavg()[0]  # runnable processes on the machine meanwhile
            time.sleep(1.5)  # past the curves cache, so the count below is fresh
            written = points_written(client, sweep_id) - before
            result = summary(name, tally, args.clients, args.duration, interval)
            result["sweep_points_written_per_s"] = round(written / elapsed, 1)
            result["load_average_1min"] = round(load_1min, 2)
            results.append(result)
            writes.append(written)
            print(json.dumps(result), file=sys.stderr)
        status = client.get(f"/sweeps/{sweep_id}").json()["status"]
    finally:
        if sweep_id is not None:  # its driver would train on after the server is gone
            client.post(f"/sweeps/{sweep_id}/cancel")
        client.close()
        server.terminate()
        server.wait(30)

    report = {
        "benchmark": "GET /sweeps/{id}/curves under load while a sweep writes",
        "command": "python benchmarks/api_load.py " + " ".join(sys.argv[1:]),
        "goal": GOAL,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "server": {
            "uvicorn_workers": 1,
            "http": _http_impl(),
            "access_log": args.access_log,
            "curves_cache_ttl_s": float(env.get("SWEEPER_CURVES_TTL_S", "1.0")),
            "curves_worker_process": env.get("SWEEPER_CURVES_WORKER", "1") not in ("0", "false"),
            "database": "sqlite (WAL)",
        },
        "sweep": {
            "status_during_load": status,
            "points_written": sum(writes),
            "trials_at_once": 1,
        },
        "scenarios": results,
        # The headline numbers: the scenario with every client asking back to back.
        "throughput_rps": results[0]["throughput_rps"],
        "p50_ms": results[0]["latency_ms"]["p50"],
        "p99_ms": results[0]["latency_ms"]["p99"],
        "errors": results[0]["errors"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


def _http_impl() -> str:
    try:
        import httptools  # noqa: F401

        return "httptools"
    except ImportError:
        return "h11"


if __name__ == "__main__":
    main()
