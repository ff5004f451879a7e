"""Alembic migrations of the sweeper schema, run by `db.connect()` (see `env.py`)."""
