"""`python -m sweeper.driver sweep|run ID`: the process that drives one sweep or one run.

The service starts it detached; it writes the job's results to the database and beats
its heartbeat there until the job ends.
"""

from __future__ import annotations

import logging
import sys

import db


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("sweep", "run") or not args[1].isdigit():
        print("usage: python -m sweeper.driver sweep|run ID", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    kind, job_id = args[0], int(args[1])
    database = db.connect()
    status: db.JobStatus
    if kind == "sweep":
        from sweeper.engine import run_sweep

        status = run_sweep(database, job_id)
    else:
        from sweeper.launch import run_launch

        status = run_launch(database, job_id)
    logging.getLogger(__name__).info("%s %s ended %s", kind, job_id, status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
