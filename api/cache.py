"""A small in-memory cache of serialized responses: one computation per key at a time, and
stale-while-revalidate so that no reader waits for a refresh.

The dashboard polls a running sweep's curves every couple of seconds, from every open
page. Serving a sweep's curves from memory for ``ttl_s`` (1 s by default) turns N pollers
into at most one database read per second per sweep, whatever N is. When an entry has
aged past ``ttl_s`` (but not past ``ttl_s + stale_s``), readers still get it at once while
one background thread reads the new one; only a key with no usable entry makes its
readers wait, and then for the one computation in flight ("single flight").
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    body: bytes
    etag: str
    made_at: float  # time.monotonic() when the read that made it began


class TTLCache:
    def __init__(self, ttl_s: float, *, stale_s: float = 5.0, max_entries: int = 256) -> None:
        self.ttl_s = ttl_s
        self.stale_s = stale_s
        self.max_entries = max_entries
        self._entries: dict[Hashable, Entry] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._refreshing: set[Hashable] = set()
        self._dropped: dict[Hashable, int] = {}  # drops of each key so far
        self._guard = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], bytes]) -> Entry:
        """The fresh entry of ``key``, computing it (once, whoever asks) when stale. Blocks."""
        entry = self.peek(key)
        if entry is not None:
            return entry
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            entry = self.peek(key)  # made by the caller we waited for
            if entry is not None:
                return entry
            return self._compute(key, compute)

    def serve(self, key: Hashable, compute: Callable[[], bytes]) -> Entry | None:
        """A usable entry of ``key`` without blocking: the fresh one, or a stale one while a
        background refresh runs; None when there is none (then call `get`)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        age = time.monotonic() - entry.made_at
        if age <= self.ttl_s:
            return entry
        if age > self.ttl_s + self.stale_s:
            return None
        with self._guard:
            if key in self._refreshing:
                return entry
            self._refreshing.add(key)
        threading.Thread(target=self._refresh, args=(key, compute), daemon=True).start()
        return entry

    def peek(self, key: Hashable) -> Entry | None:
        """The fresh entry of ``key`` if there is one; never blocks."""
        entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry.made_at > self.ttl_s:
            return None
        return entry

    def drop(self, key: Hashable) -> None:
        """Forget ``key``: after a write through this process, the next read is fresh."""
        with self._guard:
            self._entries.pop(key, None)
            self._dropped[key] = self._dropped.get(key, 0) + 1

    def _refresh(self, key: Hashable, compute: Callable[[], bytes]) -> None:
        try:
            with self._guard:
                lock = self._locks.setdefault(key, threading.Lock())
            with lock:
                self._compute(key, compute)
        except Exception:  # the next reader that finds no entry sees the error itself
            log.debug("refreshing %r failed", key, exc_info=True)
            self.drop(key)
        finally:
            with self._guard:
                self._refreshing.discard(key)

    def _compute(self, key: Hashable, compute: Callable[[], bytes]) -> Entry:
        started = time.monotonic()  # the data is as old as the read that made it
        drops = self._dropped.get(key, 0)
        body = compute()
        entry = Entry(body, f'"{hashlib.blake2b(body, digest_size=12).hexdigest()}"', started)
        if self.ttl_s > 0:
            with self._guard:
                if self._dropped.get(key, 0) != drops:  # read before a write: do not keep it
                    return entry
                if key not in self._entries and len(self._entries) >= self.max_entries:
                    self._entries.pop(next(iter(self._entries)))
                self._entries[key] = entry
        return entry
