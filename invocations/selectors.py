"""Reads for pages. Views call these; nothing here writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from django.db.models import Q, QuerySet

from invocations.models import Invocation, SyncState

PAGE_SIZE = 50


class BadCursor(ValueError):
    """A pagination cursor from a URL that we did not produce."""


@dataclass(frozen=True)
class Cursor:
    """Keyset position: the (created_at, id) of the last row shown."""

    created_at: datetime
    id: str

    def encode(self) -> str:
        # UTC with a Z: no "+" that a hand-copied URL would turn into a space.
        return f"{self.created_at.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}~{self.id}"

    @classmethod
    def decode(cls, raw: str) -> Cursor:
        created, sep, inv_id = raw.partition("~")
        if not sep or not inv_id:
            raise BadCursor(f"cursor {raw!r} is not of the form <timestamp>~<invocation id>")
        try:
            created_at = datetime.fromisoformat(created)
        except ValueError:
            raise BadCursor(f"cursor timestamp {created!r} is not an ISO-8601 time") from None
        if created_at.tzinfo is None:
            raise BadCursor("cursor timestamp has no time zone")
        return cls(created_at, inv_id)


@dataclass(frozen=True)
class InvocationPage:
    rows: list[Invocation]
    next_cursor: Cursor | None


def invocation_list(*, after: Cursor | None = None, limit: int = PAGE_SIZE) -> InvocationPage:
    """Newest first, keyset-paged on (created_at, id) so the last page costs what the first does."""
    qs: QuerySet[Invocation] = Invocation.objects.order_by("-created_at", "-id")
    if after is not None:
        qs = qs.filter(Q(created_at__lt=after.created_at) | Q(created_at=after.created_at, id__lt=after.id))
    rows = list(qs[: limit + 1])
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = Cursor(rows[-1].created_at, rows[-1].id)
    return InvocationPage(rows, next_cursor)


def sync_state_get() -> SyncState:
    return SyncState.load()
