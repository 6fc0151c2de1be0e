"""Reads of the trace spans Restate exported (kept for SPANS_KEEP_S, at most SPANS_MAX_ROWS):
the attempts of many invocations at once, for the waterfall's rows and the detail page."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Count, F, Window
from django.db.models.functions import RowNumber

from invocations.graph.attempts import MAX_ATTEMPTS
from invocations.mirror.models import InvocationSpan, SpanKind

# One `IN` list per query: the waterfall draws at most trees.ROW_CAP rows (2,000), plus
# the rows a reader's "show more" expansions add.
MAX_IDS = 25_000


@dataclass(frozen=True, slots=True)
class AttemptSpan:
    started_at: datetime
    ended_at: datetime
    failed: bool
    message: str
    deployment_id: str
    deployment_address: str


@dataclass(slots=True)
class InvocationSpans:
    attempts: list[AttemptSpan] = field(default_factory=list)  # the first MAX_ATTEMPTS, in start order
    more: int = 0  # attempt spans beyond those
    other_kinds: set[str] = field(default_factory=set)  # start / end / ingress spans held


def attempt_spans(invocation_ids: Collection[str], *, cap: int = MAX_ATTEMPTS) -> dict[str, InvocationSpans]:
    """The attempt spans we keep for each invocation, the first `cap` of each, in one query
    (an invocation that retried thousands of times must not make the page draw them all).
    Invocations without any span are absent from the answer."""
    ids = list(dict.fromkeys(invocation_ids))[:MAX_IDS]
    if not ids:
        return {}
    partition = [F("invocation_id"), F("kind")]
    rows = (
        InvocationSpan.objects.filter(invocation_id__in=ids)
        .annotate(
            n=Window(RowNumber(), partition_by=partition, order_by=[F("started_at").asc(), F("id").asc()]),
            total=Window(Count("id"), partition_by=partition),
        )
        .filter(n__lte=cap)
        .order_by("invocation_id", "kind", "n")
        .values_list(
            "invocation_id",
            "kind",
            "started_at",
            "ended_at",
            "status",
            "status_message",
            "deployment_id",
            "deployment_address",
            "total",
        )
    )
    out: dict[str, InvocationSpans] = {}
    for inv_id, kind, started, ended, status, message, dep_id, dep_address, total in rows:
        spans = out.setdefault(inv_id, InvocationSpans())
        if kind != SpanKind.ATTEMPT:
            spans.other_kinds.add(kind)
            continue
        spans.attempts.append(
            AttemptSpan(
                started_at=started,
                ended_at=ended,
                failed=status == InvocationSpan.Status.ERROR,
                message=message,
                deployment_id=dep_id,
                deployment_address=dep_address,
            )
        )
        spans.more = max(total - cap, 0)
    return out
