"""Deadlock detection on our copy, stored for the pages.

The sync loop calls `DeadlockDetector.after_step` after every step; when the step
changed invocations, queues or locks, the detector re-reads the wait-for graph
from the unfinished invocations outwards (their status index, so the cost follows
how many invocations wait, not how many our copy holds), finds its cycles in
linear time (`invocations.graph.waits`) and writes the difference: new cycles
are opened, cycles no longer found are marked resolved. Pages read the table and
are told through `invocations.events.deadlocks_changed`; no page view computes.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from invocations import events
from invocations.graph.waits import Deadlock as Cycle
from invocations.graph.waits import ObjectKey, deadlocks, suggest_victim, wait_edges
from invocations.mirror.models import (
    Deadlock,
    DeadlockMember,
    EdgeKind,
    Invocation,
    InvocationEdge,
    ObjectLock,
    QueuedInvocation,
    SyncState,
)
from invocations.mirror.status import InvocationStatus

log = logging.getLogger("invocations.deadlocks")

# Broken cycles stay listed ("recently broken") this long, then are deleted.
RESOLVED_KEPT = timedelta(days=7)


@dataclass(frozen=True)
class WaitGraph:
    edges: dict[str, list[str]]
    keys_held: dict[str, ObjectKey]

    @property
    def waiting(self) -> int:
        return len(self.edges)


def wait_graph_queries() -> list[tuple[str, list[Any]]]:
    """The three reads of the wait-for graph: pending calls, queued invocations, lock holders.

    Ids only: timestamps are read afterwards for the members of new cycles alone
    (turning 100,000 timestamps into datetimes cost more than the whole detection)."""
    inv, edge = Invocation._meta.db_table, InvocationEdge._meta.db_table
    queue, lock = QueuedInvocation._meta.db_table, ObjectLock._meta.db_table
    return [
        # The request-response calls of unfinished callers: each caller waits on its callee.
        # Walked from the unfinished callers (inv_stuck_idx, whose condition is this WHERE) to their edges (the edge
        # primary key starts with the caller), so completed history costs nothing. A callee
        # that has completed waits on nothing, so it can close no cycle: it is not joined to
        # be filtered out, the detector drops it with the other dead ends.
        (
            f"SELECT e.caller_id, e.callee_id FROM {inv} caller "
            f"JOIN {edge} e ON e.caller_id = caller.id AND e.kind = %s AND e.callee_id IS NOT NULL "
            "WHERE caller.status <> %s AND caller.gone_from_restate_at IS NULL",
            [EdgeKind.CALL.value, InvocationStatus.COMPLETED.value],
        ),
        (f"SELECT invocation_id, service_name, service_key FROM {queue}", []),
        (f"SELECT service_name, service_key, invocation_id FROM {lock}", []),
    ]


def wait_graph_rows() -> list[list[tuple[Any, ...]]]:
    """The rows of `wait_graph_queries`, as read for a detection pass."""
    results = []
    with transaction.atomic(), connection.cursor() as cursor:
        # PostgreSQL's estimate favours hashing the whole edge table (every call ever made)
        # over looking up the unfinished callers' edges by key: measured with 100,000 waiting
        # and 400,000 completed invocations, 0.42 s hashed against 0.10 s by key. Scoped to
        # this transaction.
        cursor.execute("SET LOCAL enable_hashjoin = off")
        cursor.execute("SET LOCAL enable_mergejoin = off")
        for sql, params in wait_graph_queries():
            cursor.execute(sql, params)
            results.append(cursor.fetchall())
    return results


def wait_graph_get() -> WaitGraph:
    calls, queued_rows, lock_rows = wait_graph_rows()
    queued: dict[str, ObjectKey] = {q: (service, key) for q, service, key in queued_rows}
    holders: dict[ObjectKey, str] = {(service, key): holder for service, key, holder in lock_rows}
    edges = wait_edges(pending_calls=calls, queued=queued, holders=holders)
    return WaitGraph(edges=edges, keys_held={h: k for k, h in holders.items()})


@dataclass(frozen=True)
class MemberTimes:
    created_at: dict[str, datetime]
    # When each member started its wait: the journal time of its latest call to another
    # member, or when it entered its key's inbox.
    waiting_since: dict[str, datetime]


def member_times_get(member_ids: list[str]) -> MemberTimes:
    rows = Invocation.objects.filter(id__in=member_ids).values_list("id", "created_at", "inboxed_at")
    created = {inv_id: created_at for inv_id, created_at, _ in rows}
    inboxed = {inv_id: inboxed_at for inv_id, _, inboxed_at in rows if inboxed_at is not None}
    since: dict[str, datetime] = {}
    calls = InvocationEdge.objects.filter(caller_id__in=member_ids, callee_id__in=member_ids, kind=EdgeKind.CALL)
    for caller, at in calls.values_list("caller_id", "created_at"):
        if at is not None and (caller not in since or at > since[caller]):
            since[caller] = at
    for queued, at in QueuedInvocation.objects.filter(invocation_id__in=member_ids).values_list(
        "invocation_id", "created_at"
    ):
        # Restate 1.7's sys_inbox leaves created_at empty: the invocation's inboxed_at says it.
        at = at or inboxed.get(queued)
        if at is not None:
            since[queued] = at
    return MemberTimes(created_at=created, waiting_since=since)


def deadlock_key(cycle: Cycle) -> str:
    """The stored id of a cycle: its members, whatever order it was found in."""
    return hashlib.sha256("\n".join(sorted(cycle.members)).encode()).hexdigest()[:32]


@dataclass
class RefreshReport:
    waiting: int = 0  # invocations with at least one wait (the graph's size)
    cycles: int = 0  # current cycles
    opened: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    read_s: float = 0.0
    detect_s: float = 0.0
    write_s: float = 0.0

    @property
    def duration_s(self) -> float:
        return self.read_s + self.detect_s + self.write_s


def deadlocks_refresh(*, now: datetime | None = None) -> RefreshReport:
    """Find the cycles in our copy now and store the difference with the last refresh."""
    report = RefreshReport()
    t0 = time.perf_counter()
    # The pass allocates a few hundred thousand small objects and frees them all at its end:
    # the cyclic collector, run every 700 allocations, found nothing to free and cost as much
    # as the detection itself (make bench-deadlocks, 100,000 waiting: 1.14 s a pass with it, 0.76 s without).
    collecting = gc.isenabled()
    gc.disable()
    try:
        graph = wait_graph_get()
        t1 = time.perf_counter()
        cycles = {deadlock_key(c): c for c in deadlocks(graph.edges, keys_held=graph.keys_held)}
        t2 = time.perf_counter()
    finally:
        if collecting:
            gc.enable()
    report.read_s, report.detect_s, report.waiting, report.cycles = t1 - t0, t2 - t1, graph.waiting, len(cycles)
    now = now or timezone.now()
    state = SyncState.load()
    truncated = state.queues_truncated or state.locks_truncated
    with transaction.atomic():
        stored = set(Deadlock.objects.filter(resolved_at__isnull=True).values_list("id", flat=True))
        opened = [k for k in cycles if k not in stored]
        resolved = sorted(stored - cycles.keys())
        if opened:
            _open(opened, cycles, now=now, truncated=truncated)
        if resolved:
            Deadlock.objects.filter(id__in=resolved).update(resolved_at=now)
        old = Deadlock.objects.filter(resolved_at__lt=now - RESOLVED_KEPT)
        DeadlockMember.objects.filter(deadlock__in=old).delete()
        old.delete()
        if opened or resolved:
            members = set(
                DeadlockMember.objects.filter(deadlock_id__in=[*opened, *resolved]).values_list(
                    "invocation_id", flat=True
                )
            )
            roots = {
                root or inv_id
                for inv_id, root in Invocation.objects.filter(id__in=members).values_list("id", "root_id")
            }
            events.deadlocks_changed(roots=roots)
    report.opened, report.resolved = opened, resolved
    report.write_s = time.perf_counter() - t2
    if opened or resolved:
        log.info(
            "deadlocks: %d current, %d new, %d broken (%.3fs)",
            len(cycles),
            len(opened),
            len(resolved),
            report.duration_s,
        )
    return report


def _open(keys: list[str], cycles: dict[str, Cycle], *, now: datetime, truncated: bool) -> None:
    # A cycle found again after it was marked broken (a snapshot between two changes) is reopened.
    DeadlockMember.objects.filter(deadlock_id__in=keys).delete()
    Deadlock.objects.filter(id__in=keys).delete()
    times = member_times_get([m for key in keys for m in cycles[key].members])
    rows, members = [], []
    for key in keys:
        cycle = cycles[key]
        starts = [times.waiting_since[m] for m in cycle.members if m in times.waiting_since]
        rows.append(
            Deadlock(
                id=key,
                keys=[list(k) for k in cycle.keys],
                suggested_id=suggest_victim(cycle, created_at=times.created_at),
                since=max(starts) if starts else None,
                detected_at=now,
                from_truncated=truncated,
            )
        )
        members += [DeadlockMember(deadlock_id=key, position=i, invocation_id=m) for i, m in enumerate(cycle.members)]
    Deadlock.objects.bulk_create(rows)
    DeadlockMember.objects.bulk_create(members)


class DeadlockDetector:
    """The sync loop's `after_step`: refresh when the mirror changed, at most as often as
    the refresh's own cost allows (a 0.5 s refresh runs at most every 2 s), and at least
    every `settings.DEADLOCK_REFRESH_MAX_S` so a missed change cannot hide a cycle."""

    def __init__(self) -> None:
        self._last_run: float | None = None
        self._last_cost = 0.0
        self._pending = True  # a fresh process has not looked yet

    def after_step(self, *, changed: bool) -> RefreshReport | None:
        self._pending = self._pending or changed
        now = time.monotonic()
        since = None if self._last_run is None else now - self._last_run
        due = since is None or since >= settings.DEADLOCK_REFRESH_MAX_S
        spaced = since is None or since >= max(settings.DEADLOCK_REFRESH_MIN_S, 4 * self._last_cost)
        if not (due or (self._pending and spaced)):
            return None
        report = deadlocks_refresh()
        self._last_run, self._last_cost, self._pending = time.monotonic(), report.duration_s, False
        return report
