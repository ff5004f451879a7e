"""What sweep and run drivers share: the job's row and heartbeat, Ray's connection and storage.

A driver is a process of its own (`python -m sweeper.driver sweep|run ID`) started by the
service; its heartbeat in the database tells a live driver from a dead one.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import platformdirs
import ray

import db

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
# What a driver process drives.
JobKind = Literal["sweep", "run"]
# A driver may (re)start a job in these states; a completed one has nothing left to do.
RESUMABLE = frozenset(set(db.JobStatus) - {db.JobStatus.COMPLETED})


def ray_storage_path() -> str:
    """Where Ray keeps experiment state and checkpoints: ``SWEEPER_RAY_STORAGE`` (a local
    path or any URI Ray supports, e.g. ``s3://bucket/sweeper``) or the user's data dir."""
    default = Path(platformdirs.user_data_dir("sweeper")) / "ray_results"
    return os.environ.get("SWEEPER_RAY_STORAGE", str(default))


def ensure_ray() -> None:
    """Connect to ``RAY_ADDRESS`` when it is set (ray.init reads it), else start a local
    Ray cluster for this process."""
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)


class Heartbeat:
    """Calls ``touch`` every few seconds from a thread for the driver's whole life, so
    that a resume can tell a dead driver from a slow one (ray.init alone takes seconds)."""

    def __init__(self, touch: Callable[[], None], name: str):
        self._touch = touch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat {name}")

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self._touch()
            except db.StorageError:
                log.exception("%s failed", self._thread.name)
            self._stop.wait(HEARTBEAT_S)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class DatabaseHandle:
    """A database that survives pickling as its URL: Ray pickles callbacks and stoppers
    (to actors, with experiment state), and an engine cannot be pickled."""

    def __init__(self, database: db.Database):
        self.database = database

    def __getstate__(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "database"} | {
            "url": self.database.url
        }

    def __setstate__(self, state: dict[str, object]) -> None:
        url = state.pop("url")
        assert isinstance(url, str)
        self.database = db.connect(url)
        self.__dict__.update(state)


@dataclass(frozen=True)
class Job:
    """A sweep's or a run's row, as the driver that drives it moves it."""

    database: db.Database
    kind: JobKind
    id: int

    def status(self) -> db.JobStatus:
        if self.kind == "sweep":
            return db.get_sweep(self.database, sweep_id=self.id).status
        return db.get_run(self.database, run_id=self.id).status

    def set_status(
        self,
        status: db.JobStatus,
        *,
        error: str | None = None,
        expected: frozenset[db.JobStatus] | None = None,
    ) -> None:
        if self.kind == "sweep":
            db.set_sweep_status(
                self.database, sweep_id=self.id, status=status, error=error, expected=expected
            )
        else:
            db.set_run_status(
                self.database, run_id=self.id, status=status, error=error, expected=expected
            )

    def touch(self) -> None:
        if self.kind == "sweep":
            db.touch_sweep_heartbeat(self.database, sweep_id=self.id)
        else:
            db.touch_run_heartbeat(self.database, run_id=self.id)

    @contextmanager
    def driving(self) -> Iterator[None]:
        """Mark the job running and beat its heartbeat for as long as the block runs."""
        with Heartbeat(self.touch, f"{self.kind} {self.id}"):
            self.set_status(db.JobStatus.RUNNING, expected=RESUMABLE)
            yield

    def finish(self, status: db.JobStatus, error: str | None = None) -> db.JobStatus:
        """Set the final status unless the job was cancelled meanwhile (the cancel wins);
        returns the status the job ends in."""
        try:
            self.set_status(status, error=error, expected=frozenset({db.JobStatus.RUNNING}))
        except db.Conflict:
            return self.status()
        return status
