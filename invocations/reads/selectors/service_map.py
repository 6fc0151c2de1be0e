"""The service map's data: which handler called or sent to which in a time
window, with per-handler counts, error rate and p50/p95 duration.

Counts are sums of the hourly rollups (`invocations.mirror.rollups`: at most 168
hours of a few dozen handlers and a few hundred handler pairs, however many
invocations the window holds), so a window starts on an hour: `window_start`.
Percentiles come from a bounded sample of the rows themselves. Links, labels and
the drawing are `presenters.service_map`."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Count, Max, Min, Sum

from invocations.mirror import rollups
from invocations.mirror.models import (
    EdgeKind,
    Invocation,
    RollupDirtyHour,
    ServiceMapEdgeHour,
    ServiceMapHour,
    ServiceMapPair,
)

INGRESS = "ingress"  # the source node (and edge kind) for invocations sent from outside Restate
# Edge kinds in the order a label lists them.
KIND_ORDER = (EdgeKind.CALL.value, EdgeKind.SEND.value, EdgeKind.DELAYED_SEND.value, INGRESS)
# Percentiles over the latest this many completed invocations of a handler in the window: an
# exact percentile over a week of a busy handler sorts every duration (5 s of the 7-day map at
# 1M rows); this bounds it at an index range per handler.
PERCENTILE_SAMPLE = 1000


@dataclass(frozen=True)
class HandlerStats:
    invocations: int = 0  # created in the window
    completed: int = 0
    failed: int = 0  # completion_result = 'failure' (terminal errors, cancellations, kills)
    from_ingress: int = 0  # invoked_by = 'ingress' and no parent
    p50: timedelta | None = None  # completed_at - created_at, over `sampled` completed invocations
    p95: timedelta | None = None
    sampled: int = 0  # completed invocations the percentiles are over (the latest PERCENTILE_SAMPLE)

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

    @property
    def percentiles_sampled(self) -> bool:
        return self.sampled < self.completed


@dataclass(frozen=True)
class MapNode:
    id: str  # "Service/handler", or "ingress"
    service: str
    handler: str
    service_type: str
    stats: HandlerStats

    @property
    def is_ingress(self) -> bool:
        return self.id == INGRESS


@dataclass(frozen=True)
class MapEdge:
    """Everything one handler sent to another in the window: one edge per pair, counts per kind."""

    source: str  # node ids
    target: str
    counts: tuple[tuple[str, int], ...]  # (kind, count) in KIND_ORDER, kinds with a count only

    @property
    def total(self) -> int:
        return sum(c for _, c in self.counts)

    @property
    def kind(self) -> str:
        """The kind the line is drawn as: a call if any, else a send, else a delayed send."""
        return self.counts[0][0]

    @property
    def kinds(self) -> list[str]:
        return [k for k, _ in self.counts]


@dataclass(frozen=True)
class ServiceMap:
    since: datetime
    now: datetime
    nodes: list[MapNode]  # the ingress first when there is one, then handlers by name
    edges: list[MapEdge]

    @property
    def handlers(self) -> list[MapNode]:
        return [n for n in self.nodes if not n.is_ingress]

    @property
    def total_invocations(self) -> int:
        """Invocations created in the window, each once (the ingress only says where roots came from)."""
        return sum(n.stats.invocations for n in self.handlers)


def window_start(window: timedelta, now: datetime) -> datetime:
    """Where a window ending `now` starts: the start of the UTC hour `window` before `now`.

    The rollups count whole hours, so "the last hour" at 14:20 is everything created
    since 13:00; the page says so, and its links to the list use this same instant.
    """
    return rollups.hour_of(now - window)


def rollup_generation() -> int:
    """Changes whenever the rollups do (one row by primary key): a map computed at the same
    generation and window start is still exact."""
    return rollups.generation()


@dataclass(frozen=True)
class Pending:
    """Hours of a window whose rows changed since they were last counted."""

    hours: int = 0
    since: datetime | None = None  # when the oldest of them was first marked


def pending_hours(since: datetime) -> Pending:
    row = RollupDirtyHour.objects.filter(hour__gte=rollups.hour_of(since)).aggregate(
        hours=Count("hour"), oldest=Min("marked_at")
    )
    return Pending(row["hours"], row["oldest"])


Percentiles = tuple[timedelta | None, timedelta | None, int]  # p50, p95, completed invocations they are over


def _percentiles(handlers: list[tuple[str, str]], since: datetime) -> dict[tuple[str, str], Percentiles]:
    """p50/p95 per handler over its latest PERCENTILE_SAMPLE completed invocations in the window:
    one backwards range of inv_target_created_idx per handler, however long the window."""
    if not handlers:
        return {}
    inv_table = Invocation._meta.db_table
    values = ", ".join(["(%s, %s)"] * len(handlers))
    params: list[Any] = [v for pair in handlers for v in pair]
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT h.service_name, h.handler_name,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY s.d),
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY s.d),
                   count(*)
              FROM (VALUES {values}) AS h(service_name, handler_name)
              CROSS JOIN LATERAL (
                    SELECT i.completed_at - i.created_at AS d
                      FROM {inv_table} i
                     WHERE i.service_name = h.service_name AND i.handler_name = h.handler_name
                       AND i.created_at >= %s AND i.completed_at IS NOT NULL
                     ORDER BY i.created_at DESC
                     LIMIT %s
                   ) s
             GROUP BY 1, 2
            """,
            [*params, since, PERCENTILE_SAMPLE],
        )
        return {(s, h): (p50, p95, n) for s, h, p50, p95, n in cursor.fetchall()}


def service_map_get(*, window: timedelta, now: datetime) -> ServiceMap:
    """Handlers active since `window_start(window, now)` and who called/sent to whom.

    Invocations are in the window by `created_at`, edges by their journal time, both
    through the hours of the rollups; there is no upper bound, so the links to the list
    (which only take `created_after`) show exactly what was counted, and rows created a
    moment after `now` are not lost to clock skew between Restate and us.
    """
    since = window_start(window, now)
    rows = list(
        ServiceMapHour.objects.filter(hour__gte=since)
        .values("service_name", "handler_name")
        .annotate(
            service_type=Max("service_type"),
            invocations=Sum("invocations"),
            completed=Sum("completed"),
            failed=Sum("failed"),
            from_ingress=Sum("from_ingress"),
        )
        .order_by()
    )
    # Summed by the pair's integer id, then named: a third of the cost of grouping by five names.
    sums = dict(
        ServiceMapEdgeHour.objects.filter(hour__gte=since)
        .values_list("pair_id")
        .annotate(total=Sum("count"))
        .values_list("pair_id", "total")
        .order_by()
    )
    edge_rows = [
        (*names, sums[pair_id])
        for pair_id, *names in ServiceMapPair.objects.filter(id__in=list(sums)).values_list(
            "id", "caller_service", "caller_handler", "callee_service", "callee_handler", "kind"
        )
    ]
    percentiles = _percentiles([(r["service_name"], r["handler_name"]) for r in rows], since)

    names: dict[str, tuple[str, str]] = {}
    stats: dict[str, HandlerStats] = {}
    types: dict[str, str] = {}
    for row in rows:
        service, handler = row["service_name"], row["handler_name"]
        key = f"{service}/{handler}"
        names[key] = (service, handler)
        types[key] = row["service_type"]
        p50, p95, sampled = percentiles.get((service, handler), (None, None, 0))
        stats[key] = HandlerStats(
            invocations=row["invocations"],
            completed=row["completed"],
            failed=row["failed"],
            from_ingress=row["from_ingress"],
            p50=p50,
            p95=p95,
            sampled=sampled,
        )

    pairs: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for caller_s, caller_h, callee_s, callee_h, kind, count in edge_rows:
        source, target = f"{caller_s}/{caller_h}", f"{callee_s}/{callee_h}"
        names.setdefault(source, (caller_s, caller_h))
        names.setdefault(target, (callee_s, callee_h))
        pairs[(source, target)][kind] = count
    # Ingress: no journal entry of ours records it, so it is counted from the callee rows.
    for key, s in stats.items():
        if s.from_ingress:
            pairs[(INGRESS, key)][INGRESS] = s.from_ingress
    edges = [
        MapEdge(
            source,
            target,
            tuple((k, by_kind[k]) for k in KIND_ORDER if by_kind.get(k))
            + tuple((k, c) for k, c in sorted(by_kind.items()) if k not in KIND_ORDER and c),
        )
        for (source, target), by_kind in sorted(pairs.items())
    ]

    nodes = [
        MapNode(key, service, handler, types.get(key, ""), stats.get(key, HandlerStats()))
        for key, (service, handler) in sorted(names.items())
    ]
    ingress_roots = sum(s.from_ingress for s in stats.values())
    if ingress_roots:
        nodes.insert(0, MapNode(INGRESS, "", "", "", HandlerStats(invocations=ingress_roots)))
    return ServiceMap(since=since, now=now, nodes=nodes, edges=edges)
