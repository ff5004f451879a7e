"""Tables of the sweeper database, as typed SQLAlchemy 2.0 ORM classes.

The same schema runs on SQLite and PostgreSQL, so everything here is portable:

- statuses are strings with a named CHECK constraint (no native ENUM type to migrate);
- JSON is JSONB on PostgreSQL (queryable, compact) and JSON text on SQLite;
- timestamps are stored in UTC and always come back timezone-aware (SQLite keeps no zone);
- floats go through `FiniteFloat`: NaN and ±inf are stored as NULL on both backends,
  because SQLite cannot store NaN at all (it turns it into NULL) while PostgreSQL can.
  A NULL loss on a diverged trial or on its last metric point therefore means "not finite";
  the trial's status (`diverged`) says why.

Constraints have names from one naming convention, so later Alembic revisions can drop or
alter them by name on both backends. The first revision in `migrations/versions/` creates
exactly these tables; `tests/db` checks that the two never drift apart.
"""

from __future__ import annotations

import enum
import math
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# The largest id (64-bit on every backend: a larger one names no row and would not fit a
# query's parameter) and the largest count or width (an INTEGER column on PostgreSQL is
# 32-bit).
MAX_ID = 2**63 - 1
MAX_INT = 2**31 - 1


class JobStatus(enum.StrEnum):
    """Life of a sweep or a full-size run; `completed`, `failed` and `cancelled` are final
    until a resume."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


# Alembic's bookkeeping table for these migrations (Optuna uses the default name).
VERSION_TABLE = "sweeper_alembic_version"


class TrialStatus(enum.StrEnum):
    """Outcome of one trial.

    `completed`, `diverged` and `pruned` are results: a resumed sweep keeps them. `error`
    (a crash, a lost node) and `cancelled` (stopped by a cancel of its sweep) are not
    results, so a resume runs the trial again, like `running`.
    """

    RUNNING = "running"
    COMPLETED = "completed"
    DIVERGED = "diverged"
    PRUNED = "pruned"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (TrialStatus.COMPLETED, TrialStatus.DIVERGED, TrialStatus.PRUNED)


class FiniteFloat(TypeDecorator[float]):
    """A float column that stores NaN and ±inf as NULL, identically on every backend."""

    impl = Float
    cache_ok = True

    def process_bind_param(self, value: float | None, dialect: Dialect) -> float | None:
        if value is None or not math.isfinite(value):
            return None
        return float(value)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC that always comes back timezone-aware.

    SQLite has no time zones, so a naive value read back is UTC by construction; a naive
    value written is refused, since it cannot be known to be UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware one")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


# JSON documents (sweep spec, trial params, transfer result, run config).
JSONDoc = JSON().with_variant(JSONB(), "postgresql")


def _status_type(enum_class: type[enum.StrEnum]) -> Enum:
    # The CHECK constraint is declared explicitly on each table (so it has a stable name);
    # this type only maps the string to the StrEnum member and back.
    return Enum(
        enum_class,
        native_enum=False,
        create_constraint=False,
        length=16,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


def _status_check(enum_class: type[enum.StrEnum]) -> CheckConstraint:
    values = ", ".join(f"'{m.value}'" for m in enum_class)
    return CheckConstraint(f"status IN ({values})", name="status")


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSONDoc,
        datetime: UTCDateTime,
        float: FiniteFloat,
    }


class SweepRow(Base):
    __tablename__ = "sweeper_sweeps"
    __table_args__ = (_status_check(JobStatus), {"sqlite_autoincrement": True})

    # AUTOINCREMENT on SQLite: ids are shown to users, so a deleted sweep's id is never reused.
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[JobStatus] = mapped_column(_status_type(JobStatus))
    spec: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    # The driving process touches this while it runs; a stale value means a dead driver.
    driver_heartbeat_at: Mapped[datetime | None]
    optuna_study_name: Mapped[str | None] = mapped_column(String(512))
    # The process driving it, recorded when it is spawned: a service on that host sees at
    # once when it has exited. Cleared whenever the job is queued again.
    driver_host: Mapped[str | None] = mapped_column(String(255))
    driver_pid: Mapped[int | None]
    # Resumes the service's watchdog made since the job was last started or resumed by hand.
    auto_resumes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # What it trains on (`models.data.DataIdentity`), taken when it was created; NULL for
    # jobs stored before revision 0004.
    data: Mapped[dict[str, Any] | None]


class TrialRow(Base):
    __tablename__ = "sweeper_trials"
    __table_args__ = (
        # The engine names trials deterministically; this makes a resume idempotent.
        UniqueConstraint("sweep_id", "key"),
        _status_check(TrialStatus),
        CheckConstraint("width > 0", name="width_positive"),
        CheckConstraint("steps >= 0", name="steps_nonnegative"),
        CheckConstraint("tokens >= 0", name="tokens_nonnegative"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeper_sweeps.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(200))
    width: Mapped[int]
    params: Mapped[dict[str, Any]]
    status: Mapped[TrialStatus] = mapped_column(_status_type(TrialStatus))
    # NULL while running, and NULL when the loss was not finite (status `diverged`).
    final_eval_loss: Mapped[float | None]
    steps: Mapped[int | None]
    tokens: Mapped[int | None]
    tokens_per_s: Mapped[float | None]  # steady state: startup excluded
    startup_s: Mapped[float | None]  # seconds before the first steady-state step
    node_id: Mapped[str | None] = mapped_column(String(200))
    ray_trial_id: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class TransferRow(Base):
    __tablename__ = "sweeper_transfers"
    __table_args__ = (
        CheckConstraint("to_width > 0", name="to_width_positive"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(
        ForeignKey("sweeper_sweeps.id", ondelete="CASCADE"), index=True
    )
    to_width: Mapped[int]
    result: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class RunRow(Base):
    __tablename__ = "sweeper_runs"
    __table_args__ = (_status_check(JobStatus), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # A run is a real training job with checkpoints: it outlives the sweep it came from.
    sweep_id: Mapped[int | None] = mapped_column(
        ForeignKey("sweeper_sweeps.id", ondelete="SET NULL"), index=True
    )
    transfer_id: Mapped[int | None] = mapped_column(
        ForeignKey("sweeper_transfers.id", ondelete="SET NULL"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[JobStatus] = mapped_column(_status_type(JobStatus))
    config: Mapped[dict[str, Any]]
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    # Restarts after a failure, and the step of the checkpoint the last one resumed from.
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    resumed_from_step: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    driver_heartbeat_at: Mapped[datetime | None]
    driver_host: Mapped[str | None] = mapped_column(String(255))
    driver_pid: Mapped[int | None]
    auto_resumes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    data: Mapped[dict[str, Any] | None]  # as a sweep's


class MetricPointRow(Base):
    """One reported point of a loss curve, of either a trial or a run (never both)."""

    __tablename__ = "sweeper_metric_points"
    __table_args__ = (
        CheckConstraint("(trial_id IS NULL) <> (run_id IS NULL)", name="one_owner"),
        # A point written twice is stored once: inserts skip an existing (owner, step).
        # NULLs are distinct in a UNIQUE constraint, so a run's points never collide on the
        # trial's constraint and the reverse.
        UniqueConstraint("trial_id", "step"),
        UniqueConstraint("run_id", "step"),
        CheckConstraint("step >= 0", name="step_nonnegative"),
        CheckConstraint("tokens >= 0", name="tokens_nonnegative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int | None] = mapped_column(
        ForeignKey("sweeper_trials.id", ondelete="CASCADE")
    )
    run_id: Mapped[int | None] = mapped_column(ForeignKey("sweeper_runs.id", ondelete="CASCADE"))
    step: Mapped[int]
    tokens: Mapped[int]
    # NULL when not finite (a diverged trial's last points); eval_loss also when not measured.
    train_loss: Mapped[float | None]
    eval_loss: Mapped[float | None]
    tokens_per_s: Mapped[float | None]  # steady state: startup excluded
    startup_s: Mapped[float | None]  # seconds before the first steady-state step
    time_s: Mapped[float]  # seconds since the trial (or run) started
