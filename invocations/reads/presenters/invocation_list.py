"""The invocation list page as the template needs it: one page of rows, the
status chips (counts under the other filters, each toggling its status), the
sort links, the next-page link and the live subscription's query."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from invocations.mirror.status import InvocationStatus
from invocations.reads.filters import SORTS, InvocationFilters
from invocations.reads.selectors import invocations as selectors


class BadPageLink(ValueError):
    """An `after=` cursor we did not produce."""


def _newest(page: selectors.InvocationPage) -> str:
    newest = max((inv.created_at for inv in page.rows), default=None)
    return newest.isoformat() if newest else datetime.now(UTC).isoformat()


def list_context(*, filters: InvocationFilters, after_raw: str | None) -> dict[str, Any]:
    after = None
    if after_raw:
        try:
            after = selectors.Cursor.decode(after_raw, duration=SORTS[filters.sort][1] == "duration")
        except selectors.BadCursor as exc:
            raise BadPageLink(str(exc)) from None
    page = selectors.invocation_list(filters=filters, after=after)
    counts = selectors.invocation_status_counts(filters=filters)
    chips = [
        {
            "status": status,
            "count": counts.get(status, 0),
            "capped": counts.get(status, 0) > selectors.STATUS_COUNT_CAP,
            "active": status in filters.statuses,
            # A chip toggles its status in the current selection.
            "query": filters.query_string(status=sorted(set(filters.statuses) ^ {status})),
        }
        for status in InvocationStatus.values
    ]
    return {
        "filters": filters,
        "page": page,
        "chips": chips,
        "total": sum(counts.values()),
        "count_cap": f"{selectors.STATUS_COUNT_CAP:,}",
        "total_capped": any(n > selectors.STATUS_COUNT_CAP for n in counts.values()),
        "sorts": [(key, label, filters.query_string(sort=key)) for key, (label, _f, _d) in SORTS.items()],
        "next_query": filters.query_string(after=page.next_cursor.encode()) if page.next_cursor else "",
        # The socket counts what arrived after the newest row this page rendered.
        "live_query": filters.query_string(since=_newest(page)),
    }
