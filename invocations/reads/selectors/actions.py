"""Reads for an action's confirmation: which invocations a cancel or kill reaches.

Restate propagates cancel and kill down request-response calls only, recursively
(docs: "Managing invocations"); one-way and delayed sends are detached from the
call tree and run on. So the reach follows `call` edges to callees that have not
completed, and the sends hanging off that reach are counted as left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connection

from invocations.mirror.models import EdgeKind, Invocation, InvocationEdge
from invocations.mirror.status import InvocationStatus

MAX_DEPTH = 1000  # bad data (a cycle of edges) must not loop


@dataclass(frozen=True)
class Reached:
    id: str
    target: str
    status: str
    depth: int


@dataclass(frozen=True)
class Reach:
    reached: list[Reached]  # the first `limit`, top-down
    total: int  # how many a cancel/kill reaches besides the invocation itself
    detached: int  # one-way/delayed sends from the reach, not completed: left alone


def cancel_reach_get(invocation_id: str, *, limit: int) -> Reach:
    inv = Invocation._meta.db_table
    edge = InvocationEdge._meta.db_table
    completed = InvocationStatus.COMPLETED.value
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH RECURSIVE reach(id, depth) AS (
                SELECT e.callee_id, 1 FROM {edge} e JOIN {inv} c ON c.id = e.callee_id
                 WHERE e.caller_id = %(id)s AND e.kind = %(call)s AND c.status <> %(completed)s
                UNION
                SELECT e.callee_id, r.depth + 1 FROM reach r
                  JOIN {edge} e ON e.caller_id = r.id
                  JOIN {inv} c ON c.id = e.callee_id
                 WHERE e.kind = %(call)s AND c.status <> %(completed)s AND r.depth < %(max_depth)s
            ),
            firsts AS (SELECT id, MIN(depth) AS depth FROM reach WHERE id <> %(id)s GROUP BY id)
            SELECT c.id, c.target, c.status, f.depth, COUNT(*) OVER () AS total,
                   (SELECT COUNT(*) FROM {edge} s LEFT JOIN {inv} sc ON sc.id = s.callee_id
                     WHERE s.kind IN (%(send)s, %(delayed)s)
                       AND (s.caller_id = %(id)s OR s.caller_id IN (SELECT id FROM firsts))
                       AND (sc.status IS NULL OR sc.status <> %(completed)s)) AS detached
              FROM firsts f JOIN {inv} c ON c.id = f.id
             ORDER BY f.depth, c.created_at, c.id
             LIMIT %(limit)s
            """,
            {
                "id": invocation_id,
                "call": EdgeKind.CALL.value,
                "send": EdgeKind.SEND.value,
                "delayed": EdgeKind.DELAYED_SEND.value,
                "completed": completed,
                "max_depth": MAX_DEPTH,
                "limit": limit,
            },
        )
        rows = cursor.fetchall()
    if rows:
        return Reach(
            reached=[Reached(id=r[0], target=r[1], status=r[2], depth=r[3]) for r in rows],
            total=rows[0][4],
            detached=rows[0][5],
        )
    # Nothing reached: the sends of the invocation itself may still be left alone.
    detached = (
        InvocationEdge.objects.filter(caller_id=invocation_id, kind__in=[EdgeKind.SEND, EdgeKind.DELAYED_SEND])
        .exclude(callee_id__in=Invocation.objects.filter(status=completed).values("id"))
        .count()
    )
    return Reach(reached=[], total=0, detached=detached)
