"""A sweep's curves as JSON, read in a worker process of the service's own.

Reading a sweep's points and turning them into JSON is pure Python work that grows with the
sweep (tens of ms for a few thousand points). Done in the server's process it holds the GIL
while the event loop serves every other request, which then waits far longer than the work
itself takes. So the service reads curves in one worker process (spawned at start, with
its own database connection) and gets back the finished bytes; `SWEEPER_CURVES_WORKER=0`
reads them in-process instead.
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from sweeper import service
from sweeper.service import Database

log = logging.getLogger(__name__)


def curves_json(database: Database, sweep_id: int) -> bytes:
    """`views.SweepCurves` of a sweep, serialized."""
    return service.sweep_curves(database, sweep_id).model_dump_json().encode()


# --- in the worker process --------------------------------------------------------------

_worker_database: Database | None = None


def _start_worker(url: str) -> None:
    global _worker_database
    _worker_database = service.connect(url)


def _ready() -> bool:
    return _worker_database is not None


def _curves_json_in_worker(sweep_id: int) -> bytes:
    assert _worker_database is not None, "worker not started"
    return curves_json(_worker_database, sweep_id)


# --- in the service ---------------------------------------------------------------------


class CurvesReader:
    """Reads curves in a worker process (``worker=True``) or in the caller's thread."""

    def __init__(self, database: Database, *, worker: bool) -> None:
        self._database = database
        self._worker = worker
        self._pool: ProcessPoolExecutor | None = None
        if worker:
            self._start()

    def _start(self) -> None:
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            # spawn, not fork: the service has threads (and an engine) a fork would copy.
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(self._database.url,),
        )
        self._pool.submit(_ready)  # start it now, not on the first request

    def read(self, sweep_id: int) -> bytes:
        """The curves' JSON; blocks (call it off the event loop)."""
        if self._pool is None:
            return curves_json(self._database, sweep_id)
        try:
            return self._pool.submit(_curves_json_in_worker, sweep_id).result()
        except BrokenProcessPool:
            log.warning("the curves worker died; starting a new one")
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._start()
            return curves_json(self._database, sweep_id)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
