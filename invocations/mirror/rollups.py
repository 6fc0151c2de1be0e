"""Hourly rollups of our copy for the service map: per handler (`ServiceMapHour`) and per
caller handler, callee handler and kind (`ServiceMapEdgeHour`), by UTC hour of
`created_at` (invocations) and of the journal time (edges).

A window of the map sums at most 168 hours of these instead of aggregating up to a
million rows. They are kept current incrementally:

- whoever writes invocations or edges marks the hours of the rows it wrote dirty, in
  the same transaction (`mark_dirty`; the sync engine does, from its upserts'
  RETURNING), so a crash between the commit and a refresh leaves the hour dirty;
- `refresh_dirty` recomputes the dirty hours from the rows (DELETE + INSERT ... SELECT
  ... GROUP BY per hour: an index range of one hour), newest first, and clears each mark
  only at the version it read, so a change committed meanwhile keeps its hour dirty;
- `rebuild` recomputes every hour (the first load, generate_invocations, an operator).

The rollup worker (`manage.py refresh_rollups`) calls `refresh_dirty` every second or so.
Refreshers serialize on an advisory lock, so any number of them (and a rebuild) is safe.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper

from invocations.mirror.models import (
    Invocation,
    InvocationEdge,
    RollupDirtyHour,
    RollupState,
    ServiceMapEdgeHour,
    ServiceMapHour,
    ServiceMapPair,
)

HOUR = timedelta(hours=1)
# pg_advisory_xact_lock key of every transaction that rewrites rollups ("rollups" in ASCII).
LOCK_KEY = 0x726F6C6C757073
# Hours recomputed per transaction: short transactions, so a page never waits on a long one.
HOURS_PER_TRANSACTION = 24
# A whole rebuild aggregates every row at once: at the default 4 MB the hash spills to disk.
REBUILD_WORK_MEM = "64MB"

_INV = Invocation._meta.db_table
_EDGE = InvocationEdge._meta.db_table
_NODES = ServiceMapHour._meta.db_table
_EDGES = ServiceMapEdgeHour._meta.db_table
_PAIRS = ServiceMapPair._meta.db_table
_DIRTY = RollupDirtyHour._meta.db_table
_STATE = RollupState._meta.db_table

# The aggregates, shared by the per-hour refresh and the rebuild: `{hour}` is the bucket
# expression, `{source}` the rows. Invocations by created_at; edges by their journal time.
_NODE_SELECT = """
    SELECT {hour}, i.service_name, i.handler_name, max(i.service_type), count(*),
           count(*) FILTER (WHERE i.completed_at IS NOT NULL),
           count(*) FILTER (WHERE i.completion_result = 'failure'),
           count(*) FILTER (WHERE i.invoked_by = 'ingress' AND i.parent_id IS NULL)
      FROM {source}
     GROUP BY 1, 2, 3
"""
_NODE_INSERT = (
    f"INSERT INTO {_NODES} (hour, service_name, handler_name, service_type, invocations, completed, failed, "
    "from_ingress) "
)
# Edges counted per pair of handlers and kind, each pair by its id in ServiceMapPair: pairs
# seen for the first time are added (only those: ON CONFLICT alone would draw a sequence
# value for every pair on every refresh). The statement's own snapshot does not see the
# pairs it adds, so their ids come from the RETURNING.
# An edge whose caller we never held (caller_service '', left by the backfill) has no handler
# to start from: left out, as the join to the caller's row used to leave it out.
_PAIR_KEY = ("caller_service", "caller_handler", "callee_service", "callee_handler", "kind")
_EDGE_INSERT_SELECT = f"""
    WITH counted AS (
        SELECT {{hour}} AS hour, e.caller_service, e.caller_handler, e.target_service AS callee_service,
               e.target_handler AS callee_handler, e.kind, count(*) AS n
          FROM {{source}}
         WHERE e.caller_service <> '' {{extra}}
         GROUP BY 1, 2, 3, 4, 5, 6
    ), added AS (
        INSERT INTO {_PAIRS} ({", ".join(_PAIR_KEY)})
        SELECT DISTINCT {", ".join(f"c.{k}" for k in _PAIR_KEY)} FROM counted c
         WHERE NOT EXISTS (SELECT 1 FROM {_PAIRS} p WHERE {" AND ".join(f"p.{k} = c.{k}" for k in _PAIR_KEY)})
        ON CONFLICT DO NOTHING
        RETURNING id, {", ".join(_PAIR_KEY)}
    ), pairs AS (
        SELECT id, {", ".join(_PAIR_KEY)} FROM {_PAIRS} UNION ALL SELECT * FROM added
    )
    INSERT INTO {_EDGES} (hour, pair_id, count)
    SELECT c.hour, p.id, c.n FROM counted c JOIN pairs p USING ({", ".join(_PAIR_KEY)})
"""


def hour_of(t: datetime) -> datetime:
    """The start of `t`'s UTC hour."""
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def mark_dirty(times: Iterable[datetime | None]) -> int:
    """Mark the hours of these created_at values dirty; call it in the transaction that wrote them.

    Returns how many hours were marked. Hours are written in order, so two writers
    marking overlapping hours lock them in the same order (no deadlock).
    """
    hours = sorted({hour_of(t) for t in times if t is not None})
    if not hours:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {_DIRTY} AS d (hour, version, marked_at) "
            "SELECT h, 1, clock_timestamp() FROM unnest(%s::timestamptz[]) AS h "
            "ON CONFLICT (hour) DO UPDATE SET version = d.version + 1",
            [hours],
        )
    return len(hours)


@dataclass
class RefreshReport:
    hours: int = 0  # hours recomputed
    pending: int = 0  # dirty hours left for the next refresh (past `limit`, or marked meanwhile)
    seconds: float = 0.0


def _recompute(cursor: CursorWrapper, hours: list[datetime]) -> None:
    """Replace the rollups of `hours` with what the rows say now (one index range per hour)."""
    hour_range = "unnest(%s::timestamptz[]) AS h(hour) JOIN {table} {alias} ON {alias}.created_at >= h.hour AND {alias}.created_at < h.hour + interval '1 hour'"
    execute = cursor.execute
    execute(f"DELETE FROM {_NODES} WHERE hour = ANY(%s::timestamptz[])", [hours])
    execute(
        _NODE_INSERT + _NODE_SELECT.format(hour="h.hour", source=hour_range.format(table=_INV, alias="i")),
        [hours],
    )
    execute(f"DELETE FROM {_EDGES} WHERE hour = ANY(%s::timestamptz[])", [hours])
    execute(
        _EDGE_INSERT_SELECT.format(hour="h.hour", source=hour_range.format(table=_EDGE, alias="e"), extra=""),
        [hours],
    )


def _bump_generation(cursor: CursorWrapper, *, hours: int, seconds: float, rebuilt: bool = False) -> None:
    rebuilt_at = "clock_timestamp()" if rebuilt else "NULL"
    cursor.execute(
        f"INSERT INTO {_STATE} AS s (id, generation, refreshed_at, last_refresh_s, last_hours, rebuilt_at) "
        f"VALUES (1, 1, clock_timestamp(), %s, %s, {rebuilt_at}) "
        "ON CONFLICT (id) DO UPDATE SET generation = s.generation + 1, refreshed_at = EXCLUDED.refreshed_at, "
        "last_refresh_s = EXCLUDED.last_refresh_s, last_hours = EXCLUDED.last_hours, "
        "rebuilt_at = COALESCE(EXCLUDED.rebuilt_at, s.rebuilt_at)",
        [seconds, hours],
    )


def refresh_dirty(*, limit: int = 24 * 31) -> RefreshReport:
    """Recompute up to `limit` dirty hours, newest first (the hours pages show most)."""
    t0 = time.monotonic()
    report = RefreshReport()
    dirty = list(RollupDirtyHour.objects.order_by("-hour").values_list("hour", "version")[:limit])
    for start in range(0, len(dirty), HOURS_PER_TRANSACTION):
        batch = dirty[start : start + HOURS_PER_TRANSACTION]
        hours = [h for h, _ in batch]
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])
            _recompute(cursor, hours)
            # Last, so the mark's row lock is held only to the commit: a sync step marking
            # the same hour waits for that, not for the recomputation.
            cursor.execute(
                f"DELETE FROM {_DIRTY} d USING unnest(%s::timestamptz[], %s::bigint[]) AS b(hour, version) "
                "WHERE d.hour = b.hour AND d.version = b.version",
                [hours, [v for _, v in batch]],
            )
            report.hours += len(hours)
            _bump_generation(cursor, hours=len(hours), seconds=time.monotonic() - t0)
    report.pending = RollupDirtyHour.objects.count() if dirty else 0
    report.seconds = time.monotonic() - t0
    return report


def rebuild() -> RefreshReport:
    """Recompute every hour from every row, in one transaction; marks made meanwhile stay."""
    t0 = time.monotonic()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])
        cursor.execute("SELECT set_config('work_mem', %s, true)", [REBUILD_WORK_MEM])
        cursor.execute(f"SELECT hour, version FROM {_DIRTY}")
        seen = cursor.fetchall()
        cursor.execute(f"DELETE FROM {_NODES}")
        cursor.execute(f"DELETE FROM {_EDGES}")
        bucket = "date_trunc('hour', {alias}.created_at, 'UTC')"
        cursor.execute(_NODE_INSERT + _NODE_SELECT.format(hour=bucket.format(alias="i"), source=f"{_INV} i"))
        cursor.execute(
            _EDGE_INSERT_SELECT.format(
                hour=bucket.format(alias="e"), source=f"{_EDGE} e", extra="AND e.created_at IS NOT NULL"
            )
        )
        cursor.execute(f"SELECT count(DISTINCT hour) FROM {_NODES}")
        hours = int(cursor.fetchone()[0])
        if seen:
            cursor.execute(
                f"DELETE FROM {_DIRTY} d USING unnest(%s::timestamptz[], %s::bigint[]) AS b(hour, version) "
                "WHERE d.hour = b.hour AND d.version = b.version",
                [[h for h, _ in seen], [v for _, v in seen]],
            )
        _bump_generation(cursor, hours=hours, seconds=time.monotonic() - t0, rebuilt=True)
    # Fresh statistics for the rollup tables the map reads.
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {_NODES}")
        cursor.execute(f"ANALYZE {_EDGES}")
        cursor.execute(f"ANALYZE {_PAIRS}")
    return RefreshReport(hours=hours, pending=RollupDirtyHour.objects.count(), seconds=time.monotonic() - t0)


def generation() -> int:
    """Grows with every refresh that rewrote an hour (0 before the first)."""
    return RollupState.objects.filter(id=1).values_list("generation", flat=True).first() or 0
