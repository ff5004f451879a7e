"""First schema: sweeps, trials, metric points, transfers, runs.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Types are spelled out here, not imported from `db._schema`: a revision is a snapshot and
must keep creating the same tables when the ORM classes change later. Statuses are
VARCHAR(16) with CHECK constraints (what the ORM's non-native Enum maps to); the ORM's
float and timestamp decorators are plain FLOAT and TIMESTAMP WITH TIME ZONE underneath.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JOB_STATUSES = "status IN ('queued', 'running', 'completed', 'failed', 'cancelled')"
_TRIAL_STATUSES = "status IN ('running', 'completed', 'diverged', 'pruned', 'error', 'cancelled')"


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sweeper_sweeps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("spec", _json(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("started_at", _timestamp(), nullable=True),
        sa.Column("finished_at", _timestamp(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("driver_heartbeat_at", _timestamp(), nullable=True),
        sa.Column("optuna_study_name", sa.String(length=512), nullable=True),
        sa.CheckConstraint(_JOB_STATUSES, name=op.f("ck_sweeper_sweeps_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeper_sweeps")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "sweeper_transfers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sweep_id", sa.Integer(), nullable=False),
        sa.Column("to_width", sa.Integer(), nullable=False),
        sa.Column("result", _json(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.CheckConstraint("to_width > 0", name=op.f("ck_sweeper_transfers_to_width_positive")),
        sa.ForeignKeyConstraint(
            ["sweep_id"],
            ["sweeper_sweeps.id"],
            name=op.f("fk_sweeper_transfers_sweep_id_sweeper_sweeps"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeper_transfers")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_sweeper_transfers_sweep_id"), "sweeper_transfers", ["sweep_id"])
    op.create_table(
        "sweeper_trials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sweep_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("params", _json(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("final_eval_loss", sa.Float(), nullable=True),
        sa.Column("steps", sa.Integer(), nullable=True),
        sa.Column("tokens", sa.Integer(), nullable=True),
        sa.Column("tokens_per_s", sa.Float(), nullable=True),
        sa.Column("node_id", sa.String(length=200), nullable=True),
        sa.Column("ray_trial_id", sa.String(length=200), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("finished_at", _timestamp(), nullable=True),
        sa.CheckConstraint(_TRIAL_STATUSES, name=op.f("ck_sweeper_trials_status")),
        sa.CheckConstraint("steps >= 0", name=op.f("ck_sweeper_trials_steps_nonnegative")),
        sa.CheckConstraint("tokens >= 0", name=op.f("ck_sweeper_trials_tokens_nonnegative")),
        sa.CheckConstraint("width > 0", name=op.f("ck_sweeper_trials_width_positive")),
        sa.ForeignKeyConstraint(
            ["sweep_id"],
            ["sweeper_sweeps.id"],
            name=op.f("fk_sweeper_trials_sweep_id_sweeper_sweeps"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeper_trials")),
        sa.UniqueConstraint("sweep_id", "key", name=op.f("uq_sweeper_trials_sweep_id_key")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "sweeper_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sweep_id", sa.Integer(), nullable=True),
        sa.Column("transfer_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("config", _json(), nullable=False),
        sa.Column("checkpoint_path", sa.Text(), nullable=True),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.Column("resumed_from_step", sa.Integer(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("started_at", _timestamp(), nullable=True),
        sa.Column("finished_at", _timestamp(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("driver_heartbeat_at", _timestamp(), nullable=True),
        sa.CheckConstraint(_JOB_STATUSES, name=op.f("ck_sweeper_runs_status")),
        sa.ForeignKeyConstraint(
            ["sweep_id"],
            ["sweeper_sweeps.id"],
            name=op.f("fk_sweeper_runs_sweep_id_sweeper_sweeps"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["transfer_id"],
            ["sweeper_transfers.id"],
            name=op.f("fk_sweeper_runs_transfer_id_sweeper_transfers"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeper_runs")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_sweeper_runs_sweep_id"), "sweeper_runs", ["sweep_id"])
    op.create_index(op.f("ix_sweeper_runs_transfer_id"), "sweeper_runs", ["transfer_id"])
    op.create_table(
        "sweeper_metric_points",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("train_loss", sa.Float(), nullable=True),
        sa.Column("eval_loss", sa.Float(), nullable=True),
        sa.Column("tokens_per_s", sa.Float(), nullable=True),
        sa.Column("time_s", sa.Float(), nullable=False),
        sa.CheckConstraint(
            "(trial_id IS NULL) <> (run_id IS NULL)",
            name=op.f("ck_sweeper_metric_points_one_owner"),
        ),
        sa.CheckConstraint("step >= 0", name=op.f("ck_sweeper_metric_points_step_nonnegative")),
        sa.CheckConstraint("tokens >= 0", name=op.f("ck_sweeper_metric_points_tokens_nonnegative")),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["sweeper_runs.id"],
            name=op.f("fk_sweeper_metric_points_run_id_sweeper_runs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["sweeper_trials.id"],
            name=op.f("fk_sweeper_metric_points_trial_id_sweeper_trials"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeper_metric_points")),
        sa.UniqueConstraint("run_id", "step", name=op.f("uq_sweeper_metric_points_run_id_step")),
        sa.UniqueConstraint(
            "trial_id", "step", name=op.f("uq_sweeper_metric_points_trial_id_step")
        ),
    )


def downgrade() -> None:
    op.drop_table("sweeper_metric_points")
    op.drop_table("sweeper_runs")
    op.drop_table("sweeper_trials")
    op.drop_table("sweeper_transfers")
    op.drop_table("sweeper_sweeps")
