"""Driver identity and automatic resumes: what the service's watchdog needs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

A sweep or run records the host and pid of the process driving it, so that a service on the
same host knows at once when that process has exited (a heartbeat only says so after it has
been silent for a while, and a database locked by another process silences a live driver
too), and how many times the watchdog has resumed it since it was last started by hand, so
that a job whose driver keeps dying is failed instead of resumed for ever. A job's heartbeat
is no longer NULL: its grace period starts when it is created (backfilled here).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JOB_TABLES = ("sweeper_sweeps", "sweeper_runs")


def upgrade() -> None:
    for table in _JOB_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("driver_host", sa.String(length=255), nullable=True))
            batch.add_column(sa.Column("driver_pid", sa.Integer(), nullable=True))
            batch.add_column(
                sa.Column("auto_resumes", sa.Integer(), server_default="0", nullable=False)
            )
        op.execute(
            f"UPDATE {table} SET driver_heartbeat_at = created_at WHERE driver_heartbeat_at IS NULL"
        )


def downgrade() -> None:
    for table in _JOB_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("auto_resumes")
            batch.drop_column("driver_pid")
            batch.drop_column("driver_host")
