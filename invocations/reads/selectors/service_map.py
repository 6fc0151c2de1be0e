"""The service map's data: which handler called or sent to which in a time
window, with per-handler error rate and p50/p95 duration, read from PostgreSQL
with two aggregate queries (never a row per invocation: the window can hold
millions). The drawing is `graph.layout` (pure) joined in `presenters.service_map`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlencode

from django.db import connection
from django.db.models import Aggregate, Count, DurationField, F, Max, Q
from django.urls import reverse

from invocations.mirror.models import EdgeKind, Invocation, InvocationEdge
from invocations.reads.presenters.formatting import iso_utc

TIMES = "\N{MULTIPLICATION SIGN}"  # edge labels read "call <times>12"; named so no one mistakes it for an x
INGRESS = "ingress"  # the pseudo-node (and edge kind) for invocations sent from outside Restate
KIND_LABELS = {EdgeKind.CALL: "call", EdgeKind.SEND: "send", EdgeKind.DELAYED_SEND: "delayed", INGRESS: ""}


# ---------------------------------------------------------------- data


class PercentileCont(Aggregate):
    """PostgreSQL's `percentile_cont(f) WITHIN GROUP (ORDER BY expr)`: interpolated, like the docs' p50/p95.

    Django's Aggregate appends `FILTER (WHERE ...)` to this template when `filter=` is given.
    """

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = DurationField()  # percentile_cont over an interval is an interval

    def __init__(self, expression: F | object, fraction: float, **extra: object) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError("a percentile fraction is between 0 and 1")
        # A float we produce, formatted into SQL: never user input.
        super().__init__(expression, fraction=repr(float(fraction)), **extra)


@dataclass(frozen=True)
class HandlerStats:
    invocations: int = 0
    completed: int = 0
    failed: int = 0  # completion_result = 'failure' (terminal errors, cancellations, kills)
    from_ingress: int = 0  # invoked_by = 'ingress' and no parent
    p50: timedelta | None = None  # over completed invocations: completed_at - created_at
    p95: timedelta | None = None

    @property
    def error_rate(self) -> float | None:
        """Failed among those that finished: a running invocation has no outcome yet."""
        return self.failed / self.completed if self.completed else None

    @property
    def error_label(self) -> str:
        rate = self.error_rate
        if rate is None:
            return ""
        # Never round a handful of failures down to a reassuring "0%".
        if 0 < rate < 0.001:
            return "<0.1%"
        return f"{rate * 100:.0f}%" if rate == 0 or rate >= 0.1 else f"{rate * 100:.1f}%"


@dataclass(frozen=True)
class MapNode:
    id: str  # "Service/handler", or "ingress"
    service: str
    handler: str
    service_type: str
    stats: HandlerStats
    href: str

    @property
    def is_ingress(self) -> bool:
        return self.id == INGRESS


@dataclass(frozen=True)
class MapEdge:
    source: str  # node ids
    target: str
    kind: str  # call, send, delayed_send, or ingress
    count: int
    href: str

    @property
    def label(self) -> str:
        kind = KIND_LABELS.get(self.kind, self.kind)
        return f"{kind} {TIMES}{self.count}".strip()


@dataclass(frozen=True)
class ServiceMap:
    since: datetime
    now: datetime
    nodes: list[MapNode]
    edges: list[MapEdge]

    @property
    def total_invocations(self) -> int:
        return sum(n.stats.invocations for n in self.nodes)


def _list_url(**params: str) -> str:
    return f"{reverse('invocations:list')}?{urlencode(params)}"


def service_map_get(*, window: timedelta, now: datetime) -> ServiceMap:
    """Handlers active since `now - window` and who called/sent to whom.

    Invocations are in the window by `created_at`, edges by their journal time;
    there is no upper bound, so the links to the list (which only take
    `created_after`) show exactly what was counted, and rows created a moment
    after `now` are not lost to clock skew between Restate and us.
    """
    since = now - window
    # Full precision: the list must count exactly the rows the map counted.
    after = iso_utc(since)
    duration = F("completed_at") - F("created_at")
    done = Q(completed_at__isnull=False)
    # One GROUP BY over the window (inv_target_created_idx / inv_created_idx): counts and percentiles together.
    rows = (
        Invocation.objects.filter(created_at__gte=since)
        .values("service_name", "handler_name")
        .annotate(
            service_type=Max("service_type"),
            invocations=Count("id"),
            completed=Count("id", filter=done),
            failed=Count("id", filter=Q(completion_result="failure")),
            from_ingress=Count("id", filter=Q(invoked_by="ingress", parent__isnull=True)),
            p50=PercentileCont(duration, 0.5, filter=done),
            p95=PercentileCont(duration, 0.95, filter=done),
        )
        .order_by()
    )
    stats: dict[str, HandlerStats] = {}
    types: dict[str, str] = {}
    for row in rows:
        key = f"{row['service_name']}/{row['handler_name']}"
        types[key] = row["service_type"]
        stats[key] = HandlerStats(
            invocations=row["invocations"],
            completed=row["completed"],
            failed=row["failed"],
            from_ingress=row["from_ingress"],
            p50=row["p50"],
            p95=row["p95"],
        )

    # The caller's handler lives on its invocation row, so edges are joined to it (by primary key).
    # Edges in the window by their own time: edge_created_idx.
    edge_table, inv_table = InvocationEdge._meta.db_table, Invocation._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT c.service_name, c.handler_name, e.target_service, e.target_handler, e.kind, count(*)
              FROM {edge_table} e JOIN {inv_table} c ON c.id = e.caller_id
             WHERE e.created_at >= %s
             GROUP BY 1, 2, 3, 4, 5
            """,
            [since],
        )
        edge_rows = cursor.fetchall()

    names: dict[str, tuple[str, str]] = {}
    for key in stats:
        service, _, handler = key.partition("/")
        names[key] = (service, handler)
    edges: list[MapEdge] = []
    for caller_s, caller_h, callee_s, callee_h, kind, count in edge_rows:
        source, target = f"{caller_s}/{caller_h}", f"{callee_s}/{callee_h}"
        names.setdefault(source, (caller_s, caller_h))
        names.setdefault(target, (callee_s, callee_h))
        href = _list_url(
            service=callee_s,
            handler=callee_h,
            caller_service=caller_s,
            caller_handler=caller_h,
            kind=kind,
            created_after=after,
        )
        edges.append(MapEdge(source, target, kind, count, href))

    # Ingress: no journal entry of ours records it, so it is counted from the callee rows.
    ingress_total = 0
    for key, s in stats.items():
        if s.from_ingress:
            ingress_total += s.from_ingress
            service, handler = names[key]
            href = _list_url(service=service, handler=handler, roots="1", created_after=after)
            edges.append(MapEdge(INGRESS, key, INGRESS, s.from_ingress, href))

    nodes = [
        MapNode(
            id=key,
            service=service,
            handler=handler,
            service_type=types.get(key, ""),
            stats=stats.get(key, HandlerStats()),
            href=_list_url(service=service, handler=handler, created_after=after),
        )
        for key, (service, handler) in sorted(names.items())
    ]
    if ingress_total:
        nodes.insert(
            0,
            MapNode(
                id=INGRESS,
                service="",
                handler="",
                service_type="",
                stats=HandlerStats(invocations=ingress_total),
                href=_list_url(roots="1", created_after=after),
            ),
        )
    edges.sort(key=lambda e: (e.source, e.target, e.kind))
    return ServiceMap(since=since, now=now, nodes=nodes, edges=edges)
