"""`python -m sweeper.driver sweep|run ID`: the process that drives one sweep or one run.

The service starts it detached, with its log file as stdout; it writes the job's results to
the database and beats its heartbeat there until the job ends. Whatever stops it early, an
error of any kind or SIGTERM, is recorded on the job as one line, the traceback logged here
(see `sweeper.jobs`). Exit status: 0 when the job ended completed or cancelled, 1 when it
failed or could not be recorded, 143 on SIGTERM, 2 on a bad command line.
"""

from __future__ import annotations

import logging
import signal
import sys

import db
from sweeper.cluster import ensure_ray
from sweeper.jobs import (
    DRIVER_WRITE_ATTEMPT_S,
    Job,
    JobKind,
    Periodic,
    raise_terminated,
    terminating,
)
from sweeper.settings import Settings

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("sweep", "run") or not args[1].isdigit():
        print("usage: python -m sweeper.driver sweep|run ID", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, raise_terminated)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    kind: JobKind = "sweep" if args[0] == "sweep" else "run"
    job_id = int(args[1])
    try:
        settings = Settings()  # the service started this process with its own (see there)
        database = db.connect(settings.database_url, busy_timeout_s=DRIVER_WRITE_ATTEMPT_S)
        job = Job(database, kind, job_id, settings)
    except Exception:  # nowhere to record it: the watchdog sees this driver gone
        log.exception("%s %s: the driver could not start", kind, job_id)
        return 1
    try:
        status = drive(job)
    except db.Conflict as e:  # not queued: cancelled meanwhile, or another driver has it
        log.info("%s: nothing to do: %s", job, e)
        return 0
    except BaseException as e:  # outside the job's own error handling: Ray, an import
        try:
            status = job.fail(e)  # nothing changes when the job recorded it already
        except db.StorageError:
            log.exception("%s: recording the failure failed too", job)
            return 1
        if terminating():
            return 128 + signal.SIGTERM
    log.info("%s ended %s", job, status)
    return 1 if status is db.JobStatus.FAILED else 0


def drive(job: Job) -> db.JobStatus:
    if job.status() is not db.JobStatus.QUEUED:
        raise db.Conflict(f"{job} is {job.status()}, not queued")
    if job.settings.ray_address is not None:
        # Joined first, beating meanwhile: a cluster that does not answer fails the job within
        # its timeout, before torch and the engine are imported (seconds of CPU). A local
        # cluster starts later, once the job is known to need one.
        with Periodic(job.touch, job.settings.heartbeat_s, f"heartbeat {job}"):
            ensure_ray(job.settings)
    if job.kind == "sweep":
        from sweeper.engine import run_sweep

        return run_sweep(job.database, job.id, job.settings)
    from sweeper.launch import run_launch

    return run_launch(job.database, job.id, job.settings)


if __name__ == "__main__":
    sys.exit(main())
