"""The push feed: what the OTLP receiver (in a web process) does with Restate's spans,
and how the sync loop (another process) reads what it got.

The receiver only records: the spans (for the attempts drawn on the pages) and one
hint per invocation id, in one short transaction whose NOTIFY wakes the engine at
commit. It never reads Restate: that is the engine's job, batched.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from invocations.mirror.models import FeedMode, InvocationSpan, TraceFeed
from invocations.mirror.sync import hints
from invocations.restate.spans import Export

SPAN_TABLE = InvocationSpan._meta.db_table
FEED_TABLE = TraceFeed._meta.db_table
REFUSAL_CHARS = 500


@dataclass(frozen=True)
class Receipt:
    spans: int  # spans in the body
    kept: int  # spans about an invocation, new to us
    ids: int  # distinct invocation ids hinted
    dropped: int  # ids refused because the hint queue was full


def spans_receive(*, export: Export) -> Receipt:
    """Store one export's invocation spans and hint their ids, in one transaction."""
    records = export.records
    ids = sorted({r.invocation_id for r in records})
    with transaction.atomic(), connection.cursor() as cursor:
        kept = 0
        if records:
            cursor.execute(
                f"INSERT INTO {SPAN_TABLE} (invocation_id, kind, trace_id, span_id, started_at, ended_at, status, "
                "status_message, deployment_id, deployment_address, result, received_at) "
                "SELECT *, clock_timestamp() FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], "
                "%s::timestamptz[], %s::timestamptz[], %s::smallint[], %s::text[], %s::text[], %s::text[], %s::text[]) "
                "ON CONFLICT (trace_id, span_id) DO NOTHING",
                [
                    [r.invocation_id for r in records],
                    [r.kind for r in records],
                    [r.trace_id for r in records],
                    [r.span_id for r in records],
                    [r.started_at for r in records],
                    [r.ended_at for r in records],
                    [r.status for r in records],
                    [r.status_message for r in records],
                    [r.deployment_id for r in records],
                    [r.deployment_address for r in records],
                    [r.result for r in records],
                ],
            )
            kept = cursor.rowcount
        queued, dropped = hints.hints_add_bounded(
            ids,
            follow=timedelta(seconds=settings.SYNC_SPAN_FOLLOW_S),
            capacity=settings.TRACES_HINT_QUEUE_MAX,
        )
        # One upsert of the feed's row per request: concurrent receivers add, never overwrite.
        f = FEED_TABLE
        cursor.execute(
            f"INSERT INTO {f} (id, requests, spans, ids_hinted, last_received_at, refused, last_refusal, "
            "ids_dropped, last_dropped_at) "
            "VALUES (1, 1, %(spans)s, %(queued)s, clock_timestamp(), 0, '', %(dropped)s, "
            "CASE WHEN %(dropped)s > 0 THEN clock_timestamp() END) "
            f"ON CONFLICT (id) DO UPDATE SET requests = {f}.requests + 1, spans = {f}.spans + %(spans)s, "
            f"ids_hinted = {f}.ids_hinted + %(queued)s, last_received_at = clock_timestamp(), "
            f"ids_dropped = {f}.ids_dropped + %(dropped)s, "
            f"last_dropped_at = CASE WHEN %(dropped)s > 0 THEN clock_timestamp() ELSE {f}.last_dropped_at END",
            {"spans": export.spans_total, "queued": queued, "dropped": dropped},
        )
    return Receipt(spans=export.spans_total, kept=kept, ids=queued, dropped=dropped)


def refusal_record(*, reason: str) -> None:
    """Count a refused export and keep why (the sync line shows it: a wrong token is
    otherwise silent, Restate only logs it)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {FEED_TABLE} (id, requests, spans, ids_hinted, refused, last_refused_at, last_refusal, "
            "ids_dropped) VALUES (1, 0, 0, 0, 1, clock_timestamp(), %(reason)s, 0) "
            f"ON CONFLICT (id) DO UPDATE SET refused = {FEED_TABLE}.refused + 1, last_refused_at = clock_timestamp(), "
            "last_refusal = %(reason)s",
            {"reason": reason[:REFUSAL_CHARS]},
        )


def feed_mode_now(*, feed: TraceFeed | None, now: datetime | None = None) -> FeedMode:
    """Push while a span arrived within SYNC_PUSH_QUIET_S; poll otherwise."""
    if feed is None or feed.last_received_at is None:
        return FeedMode.POLL
    quiet = (now or timezone.now()) - feed.last_received_at
    return FeedMode.PUSH if quiet <= timedelta(seconds=settings.SYNC_PUSH_QUIET_S) else FeedMode.POLL


def spans_prune(*, now: datetime | None = None) -> int:
    """Keep SPANS_KEEP_S of spans, and at most SPANS_MAX_ROWS (the oldest go first)."""
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.SPANS_KEEP_S)
    deleted, _ = InvocationSpan.objects.filter(received_at__lt=cutoff).delete()
    with connection.cursor() as cursor:
        # The planner's estimate first: an exact count of millions of rows every 15 s is not free.
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [SPAN_TABLE])
        estimate = cursor.fetchone()[0]
        if estimate > settings.SPANS_MAX_ROWS:
            cursor.execute(
                f"DELETE FROM {SPAN_TABLE} WHERE id <= (SELECT id FROM {SPAN_TABLE} ORDER BY id DESC "
                "OFFSET %s LIMIT 1)",
                [settings.SPANS_MAX_ROWS],
            )
            deleted += cursor.rowcount
    return deleted
