"""Hints: "re-read these invocations from Restate now", from any process to the
sync engine, through PostgreSQL.

An action writes its hints in the same transaction as its audit entry; the
NOTIFY is delivered on commit, so the engine never wakes before the hint is
readable, and a hint written while no engine runs waits in the table for the
next one. The engine re-reads a hinted id on every hint pass until the hint's
`until`: Restate applies an action asynchronously (a cancel reaches the
children over the next moments), so one read right after the call could
still see the old state.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import psycopg
from django.db import connection
from django.utils import timezone

from invocations.mirror.models import SyncHint
from invocations.mirror.sync.lock import connect_like_django

log = logging.getLogger("invocations.sync")

CHANNEL = "invocations_sync_hints"
# How long after an action its invocations keep being re-read.
DEFAULT_FOLLOW = timedelta(seconds=10)
# At most this many ids per hint pass: one `id IN (...)` query to Restate.
MAX_IDS_PER_PASS = 1000


def hints_add(invocation_ids: Iterable[str], *, follow: timedelta = DEFAULT_FOLLOW) -> int:
    """Ask the engine to re-read these ids at once and for `follow` after. Joins the caller's transaction."""
    ids = sorted(set(invocation_ids))
    if not ids:
        return 0
    now = timezone.now()
    table = SyncHint._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (invocation_id, requested_at, until) "
            "SELECT unnest(%s::text[]), %s, %s "
            "ON CONFLICT (invocation_id) DO UPDATE SET requested_at = EXCLUDED.requested_at, "
            f"until = GREATEST({table}.until, EXCLUDED.until)",
            [ids, now, now + follow],
        )
        cursor.execute("SELECT pg_notify(%s, '')", [CHANNEL])
    return len(ids)


def hints_due() -> list[str]:
    """The ids to re-read now (oldest request first); expired hints are dropped."""
    now = timezone.now()
    SyncHint.objects.filter(until__lt=now).delete()
    return list(SyncHint.objects.order_by("requested_at").values_list("invocation_id", flat=True)[:MAX_IDS_PER_PASS])


def hints_drop(invocation_ids: Iterable[str]) -> None:
    """Forget hints for ids Restate no longer holds (purged): nothing more to read."""
    SyncHint.objects.filter(invocation_id__in=list(invocation_ids)).delete()


def hints_pending() -> bool:
    return SyncHint.objects.filter(until__gte=timezone.now()).exists()


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
