"""The invocation list page as the template needs it: one page of rows, the
status and outcome chips (counts under the other filters, each toggling its
value), the sort links, the next-page link and the live subscription's query."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from invocations.mirror.status import InvocationStatus, Outcome
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
        # Counted by a second request (outcome_context): see there why.
        "outcome_chips": outcome_chips(filters, counts=None),
        "outcome_query": filters.query_string(partial="outcomes"),
        "total": sum(counts.values()),
        "count_cap": f"{selectors.STATUS_COUNT_CAP:,}",
        "total_capped": any(n > selectors.STATUS_COUNT_CAP for n in counts.values()),
        "sorts": [(key, label, filters.query_string(sort=key)) for key, (label, _f, _d) in SORTS.items()],
        "next_query": filters.query_string(after=page.next_cursor.encode()) if page.next_cursor else "",
        # The socket counts what arrived after the newest row this page rendered.
        "live_query": filters.query_string(since=_newest(page)),
    }


def outcome_chips(filters: InvocationFilters, *, counts: dict[str, int] | None) -> list[dict[str, Any]]:
    """One chip per outcome, toggling it in the current selection; count None: not counted yet."""
    return [
        {
            "outcome": outcome,
            "count": None if counts is None else counts.get(outcome, 0),
            "capped": counts is not None and counts.get(outcome, 0) > selectors.STATUS_COUNT_CAP,
            "active": outcome in filters.outcomes,
            "query": filters.query_string(outcome=sorted(set(filters.outcomes) ^ {outcome})),
        }
        for outcome in Outcome.values
    ]


def outcome_context(*, filters: InvocationFilters) -> dict[str, Any]:
    """The outcome chips with their counts, which the page fetches after it has loaded.
    No index covers the outcome yet, so a rare one (killed) is a sequential scan:
    0.45 s at 1M invocations (0.8 s under a service filter), against 20 ms for the
    whole first page; asked for separately, it never holds the page up."""
    return {
        "filters": filters,
        "outcome_chips": outcome_chips(filters, counts=selectors.invocation_outcome_counts(filters=filters)),
        "count_cap": f"{selectors.STATUS_COUNT_CAP:,}",
    }
