"""Reads for /delayed/: the pending delayed messages in fire order, how many fire in each
bucket of the chart, and for the rows shown, the journal entry that sent each one and a
bounded head of its payload.

A pending delayed message is a scheduled invocation that Restate still holds: status
`scheduled` (until its fire time; then `running`, and it leaves the agenda) and not
marked gone. Its fire time is Restate's `scheduled_start_at`, the same instant as the
sender's `OneWayCall.invoke_time` (verified on restate-server 1.7.12: both say
...:30.928 for a send made at ...:30.929). Cancelling it before it fires makes Restate
drop it at once (200, no row left, /output 404): our copy then marks it gone.

Every query here reads `inv_delayed_fire_idx` (a partial index of exactly these rows,
ordered by fire time, with the target and sender columns included): the list's page is
a keyset range on it, the chart one grouped scan of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import F, Func, Q, QuerySet, TextField, Value
from django.db.models.lookups import GreaterThan

from invocations.mirror.models import EdgeKind, Invocation, InvocationEdge, JournalEntry
from invocations.mirror.status import InvocationStatus
from invocations.reads.filters import InvocationFilters
from invocations.reads.selectors.invocations import STATUS_COUNT_CAP, Cursor

PAGE_SIZE = 50
# Bytes of a payload read from the database for a row: the page shows a bounded head,
# and a megabyte payload (a JSON array of byte values in entry_json) never leaves PostgreSQL whole.
PAYLOAD_HEAD = 2048

# Where the payload of a delayed message is in Restate's entry_json (1.7.12, journal v2):
# the sender's `OneWayCall` carries it as `request.parameter`, and the scheduled
# invocation's own Input (which Restate holds before it fires) as `payload`.
_SENT_PARAMETER = "{Command,OneWayCall,request,parameter}"
_INPUT_PAYLOAD = "{Command,Input,payload}"
_SENT_PATH = "$.Command.OneWayCall.request.parameter"
_INPUT_PATH = "$.Command.Input.payload"


def pending_delayed(filters: InvocationFilters) -> QuerySet[Invocation]:
    """The pending delayed messages under `filters` (their status filter is replaced by `scheduled`)."""
    return Invocation.objects.filter(
        filters.q(include_status=False),
        status=InvocationStatus.SCHEDULED,
        gone_from_restate_at__isnull=True,
    )


@dataclass(frozen=True)
class DelayedPage:
    rows: list[Invocation]
    next_cursor: Cursor | None


# The columns a row shows: the rest of a wide row is left in the heap.
_ROW_FIELDS = (
    "id",
    "target",
    "service_name",
    "service_key",
    "handler_name",
    "service_type",
    "status",
    "parent_id",
    "invoked_by",
    "invoked_by_target",
    "idempotency_key",
    "created_at",
    "scheduled_at",
    "scheduled_start_at",
    "gone_from_restate_at",
)


def delayed_page(*, filters: InvocationFilters, after: Cursor | None = None, limit: int = PAGE_SIZE) -> DelayedPage:
    """One page in fire order (soonest first), keyset-paged on (scheduled_start_at, id):
    a deep page costs what the first does. The page's ids come from the fire-time index
    alone, its rows by id after: PostgreSQL multiplies the fire-time conditions by
    `status = 'scheduled'` as if they were unrelated, estimates a few hundred of 100,000
    rows, and for whole rows it then preferred reading them all and sorting (177 ms for
    a deep page, 67 ms for a sender's first page); an id-only scan in index order wins
    whatever it estimates (0.1 ms)."""
    qs = pending_delayed(filters)
    if after is None:
        qs = qs.filter(scheduled_start_at__isnull=False)
    else:
        # A row comparison, which the index takes as its range (the list's OR form it does not).
        qs = qs.filter(
            GreaterThan(
                Func(F("scheduled_start_at"), F("id"), function="ROW", output_field=TextField()),
                Func(Value(after.value), Value(after.id), function="ROW", output_field=TextField()),
            )
        )
    ids = list(qs.order_by("scheduled_start_at", "id").values_list("id", flat=True)[: limit + 1])
    by_id = Invocation.objects.only(*_ROW_FIELDS).in_bulk(ids)
    rows = [by_id[i] for i in ids if i in by_id]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        assert last.scheduled_start_at is not None
        next_cursor = Cursor(last.scheduled_start_at, last.id)
    return DelayedPage(rows, next_cursor)


# Counts past the chart's window (and the page's total with a window) stop here and say
# "more than", as the list's chips do: each is then a bounded range of the index.
COUNT_CAP = STATUS_COUNT_CAP


@dataclass(frozen=True)
class FireCounts:
    """How many pending messages fire in each bucket of [start, end), and around it."""

    buckets: dict[datetime, int]  # exact
    before: int  # due before the chart's first bucket and not started yet (as far as our copy knows)
    after: int  # later than the chart
    unknown: int  # no fire time in our copy
    # Each of before/after/unknown counts up to COUNT_CAP + 1: past the cap it means "more than".
    capped: bool = False

    @property
    def total(self) -> int:
        return sum(self.buckets.values()) + self.before + self.after + self.unknown


def delayed_fire_counts(*, filters: InvocationFilters, start: datetime, bucket: timedelta, buckets: int) -> FireCounts:
    """The chart's counts in one statement: per bucket, a range count of the fire-time
    index (an index-only scan of the bucket's rows, without a grouping function over
    every row: 22 ms where `GROUP BY date_bin(...)` took 39 ms for a week of 107,000),
    and the ones before, after and without a fire time, each capped at COUNT_CAP + 1."""
    end = start + bucket * buckets
    where, params = _where_sql(pending_delayed(filters))
    table = Invocation._meta.db_table
    capped = f"(SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {where} AND {{cond}} LIMIT {COUNT_CAP + 1}) AS c)"
    args: list[Any] = [*params, bucket, start, end - bucket, bucket, *params, start, *params, end, *params]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT '', b.at, (SELECT count(*) FROM {table} WHERE {where} "
            "AND scheduled_start_at >= b.at AND scheduled_start_at < b.at + %s) "
            "FROM generate_series(%s::timestamptz, %s::timestamptz, %s) AS b(at) "
            f"UNION ALL SELECT 'before', NULL, {capped.format(cond='scheduled_start_at < %s')} "
            f"UNION ALL SELECT 'after', NULL, {capped.format(cond='scheduled_start_at >= %s')} "
            f"UNION ALL SELECT 'unknown', NULL, {capped.format(cond='scheduled_start_at IS NULL')}",
            args,
        )
        rows = cursor.fetchall()
    counts: dict[datetime, int] = {}
    around = {"before": 0, "after": 0, "unknown": 0}
    for kind, at, n in rows:
        if kind:
            around[kind] = n
        else:
            counts[at] = n
    return FireCounts(buckets=counts, capped=any(n > COUNT_CAP for n in around.values()), **around)


def delayed_count(filters: InvocationFilters) -> int:
    """Pending messages under `filters`, counted up to COUNT_CAP + 1."""
    return pending_delayed(filters)[: COUNT_CAP + 1].count()


def _where_sql(qs: QuerySet[Invocation]) -> tuple[str, list[Any]]:
    """The WHERE clause of a queryset over the invocation table, as SQL and parameters
    (the chart's statement puts it in correlated subqueries the ORM cannot express)."""
    query = qs.query
    sql, params = query.get_compiler(connection=connection).compile(query.where)
    return sql, list(params)


# ---------------------------------------------------------------- what sent them


@dataclass(frozen=True)
class Sending:
    """The sender's journal entry of one delayed message (our edge, from its OneWayCall)."""

    caller_id: str
    journal_index: int
    caller_service: str
    caller_handler: str
    sent_at: datetime | None  # the entry's appended_at
    fire_at: datetime | None  # its invoke_time


def sendings_get(*, invocation_ids: Iterable[str]) -> dict[str, Sending]:
    """The delayed-send edge that created each of these invocations (by the callee index);
    absent for a delayed send through the ingress, or a sender whose journal we have not read."""
    # Tuples, not model instances: building 50 edge objects was a tenth of the page's reads.
    edges = InvocationEdge.objects.filter(callee_id__in=list(invocation_ids), kind=EdgeKind.DELAYED_SEND).values_list(
        "callee_id", "caller_id", "journal_index", "caller_service", "caller_handler", "created_at", "fire_at"
    )
    return {
        callee: Sending(caller, index, service, handler, sent_at, fire_at)
        for callee, caller, index, service, handler, sent_at, fire_at in edges
        if callee is not None
    }


@dataclass(frozen=True)
class PayloadHead:
    """The first PAYLOAD_HEAD bytes of a payload (as Restate's list of byte values) and its full size."""

    head: list[int]
    size: int
    source: str  # "sent": the sender's OneWayCall; "input": the message's own Input entry


def payload_heads(*, invocation_ids: list[str], sendings: dict[str, Sending]) -> dict[str, PayloadHead]:
    """For each message, the head of its payload: from the sending entry when we hold it,
    else from the message's own Input entry (a send through the ingress has only that).
    Cut inside PostgreSQL (jsonb path slice), so only PAYLOAD_HEAD values per row travel."""
    if not invocation_ids:
        return {}
    sent = [(inv, s.caller_id, s.journal_index) for inv, s in sendings.items()]
    table = JournalEntry._meta.db_table
    found: dict[str, PayloadHead] = {}
    with connection.cursor() as cursor:
        if sent:
            cursor.execute(
                f"SELECT m.message_id, {_head_sql('j.entry', _SENT_PARAMETER, _SENT_PATH)}, "
                f"jsonb_array_length(j.entry #> '{_SENT_PARAMETER}') "
                f"FROM unnest(%s::text[], %s::text[], %s::int[]) AS m(message_id, caller_id, idx) "
                f"JOIN {table} j ON j.invocation_id = m.caller_id AND j.index = m.idx "
                f"WHERE jsonb_typeof(j.entry #> '{_SENT_PARAMETER}') = 'array'",
                [[m for m, _, _ in sent], [c for _, c, _ in sent], [i for _, _, i in sent]],
            )
            for message_id, head, size in cursor.fetchall():
                found[message_id] = PayloadHead(_ints(head), size, "sent")
        missing = [i for i in invocation_ids if i not in found]
        if missing:
            cursor.execute(
                f"SELECT invocation_id, {_head_sql('entry', _INPUT_PAYLOAD, _INPUT_PATH)}, "
                f"jsonb_array_length(entry #> '{_INPUT_PAYLOAD}') FROM {table} "
                f"WHERE invocation_id = ANY(%s) AND index = 0 AND jsonb_typeof(entry #> '{_INPUT_PAYLOAD}') = 'array'",
                [missing],
            )
            for message_id, head, size in cursor.fetchall():
                found[message_id] = PayloadHead(_ints(head), size, "input")
    return found


def _head_sql(column: str, path: str, jsonpath: str) -> str:
    """The first PAYLOAD_HEAD values of the array at `path`: a jsonpath slice past the
    array's end yields nothing at all, so a short array is taken whole."""
    return (
        f"CASE WHEN jsonb_array_length({column} #> '{path}') <= {PAYLOAD_HEAD} THEN {column} #> '{path}' "
        f"ELSE jsonb_path_query_array({column}, '{jsonpath}[0 to {PAYLOAD_HEAD - 1}]') END"
    )


def _ints(value: object) -> list[int]:
    # Django's PostgreSQL backend hands jsonb back as text (its JSONField decodes it itself).
    if isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int)]
    return []


def delayed_ids_among(ids: Iterable[str]) -> bool:
    """Whether any of these invocations (what a sync step changed) is or was a delayed
    message: Restate keeps `scheduled_at` once it fired, and our copy keeps it once it is gone."""
    wanted = list(ids)
    if not wanted:
        return False
    return Invocation.objects.filter(
        Q(status=InvocationStatus.SCHEDULED) | Q(scheduled_at__isnull=False) | Q(scheduled_start_at__isnull=False),
        id__in=wanted,
    ).exists()
