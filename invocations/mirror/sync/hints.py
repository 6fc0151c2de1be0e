"""Hints: "re-read these invocations from Restate now", from any process to the
sync engine, through PostgreSQL.

An action writes its hints in the same transaction as its audit entry; the
NOTIFY is delivered on commit, so the engine never wakes before the hint is
readable, and a hint written while no engine runs waits in the table for the
next one. The engine re-reads a hinted id on every hint pass until the hint's
`until`: Restate applies an action asynchronously (a cancel reaches the
children over the next moments), so one read right after the call could
still see the old state. Restate's trace spans are hints too (the receiver in
the web process writes them, bounded by `hints_add_bounded`): read once, since a
span is exported after the state it reports is readable.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import psycopg
from django.db import connection

from invocations.mirror.models import SyncHint
from invocations.mirror.sync.lock import connect_like_django

log = logging.getLogger("invocations.sync")

CHANNEL = "invocations_sync_hints"
# How long after an action its invocations keep being re-read.
DEFAULT_FOLLOW = timedelta(seconds=10)
# At most this many ids per hint pass: one `id IN (...)` query to Restate.
MAX_IDS_PER_PASS = 1000
TABLE = SyncHint._meta.db_table
# A repeated hint extends the follow (never cuts it short) and asks for one more read.
_ON_CONFLICT = (
    "ON CONFLICT (invocation_id) DO UPDATE SET requested_at = EXCLUDED.requested_at, "
    f"until = GREATEST({TABLE}.until, EXCLUDED.until), read = false"
)


def hints_add(invocation_ids: Iterable[str], *, follow: timedelta = DEFAULT_FOLLOW) -> int:
    """Ask the engine to re-read these ids at once and for `follow` after. Joins the caller's transaction."""
    ids = sorted(set(invocation_ids))
    if not ids:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {TABLE} (invocation_id, requested_at, until, read) "
            "SELECT unnest(%s::text[]), clock_timestamp(), clock_timestamp() + make_interval(secs => %s), false "
            f"{_ON_CONFLICT}",
            [ids, follow.total_seconds()],
        )
        cursor.execute("SELECT pg_notify(%s, '')", [CHANNEL])
    return len(ids)


def hints_add_bounded(invocation_ids: Iterable[str], *, follow: timedelta, capacity: int) -> tuple[int, int]:
    """hints_add for a feed that can flood (spans): while the queue holds `capacity` ids,
    new ids are refused (an id already queued is still refreshed). Returns (queued, dropped).

    What is dropped is not lost: the caller records the drop, and the engine then runs a
    full step (the scan finds every change). Concurrent receivers can overshoot the
    capacity by one request's ids each, which keeps it bounded.
    """
    ids = sorted(set(invocation_ids))
    if not ids:
        return 0, 0
    with connection.cursor() as cursor:
        cursor.execute(
            "WITH incoming AS (SELECT unnest(%(ids)s::text[]) AS id), "
            f"present AS (SELECT i.id FROM incoming i JOIN {TABLE} h ON h.invocation_id = i.id), "
            # Counting stops at the capacity: a full queue costs one bounded index scan.
            f"room AS (SELECT %(capacity)s - count(*) AS n FROM (SELECT 1 FROM {TABLE} LIMIT %(capacity)s) q), "
            "fresh AS (SELECT id FROM incoming WHERE id NOT IN (SELECT id FROM present) "
            "ORDER BY id LIMIT (SELECT GREATEST(n, 0) FROM room)) "
            f"INSERT INTO {TABLE} (invocation_id, requested_at, until, read) "
            "SELECT id, clock_timestamp(), clock_timestamp() + make_interval(secs => %(follow)s), false "
            "FROM (SELECT id FROM present UNION ALL SELECT id FROM fresh) queued "
            f"{_ON_CONFLICT} RETURNING 1",
            {"ids": ids, "capacity": capacity, "follow": follow.total_seconds()},
        )
        queued = len(cursor.fetchall())
        if queued:
            cursor.execute("SELECT pg_notify(%s, '')", [CHANNEL])
    return queued, len(ids) - queued


def hints_due() -> tuple[list[str], datetime]:
    """The ids to re-read now (oldest request first), and the moment they were taken
    (for hints_read). A hint is read at least once, then until its `until`."""
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {TABLE} WHERE read AND until < clock_timestamp()")
        cursor.execute("SELECT clock_timestamp()")
        taken_at = cursor.fetchone()[0]
    ids = list(SyncHint.objects.order_by("requested_at").values_list("invocation_id", flat=True)[:MAX_IDS_PER_PASS])
    return ids, taken_at


def hints_read(invocation_ids: list[str], *, taken_at: datetime) -> None:
    """Mark hints read; one renewed after `taken_at` (a newer span) stays unread."""
    SyncHint.objects.filter(invocation_id__in=invocation_ids, requested_at__lte=taken_at).update(read=True)


def hints_drop(invocation_ids: Iterable[str]) -> None:
    """Forget hints for ids Restate no longer holds (purged): nothing more to read."""
    SyncHint.objects.filter(invocation_id__in=list(invocation_ids)).delete()


def hints_pending() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {TABLE} WHERE NOT read OR until >= clock_timestamp())")
        return bool(cursor.fetchone()[0])


class HintListener:
    """LISTEN on a connection of its own; `wait(seconds)` returns True when a hint arrived.

    Its own connection: Django's may be closed after an error, and a LISTEN must
    outlive that. Failures only degrade to plain sleeping (hints are still in the
    table and read on the next pass).
    """

    def __init__(self) -> None:
        self._conn: psycopg.Connection[Any] | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect_like_django("hints")
            self._conn.execute(f"LISTEN {CHANNEL}")
        return self._conn

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, returning early (True) when a hint was notified."""
        try:
            conn = self._connect()
            woken = any(True for _ in conn.notifies(timeout=max(0.0, seconds), stop_after=1))
            if woken:
                for _ in conn.notifies(timeout=0):
                    pass  # many hints, one wake-up
            return woken
        except psycopg.Error as exc:
            log.warning("hint listener lost its connection: %s", exc)
            self.close()
            time.sleep(min(seconds, 1.0))
            return False

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
