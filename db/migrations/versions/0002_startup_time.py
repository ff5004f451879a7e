"""Startup time: the seconds a trial or run spends before its steady-state steps.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

A trial's throughput used to count its first step (autotuning, compilation, CUDA-graph
capture) as training time. The trainer now reports that startup separately; each metric
point carries it (it is known from the first report on) and a finished trial keeps it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("sweeper_trials", "sweeper_metric_points"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("startup_s", sa.Float(), nullable=True))


def downgrade() -> None:
    for table in ("sweeper_trials", "sweeper_metric_points"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("startup_s")
