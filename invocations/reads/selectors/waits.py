"""The wait-for graph's inputs from our copy, and the deadlocks in it.

Read from the unfinished invocations outwards (their status index), so the cost
follows how many invocations are waiting, not how many our copy holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import connection

from invocations.graph.waits import Deadlock, ObjectKey, deadlocks, wait_edges
from invocations.mirror.models import EdgeKind, Invocation, InvocationEdge, ObjectLock, QueuedInvocation
from invocations.mirror.status import InvocationStatus


@dataclass(frozen=True)
class WaitGraph:
    edges: dict[str, list[str]]
    keys_held: dict[str, ObjectKey]
    created_at: dict[str, datetime]


def wait_graph_get() -> WaitGraph:
    inv, edge = Invocation._meta.db_table, InvocationEdge._meta.db_table
    completed = InvocationStatus.COMPLETED.value
    with connection.cursor() as cursor:
        # A request-response call whose caller and callee are both unfinished: the caller
        # waits on it. Edges are keyed by caller, so this reads only unfinished callers' edges.
        cursor.execute(
            f"SELECT e.caller_id, e.callee_id, caller.created_at, callee.created_at "
            f"FROM {inv} caller JOIN {edge} e ON e.caller_id = caller.id AND e.kind = %s "
            f"JOIN {inv} callee ON callee.id = e.callee_id AND callee.status <> %s "
            "WHERE caller.status <> %s AND caller.gone_from_restate_at IS NULL",
            [EdgeKind.CALL.value, completed, completed],
        )
        calls = cursor.fetchall()
    created_at: dict[str, datetime] = {}
    for caller, callee, caller_created, callee_created in calls:
        created_at[caller], created_at[callee] = caller_created, callee_created
    queued: dict[str, ObjectKey] = {
        q: (service, key)
        for q, service, key in QueuedInvocation.objects.values_list("invocation_id", "service_name", "service_key")
    }
    holders: dict[ObjectKey, str] = {
        (service, key): holder
        for service, key, holder in ObjectLock.objects.values_list("service_name", "service_key", "invocation_id")
    }
    edges = wait_edges(pending_calls=[(c[0], c[1]) for c in calls], queued=queued, holders=holders)
    return WaitGraph(edges=edges, keys_held={h: k for k, h in holders.items()}, created_at=created_at)


def deadlocks_get() -> list[Deadlock]:
    graph = wait_graph_get()
    return deadlocks(graph.edges, keys_held=graph.keys_held)
