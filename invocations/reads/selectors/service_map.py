"""The service map's data: which handler called or sent to which in a time
window, with per-handler counts, error rate and p50/p95 duration, read from
PostgreSQL with aggregate queries (never a row per invocation: the window can
hold millions). Links, labels and the drawing are `presenters.service_map`."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, Max, Q

from invocations.mirror.models import EdgeKind, Invocation, InvocationEdge, SyncState

INGRESS = "ingress"  # the source node (and edge kind) for invocations sent from outside Restate
# Edge kinds in the order a label lists them.
KIND_ORDER = (EdgeKind.CALL.value, EdgeKind.SEND.value, EdgeKind.DELAYED_SEND.value, INGRESS)
# Percentiles over the latest this many completed invocations of a handler in the window: an
# exact percentile over a week of a busy handler sorts every duration (5 s of the 7-day map at
# 1M rows); this bounds it at an index range per handler.
PERCENTILE_SAMPLE = 1000
# The aggregates hash a window's invocations and edges: at the default 4 MB a week of 1M rows
# spills to disk and takes three times as long.
AGGREGATE_WORK_MEM = "64MB"


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


def data_version() -> tuple[datetime | None, datetime | None]:
    """Changes whenever our copy may have: the newest row (inv_modified_idx, one index entry)
    and the sync engine's last good step (one row). Cheap enough to ask on every request."""
    newest = Invocation.objects.order_by("-modified_at", "-id").values_list("modified_at", flat=True).first()
    synced = SyncState.objects.filter(id=1).values_list("last_success_at", flat=True).first()
    return newest, synced


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
    """Handlers active since `now - window` and who called/sent to whom.

    Invocations are in the window by `created_at`, edges by their journal time;
    there is no upper bound, so the links to the list (which only take
    `created_after`) show exactly what was counted, and rows created a moment
    after `now` are not lost to clock skew between Restate and us.
    """
    since = now - window
    done = Q(completed_at__isnull=False)
    edge_table, inv_table = InvocationEdge._meta.db_table, Invocation._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        # SET LOCAL: only these statements, whatever the connection does next.
        cursor.execute("SELECT set_config('work_mem', %s, true)", [AGGREGATE_WORK_MEM])
        # One pass over the window (inv_created_idx, or a parallel scan for a long window).
        rows = list(
            Invocation.objects.filter(created_at__gte=since)
            .values("service_name", "handler_name")
            .annotate(
                service_type=Max("service_type"),
                invocations=Count("id"),
                completed=Count("id", filter=done),
                failed=Count("id", filter=Q(completion_result="failure")),
                from_ingress=Count("id", filter=Q(invoked_by="ingress", parent__isnull=True)),
            )
            .order_by()
        )
        # The caller's handler lives on its invocation row, so edges are joined to it (by primary key).
        # Edges in the window by their own time: edge_created_idx.
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
