"""Reads for pages. Views call these; nothing here writes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db.models import BooleanField, Case, DurationField, ExpressionWrapper, F, Q, QuerySet, Value, When

from invocations.mirror.models import Invocation
from invocations.mirror.status import InvocationStatus
from invocations.reads.filters import EARLIEST, LATEST, OUTCOME_Q, SORTS, InvocationFilters

PAGE_SIZE = 50
# The same expression as the inv_duration_idx index, so PostgreSQL can use it.
DURATION = ExpressionWrapper(F("completed_at") - F("created_at"), output_field=DurationField())


# Invocation.id's max_length; longer cannot be a row of ours.
CURSOR_ID_MAX = 100
# 100 years: more than any invocation runs, far below timedelta's limit.
CURSOR_DURATION_MAX_S = 100 * 365 * 86400


class BadCursor(ValueError):
    """A pagination cursor from a URL that we did not produce."""


@dataclass(frozen=True)
class Cursor:
    """Keyset position: the sort value and id of the last row shown."""

    value: datetime | timedelta
    id: str

    def encode(self) -> str:
        if isinstance(self.value, timedelta):
            text = f"{self.value.total_seconds():.6f}s"
        else:
            # UTC with a Z: no "+" that a hand-copied URL would turn into a space.
            text = self.value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return f"{text}~{self.id}"

    @classmethod
    def decode(cls, raw: str, *, duration: bool = False) -> Cursor:
        value, sep, inv_id = raw.partition("~")
        if not sep or not inv_id:
            raise BadCursor(f"cursor {raw!r} is not of the form <position>~<invocation id>")
        # Not INVOCATION_ID_RE: the cursor holds whatever id the last row had, and our copy
        # keeps Restate's strings as they are. PostgreSQL only refuses NUL; the rest is
        # too long or control characters, which no id we produced has.
        if len(inv_id) > CURSOR_ID_MAX or any(ord(c) < 32 or ord(c) == 127 for c in inv_id):
            raise BadCursor("cursor id has control characters or is too long to be an invocation id")
        if duration:
            try:
                seconds = float(value.removesuffix("s"))
            except ValueError:
                raise BadCursor(f"cursor duration {value!r} is not a number of seconds") from None
            # inf, nan and 1e300 parse as floats but are no timedelta.
            if not math.isfinite(seconds) or abs(seconds) > CURSOR_DURATION_MAX_S:
                raise BadCursor(f"cursor duration {value!r} is out of range")
            return cls(timedelta(seconds=seconds), inv_id)
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise BadCursor(f"cursor timestamp {value!r} is not an ISO-8601 time") from None
        if parsed.tzinfo is None:
            raise BadCursor("cursor timestamp has no time zone")
        if not EARLIEST <= parsed < LATEST:
            raise BadCursor(f"cursor timestamp {value!r} is out of range")
        return cls(parsed, inv_id)


@dataclass(frozen=True)
class InvocationPage:
    rows: list[Invocation]
    next_cursor: Cursor | None


def _sorted(filters: InvocationFilters) -> tuple[QuerySet[Invocation], str, bool]:
    _label, field, descending = SORTS[filters.sort]
    qs = Invocation.objects.filter(filters.q())
    if field == "duration":
        # Only a completed invocation has a duration that does not change under the cursor.
        qs = qs.filter(completed_at__isnull=False).annotate(duration_value=DURATION)
        field = "duration_value"
    prefix = "-" if descending else ""
    return qs.order_by(f"{prefix}{field}", f"{prefix}id"), field, descending


def invocation_list(
    *, filters: InvocationFilters | None = None, after: Cursor | None = None, limit: int = PAGE_SIZE
) -> InvocationPage:
    """One page in the chosen order, keyset-paged on (sort value, id) so the last
    page costs what the first does."""
    filters = filters or InvocationFilters()
    qs, field, descending = _sorted(filters)
    if after is not None:
        op = "lt" if descending else "gt"
        # The plain range first lets PostgreSQL start the index scan at the cursor;
        # with only the OR it scanned from the top and filtered (250 ms deep in 1M rows).
        qs = qs.filter(**{f"{field}__{op}e": after.value}).filter(
            Q(**{f"{field}__{op}": after.value}) | Q(**{field: after.value, f"id__{op}": after.id})
        )
    rows = list(qs[: limit + 1])
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = Cursor(getattr(last, field), last.id)
    return InvocationPage(rows, next_cursor)


# Chips count up to this and then say "10,000+": an exact GROUP BY over a million rows
# was 80% of the list page's time, and past this nobody reads the exact number.
STATUS_COUNT_CAP = 10_000


def invocation_status_counts(*, filters: InvocationFilters) -> dict[str, int]:
    """Counts per status under every filter but the status one (the chips), capped at
    STATUS_COUNT_CAP + 1 so each is a bounded index range scan."""
    base = Invocation.objects.filter(filters.q(include_status=False))
    return {status: base.filter(status=status)[: STATUS_COUNT_CAP + 1].count() for status in InvocationStatus.values}


def invocation_outcome_counts(*, filters: InvocationFilters) -> dict[str, int]:
    """Counts per outcome under every filter but the outcome one, capped like the status chips.
    No index covers completion_result: a rare outcome (killed) scans until the cap or the end."""
    base = Invocation.objects.filter(filters.q(include_outcome=False))
    return {outcome: base.filter(q)[: STATUS_COUNT_CAP + 1].count() for outcome, q in OUTCOME_Q.items()}


# The "N new invocations" banner counts this far, then says "100+": the reader
# only needs to know that reloading is worth it, and a bounded count stays cheap.
NEW_COUNT_CAP = 100


def invocation_new_ids(
    *, filters: InvocationFilters, since: datetime, among: list[str] | None = None, limit: int = NEW_COUNT_CAP + 1
) -> set[str]:
    """Ids (at most `limit`) of invocations matching `filters` created after `since`
    (the newest row a page shows), optionally only among `among` (what a sync step changed)."""
    rows = Invocation.objects.filter(filters.q(), created_at__gt=since)
    if among is not None:
        rows = rows.filter(id__in=among)
    return set(rows.values_list("id", flat=True)[:limit])


def invocations_among(*, filters: InvocationFilters, ids: list[str]) -> list[tuple[Invocation, bool]]:
    """The invocations of `ids` (rows a page shows), each with whether it still matches `filters`."""
    rows = Invocation.objects.filter(id__in=ids)
    where = filters.q()
    if not where:  # When() refuses an empty condition; no filter matches everything
        return [(inv, True) for inv in rows]
    matched = rows.annotate(
        matches=Case(When(where, then=Value(True)), default=Value(False), output_field=BooleanField())
    )
    return [(inv, inv.matches) for inv in matched]
