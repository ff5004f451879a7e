"""The life of a job, a sweep or a run alike, defined once: its states and their transitions,
when its driver counts as gone, and how a driver stays visible, survives a busy database and
stops.

    created ─► queued ─► running ─► completed
                 │ ▲        │ │
                 │ └────────┘ ├─► failed ────┐  resume (a user): queued again
                 │  watchdog  └─► cancelled ─┤
                 ├─► cancelled ──────────────┤
                 └─► failed ─────────────────┘

A driver is a process of its own (`python -m sweeper.driver sweep|run ID`) that the service
layer spawns and records (host, pid). While it runs it beats a heartbeat in the database;
any error from its first line on fails the job with a one-line reason (the traceback goes to
its log), SIGTERM too, after recording where it stopped. Its writes wait out a database
that is briefly unavailable (another process holding SQLite's write lock, a PostgreSQL
restart) instead of failing the job.

A driver is *gone* when its process has exited (seen directly on the driver's host) or,
from elsewhere, when it missed `stale_beats` heartbeats. The service's watchdog resumes a
job whose driver is gone, at most `max_auto_resumes` times in a row, then fails it.
"""

from __future__ import annotations

import functools
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

from pydantic import ValidationError

import db
from sweeper.settings import Settings
from sweeper.spec import SweepSpec

log = logging.getLogger(__name__)

# What a driver process drives.
JobKind = Literal["sweep", "run"]

_QUEUED, _RUNNING = db.JobStatus.QUEUED, db.JobStatus.RUNNING
_COMPLETED, _FAILED, _CANCELLED = (
    db.JobStatus.COMPLETED,
    db.JobStatus.FAILED,
    db.JobStatus.CANCELLED,
)
# Every move a job may make; anything else is refused (`db.Conflict`).
TRANSITIONS: dict[db.JobStatus, frozenset[db.JobStatus]] = {
    # Its driver starts it; a user cancels it; the watchdog queues it again when its driver
    # died while starting, or gives up on it.
    _QUEUED: frozenset({_RUNNING, _CANCELLED, _QUEUED, _FAILED}),
    # Its driver ends it; a user cancels it; the watchdog queues it again or gives up.
    _RUNNING: frozenset({_COMPLETED, _FAILED, _CANCELLED, _QUEUED}),
    _FAILED: frozenset({_QUEUED}),  # a resume
    _CANCELLED: frozenset({_QUEUED}),  # a resume
    _COMPLETED: frozenset(),  # nothing left to do
}
# A job whose driver may be alive: cancellable, and watched by the watchdog.
ACTIVE = frozenset({_QUEUED, _RUNNING})

# How long one SQLite write of a driver waits for another process's lock before it retries
# (see `retrying`): short enough that SIGTERM and the retry deadline are honoured promptly.
DRIVER_WRITE_ATTEMPT_S = 5.0


def sources(target: db.JobStatus) -> frozenset[db.JobStatus]:
    """The statuses a job may move to ``target`` from."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


# --- where a job stands -----------------------------------------------------------------

JobRecord = db.Sweep | db.Run


def this_host() -> str:
    return socket.gethostname()


def driver_process_alive(kind: JobKind, job_id: int, pid: int) -> bool | None:
    """Whether process ``pid`` of this host is job (kind, id)'s driver and still running;
    None where this system cannot tell (no /proc). A pid the system gave to another process
    since, and a zombie, count as gone."""
    proc = Path("/proc")
    if not (proc / "self" / "cmdline").is_file():
        return None
    try:
        cmdline = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
        state = (proc / str(pid) / "stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    wanted = [b"sweeper.driver", kind.encode(), str(job_id).encode()]
    ours = any(cmdline[i : i + 3] == wanted for i in range(len(cmdline)))
    return ours and state not in ("Z", "X")


def last_beat(job: JobRecord) -> datetime:
    """When the job's driver last beat (or the job was queued, which starts a grace period)."""
    return job.driver_heartbeat_at or job.created_at


def driver_gone(
    kind: JobKind, job: JobRecord, settings: Settings, *, now: datetime | None = None
) -> bool:
    """Whether an active job's driver is gone: on its own host, its process has exited;
    from anywhere else (or where processes cannot be seen), it missed `stale_beats` beats.

    Seen from its host, a live driver is never gone, however long its heartbeat was held up
    (another process locking the database silences it too)."""
    if job.driver_pid is not None and job.driver_host == this_host():
        alive = driver_process_alive(kind, job.id, job.driver_pid)
        if alive is not None:
            return not alive
    silent_s = ((now or datetime.now(UTC)) - last_beat(job)).total_seconds()
    return silent_s >= settings.stale_s


def one_line(error: BaseException) -> str:
    """An error as the one line a job's or a trial's error field holds."""
    text = str(error)
    if isinstance(error, ValidationError):  # its first line only counts the errors
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        text = f"{error.title} is invalid: {where}: {first['msg']}"
    elif TRACEBACK in text:  # a wrapper of a formatted traceback (Ray's TuneError)
        return traceback_tail(text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else 'no message'}"[:MAX_ERROR]


TRACEBACK = "Traceback (most recent call last):"
MAX_ERROR = 1000
# "module.sub.Type: message" or "Type(Cause): message", at the start of a line.
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:\([^)]*\))?: .*)$")


def traceback_tail(text: str) -> str:
    """The exception a formatted traceback ends with, as "Type: message" (its module path
    dropped): what a user needs of it; the rest belongs in a log. The exception is the
    first line after the last frame: lines after it continue its message (a CUDA error's
    hints about CUDA_LAUNCH_BLOCKING, say)."""
    lines = [line for line in text.splitlines() if line.strip()]
    frames_end = max((i + 1 for i, line in enumerate(lines) if line[0].isspace()), default=0)
    tail = lines[frames_end:] or lines[-1:]
    if not tail:
        return "no message"
    match = _EXCEPTION_LINE.match(tail[0])
    return (match.group(1) if match else tail[0])[:MAX_ERROR]


# --- what a driver runs -----------------------------------------------------------------


class Periodic:
    """Calls ``tick`` every ``interval_s`` seconds from a daemon thread for as long as the
    block runs (first call at once). An error is logged and the next tick comes anyway."""

    def __init__(self, tick: Callable[[], object], interval_s: float, name: str):
        self._tick = tick
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except db.StorageError as e:  # one line: it may repeat every few seconds
                log.warning("%s: %s", self._thread.name, e)
            except Exception:
                log.exception("%s failed", self._thread.name)
            self._stop.wait(self._interval_s)

    def __enter__(self) -> Periodic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


T = TypeVar("T")
P = ParamSpec("P")


def retrying(what: str, write: Callable[[], T], *, budget_s: float) -> T:
    """``write()``, again with backoff while the database is unavailable (`db.Unavailable`:
    locked by another process, restarting) for up to ``budget_s``; then `db.Unavailable`
    saying so. Meanwhile the caller keeps what it writes in memory: nothing is lost."""
    deadline = time.monotonic() + budget_s
    delay = 0.25
    while True:
        try:
            return write()
        except db.Unavailable as e:
            if time.monotonic() + delay > deadline:
                raise db.Unavailable(f"{e} (retried for {budget_s:.0f} s)") from e
            log.warning("%s: %s; again in %.2g s", what, e, delay)
        time.sleep(delay)
        delay = min(2 * delay, 10.0)


class DatabaseHandle:
    """A database that survives pickling as its URL: Ray pickles callbacks and stoppers
    (to actors, with experiment state), and an engine cannot be pickled. Its writes retry
    while the database is unavailable (`writes`)."""

    def __init__(self, database: db.Database, settings: Settings):
        self.database = database
        self.write_retry_s = settings.write_retry_s

    def __getstate__(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "database"} | {
            "url": self.database.url,
            "busy_timeout_s": self.database.busy_timeout_s,
        }

    def __setstate__(self, state: dict[str, object]) -> None:
        url, busy_timeout_s = state.pop("url"), state.pop("busy_timeout_s")
        assert isinstance(url, str) and isinstance(busy_timeout_s, float)
        self.database = db.connect(url, busy_timeout_s=busy_timeout_s)
        self.__dict__.update(state)


def writes(method: Callable[P, T]) -> Callable[P, T]:
    """A `DatabaseHandle` method whose writes are idempotent, retried as one (`retrying`)."""

    @functools.wraps(method)
    def retried(*args: P.args, **kwargs: P.kwargs) -> T:
        handle = args[0]
        assert isinstance(handle, DatabaseHandle)
        return retrying(
            f"{type(handle).__name__}.{method.__name__}",
            lambda: method(*args, **kwargs),
            budget_s=handle.write_retry_s,
        )

    return retried


class Terminated(BaseException):
    """SIGTERM reached the driver (a BaseException, like KeyboardInterrupt: no `except
    Exception` on the way swallows it). The job records where it stopped; the driver exits."""

    def __init__(self) -> None:
        super().__init__("the driver was stopped by SIGTERM")


_terminating = threading.Event()


def raise_terminated(signum: int, frame: object) -> None:
    """The driver's SIGTERM handler, from its first line on; a second SIGTERM kills at once.
    Raised inside a call into Ray's C++ core, Terminated comes out as another exception (a
    SystemError caused by it): `terminating` tells."""
    signal.signal(signum, signal.SIG_DFL)
    _terminating.set()
    raise Terminated


def terminating() -> bool:
    """Whether SIGTERM reached this driver: whatever error surfaced since, that is why."""
    return _terminating.is_set()


@dataclass(frozen=True)
class Job:
    """A sweep's or a run's row, as whoever acts on it moves it through `TRANSITIONS`."""

    database: db.Database
    kind: JobKind
    id: int
    settings: Settings

    def __str__(self) -> str:
        return f"{self.kind} {self.id}"

    def get(self) -> JobRecord:
        if self.kind == "sweep":
            return db.get_sweep(self.database, sweep_id=self.id)
        return db.get_run(self.database, run_id=self.id)

    def status(self) -> db.JobStatus:
        return self.get().status

    def move(
        self,
        status: db.JobStatus,
        *,
        error: str | None = None,
        expected: frozenset[db.JobStatus] | None = None,
        expected_heartbeat: datetime | None = None,
        automatic: bool = False,
    ) -> JobRecord:
        """Move the job to ``status`` if `TRANSITIONS` allow it from where it is (and it is
        in ``expected``, and its heartbeat is still ``expected_heartbeat``), else Conflict.
        See `db.set_sweep_status` for what each status sets."""
        allowed = sources(status) & (expected if expected is not None else sources(status))
        arguments: dict[str, Any] = {
            "status": status,
            "error": error,
            "expected": allowed,
            "expected_heartbeat": expected_heartbeat,
            "automatic": automatic,
        }
        if self.kind == "sweep":
            return db.set_sweep_status(self.database, sweep_id=self.id, **arguments)
        return db.set_run_status(self.database, run_id=self.id, **arguments)

    def set_driver(self, host: str, pid: int) -> None:
        if self.kind == "sweep":
            db.set_sweep_driver(self.database, sweep_id=self.id, host=host, pid=pid)
        else:
            db.set_run_driver(self.database, run_id=self.id, host=host, pid=pid)

    def touch(self) -> None:
        if self.kind == "sweep":
            db.touch_sweep_heartbeat(self.database, sweep_id=self.id)
        else:
            db.touch_run_heartbeat(self.database, run_id=self.id)

    def finish(self, status: db.JobStatus, error: str | None = None) -> db.JobStatus:
        """Set the final status unless the job was cancelled meanwhile (the cancel wins);
        returns the status the job ends in. A sweep that did not complete keeps no trial
        `running`: those are closed as cancelled, or as errors with the sweep's reason, in
        the same write as its status (`db.set_sweep_status`)."""
        try:
            self._write(
                f"ending {self}",
                lambda: self.move(status, error=error, expected=ACTIVE),
            )
            return status
        except db.Conflict:
            ended = self.status()
        if self.kind == "sweep" and ended in (_FAILED, _CANCELLED):
            # Stopped meanwhile (a cancel, the watchdog): trials this driver started after
            # that are closed now.
            cancelled = ended is _CANCELLED
            self._write(
                f"closing the running trials of {self}",
                lambda: db.close_running_trials(
                    self.database,
                    sweep_id=self.id,
                    status=db.TrialStatus.CANCELLED if cancelled else db.TrialStatus.ERROR,
                    error=None if cancelled else f"the sweep failed: {error}",
                ),
            )
        return ended

    def fail(self, error: BaseException) -> db.JobStatus:
        """Record why the job stopped, in one line (the traceback goes to the log); nothing
        changes when the job ended already."""
        if terminating():
            log.warning("%s: %s", self, Terminated())
            reason = f"{Terminated()} {self._where()}; resume to continue"
        else:
            log.error("%s failed", self, exc_info=error)
            reason = one_line(error)
        return self.finish(_FAILED, reason)

    def _where(self) -> str:
        """Where the job stopped, for a user who wants to continue it."""
        if self.kind == "run":
            curve = db.get_run_curve(self.database, run_id=self.id)
            return f"at step {curve[-1].step if curve else 0}"
        sweep = db.get_sweep(self.database, sweep_id=self.id)
        planned = len(SweepSpec.stored(sweep.spec).plan())
        trials = db.list_trials(self.database, sweep_id=self.id)
        return f"after {sum(t.status.finished for t in trials)} of {planned} trials finished"

    @contextmanager
    def driving(self) -> Iterator[None]:
        """Mark the job running and beat its heartbeat for as long as the block runs. An
        error that leaves the block fails the job (`fail`). An Exception is swallowed: after
        the block, the job's status says how it ended. SIGTERM (`Terminated`, whatever it
        surfaced as) and other BaseExceptions propagate, recorded."""
        with Periodic(self.touch, self.settings.heartbeat_s, f"heartbeat {self}"):
            self._write(f"starting {self}", lambda: self.move(_RUNNING))
            try:
                yield
            except BaseException as error:
                self.fail(error)
                if terminating():  # whatever the signal surfaced as
                    raise Terminated from error
                if not isinstance(error, Exception):
                    raise

    def _write(self, what: str, write: Callable[[], object]) -> None:
        retrying(what, write, budget_s=self.settings.write_retry_s)
