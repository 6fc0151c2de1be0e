"""What /delayed/ prints: the pending delayed messages in fire order (fire time, target,
sender and the journal entry that sent it, a bounded payload, how long ago it was
sent) and the chart of upcoming fires above them (templates/invocations/delayed.html)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from django.urls import reverse
from django.utils import timezone

from invocations.graph.fires import DEFAULT_RANGE, RANGES, Bar, FireChart, bucket_floor, fire_chart
from invocations.mirror.models import Invocation
from invocations.reads.delayed_filters import DelayedFilters
from invocations.reads.presenters.formatting import iso_utc, utc_text
from invocations.reads.presenters.payloads import Payload, format_payload
from invocations.reads.selectors import delayed as selectors


@dataclass(frozen=True)
class DelayedRow:
    inv: Invocation
    fire_at: datetime
    sent_at: datetime | None
    sender_id: str | None  # None: sent through the ingress
    sender_target: str  # "Service[/key]/handler" of the sender ("" when not known)
    journal_index: int | None  # the sender's OneWayCall entry, when its journal is in our copy
    payload: Payload | None  # None: neither the sending entry nor the message's Input is in our copy
    payload_source: str  # "sent" / "input" / ""
    # Made once here rather than by a template filter or {% url %} per row: 50 rows of
    # five dates and three reversed URLs were a third of the page's time.
    fire_iso: str
    fire_text: str  # to the second, UTC
    fire_title: str  # to the millisecond, UTC
    href: str
    sender_href: str  # with the journal entry's anchor
    cancel_href: str

    @property
    def id(self) -> str:
        return self.inv.id


@dataclass(frozen=True)
class ChartBar:
    bar: Bar
    query: str  # the list filtered to this bar's window
    selected: bool
    start_iso: str
    end_iso: str
    title: str  # "Mon 03:00-04:00 UTC" (an en dash)


def _payload(head: selectors.PayloadHead | None) -> Payload | None:
    if head is None:
        return None
    shown = format_payload(head.head, cap=selectors.PAYLOAD_HEAD)
    if shown is None or head.size <= len(head.head):
        return shown
    # Only the head was read: never parsed as JSON, cut where it was cut.
    return Payload(shown.text, shown.kind, head.size, truncated=True)


def _url(template: str, invocation_id: str) -> str:
    return template.replace("__ID__", quote(invocation_id, safe=""))


def delayed_rows(rows: list[Invocation]) -> list[DelayedRow]:
    # Reversed once with a placeholder, as the waterfall does.
    detail = reverse("invocations:detail", args=["__ID__"])
    cancel = reverse("invocations:action", args=["__ID__", "cancel"])
    ids = [inv.id for inv in rows]
    sendings = selectors.sendings_get(invocation_ids=ids)
    heads = selectors.payload_heads(invocation_ids=ids, sendings=sendings)
    out = []
    for inv in rows:
        sending = sendings.get(inv.id)
        head = heads.get(inv.id)
        sender_target = inv.invoked_by_target or (
            f"{sending.caller_service}/{sending.caller_handler}" if sending is not None else ""
        )
        assert inv.scheduled_start_at is not None  # the page lists only messages with a fire time
        sender_id = inv.parent_id or (sending.caller_id if sending else None)
        journal_index = sending.journal_index if sending else None
        out.append(
            DelayedRow(
                inv=inv,
                fire_at=inv.scheduled_start_at,
                # Restate's scheduled_at is when the send was made; the journal entry says the same.
                sent_at=inv.scheduled_at or (sending.sent_at if sending else None) or inv.created_at,
                sender_id=sender_id,
                sender_target=sender_target,
                journal_index=journal_index,
                payload=_payload(head),
                payload_source=head.source if head else "",
                fire_iso=iso_utc(inv.scheduled_start_at),
                fire_text=utc_text(inv.scheduled_start_at),
                fire_title=utc_text(inv.scheduled_start_at, "%Y-%m-%d %H:%M:%S.%f")[:-3],
                href=_url(detail, inv.id),
                sender_href=(
                    _url(detail, sender_id) + (f"#journal-{journal_index}" if journal_index is not None else "")
                    if sender_id
                    else ""
                ),
                cancel_href=_url(cancel, inv.id),
            )
        )
    return out


def _chart_bars(chart: FireChart, filters: DelayedFilters) -> list[ChartBar]:
    return [
        ChartBar(
            bar=bar,
            query=filters.query_string(fires_after=iso_utc(bar.start), fires_before=iso_utc(bar.end)),
            selected=filters.fires_after == bar.start and filters.fires_before == bar.end,
            start_iso=iso_utc(bar.start),
            end_iso=iso_utc(bar.end),
            title=f"{utc_text(bar.start, '%a %H:%M')}\u2013{utc_text(bar.end, '%H:%M')} UTC",
        )
        for bar in chart.bars
    ]


def delayed_context(*, filters: DelayedFilters, now: datetime | None = None) -> dict[str, Any]:
    now = now or timezone.now()
    page = selectors.delayed_page(filters=filters.invocation_filters(), after=filters.after)
    chart_range = filters.chart_range
    unwindowed = filters.invocation_filters(with_window=False)
    counts = selectors.delayed_fire_counts(
        filters=unwindowed,
        start=bucket_floor(now, chart_range.bucket),
        bucket=chart_range.bucket,
        buckets=chart_range.buckets,
    )
    chart = fire_chart(chart=chart_range, now=now, counts=counts.buckets)
    list_filters = filters.invocation_filters()
    # The page's total is the chart's pass when no window narrows the list; with one,
    # the window's own count (a range of the same index). Either says "more than" past the cap.
    if filters.has_window:
        matching = selectors.delayed_count(list_filters)
        capped = matching > selectors.COUNT_CAP
    else:
        matching, capped = counts.total, counts.capped
    return {
        "filters": filters,
        "rows": delayed_rows(page.rows),
        "page": page,
        "matching": matching,
        "matching_capped": capped,
        "count_cap": selectors.COUNT_CAP,
        "counts": counts,
        "chart": chart,
        "bars": _chart_bars(chart, filters),
        "ranges": [
            (r.name, r.label, filters.query_string(chart=None if r.name == DEFAULT_RANGE else r.name))
            for r in RANGES.values()
        ],
        "now": now,
        # The socket follows the same filter, range and page as what it updates.
        "live_query": filters.query_string(after=filters.after.encode() if filters.after else None),
        "next_query": filters.query_string(after=page.next_cursor.encode()) if page.next_cursor else "",
        "first_query": filters.query_string(),
        "unwindowed_query": filters.query_string(fires_after=None, fires_before=None),
        # The same set as a list filter: the list page's link and the bulk job's filter.
        "list_query": list_filters.query_string(),
    }
