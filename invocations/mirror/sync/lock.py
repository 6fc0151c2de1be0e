"""Only one sync engine writes at a time: a PostgreSQL session-level advisory lock.

The lock lives on a connection of its own. Django's connection is closed after a
database error (a broken connection must not be reused) and that would silently
drop a session lock held on it. A session lock is released by PostgreSQL itself
when the holder's session ends, so a killed engine (kill -9, a lost host, once
TCP keepalives give up) hands over without anyone cleaning up.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable
from typing import Any

import psycopg
from django.db import connection

log = logging.getLogger(__name__)

# Any constant bigint, the same for every replica (advisory locks are per database);
# derived from a name so it does not collide with another app's small integers.
SYNC_ENGINE_LOCK_KEY = int.from_bytes(hashlib.sha256(b"restate-dashboard sync engine").digest()[:8], "big", signed=True)
SNAPSHOT_WRITE_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"restate-dashboard snapshots").digest()[:8], "big", signed=True
)


def snapshot_write_lock() -> None:
    """Serialize snapshot replacements (queues, locks, promises) until the transaction ends.

    The step and the hint thread both replace them, each with a DELETE and a COPY: two at
    once would insert the same keys twice. Inside transaction.atomic() only.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SNAPSHOT_WRITE_LOCK_KEY])


def connect_like_django(purpose: str = "lock") -> psycopg.Connection[Any]:
    """An autocommit connection with Django's parameters, named for what it is for."""
    params = connection.get_connection_params()
    for django_only in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(django_only, None)
    params["application_name"] = f"{params.get('application_name') or 'restate-dashboard-sync'}-{purpose}"
    return psycopg.connect(**params, autocommit=True)


class EngineLock:
    """try_acquire() / held() / release() around pg_try_advisory_lock on a dedicated connection."""

    def __init__(
        self,
        *,
        key: int = SYNC_ENGINE_LOCK_KEY,
        connect: Callable[[], psycopg.Connection[Any]] = connect_like_django,
    ) -> None:
        self.key = key
        self._connect = connect
        self._conn: psycopg.Connection[Any] | None = None
        self._held = False
        # Why the last try failed, when it was the database rather than another holder.
        self.last_error: psycopg.Error | None = None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; never waits. True if we hold it now."""
        if self.held():
            return True
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
                # A holder on a host that vanished releases the lock once the server notices
                # its session is dead: seconds with these, hours with the OS defaults.
                self._conn.execute(
                    "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3"
                )
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", [self.key]).fetchone()
            self._held = bool(row and row[0])
            self.last_error = None
        except psycopg.Error as exc:
            log.warning("could not try the sync engine lock: %s", exc)
            self.last_error = exc
            self._close()
        return self._held

    def held(self) -> bool:
        """Whether we still hold it: the lock lasts as long as its session, so ask the session."""
        if not self._held or self._conn is None or self._conn.closed:
            self._held = False
            return False
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            log.warning("lost the connection that held the sync engine lock")
            self._close()
        return self._held

    def release(self) -> None:
        if self._held and self._conn is not None and not self._conn.closed:
            # Closing the session below releases it anyway.
            with contextlib.suppress(psycopg.Error):
                self._conn.execute("SELECT pg_advisory_unlock(%s)", [self.key])
        self._close()

    def _close(self) -> None:
        self._held = False
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
