"""Domain errors of the storage layer.

Callers (the sweep engine, the service, the API) catch these instead of SQLAlchemy's or a
driver's exceptions, so that no layer above `db/` depends on which backend is in use. Every
error raised by `Database.session()` or a repository function is one of these (or a
`ValueError` for an argument that is wrong before any SQL runs).
"""

from __future__ import annotations


class StorageError(Exception):
    """The database could not do what was asked (base class of every storage error)."""


class NotFound(StorageError):
    """A row looked up by id does not exist."""


class Conflict(StorageError):
    """The write breaks a constraint or the row is not in the state the caller expected."""


class Unavailable(StorageError):
    """The database did not answer now: locked by another process, restarting, unreachable.

    Worth retrying later, unlike the other errors: the same call may then succeed.
    """
