"""`python -m sweeper.driver SWEEP_ID`: the process that drives one sweep (see service)."""

from __future__ import annotations

import logging
import sys

import db
from sweeper.engine import run_sweep


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m sweeper.driver SWEEP_ID", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    status = run_sweep(db.connect(), int(args[0]))
    logging.getLogger(__name__).info("sweep %s ended %s", args[0], status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
