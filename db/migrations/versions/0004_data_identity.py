"""Data identity: what each sweep and run trained on.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

A sweep or run records the identity of its data (source, content hash, tokenizer,
vocabulary, token counts; `models.data.DataIdentity`) when it is created, so that the
transfer can warn when the proxies and the target trained on different data or tokenizers,
and a dataset prepared again under the same path is not mistaken for the one a sweep used.
Jobs stored before have none (NULL).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JOB_TABLES = ("sweeper_sweeps", "sweeper_runs")


def upgrade() -> None:
    for table in _JOB_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("data", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True)
            )


def downgrade() -> None:
    for table in _JOB_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("data")
