"""Who waits on whom, read from our copy: an invocation's place in its object key's
queue, and the stored deadlocks (found by `invocations.analysis.deadlocks` as the
mirror changes; never computed here)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.db.models import Prefetch

from invocations.mirror.models import (
    Deadlock,
    DeadlockMember,
    EdgeKind,
    Invocation,
    InvocationEdge,
    ObjectLock,
    QueuedInvocation,
)


@dataclass(frozen=True)
class QueuePlace:
    """Where a queued invocation stands in its virtual object key's inbox."""

    invocation_id: str
    service: str
    key: str
    position: int  # 1 = next to run once the holder lets go
    length: int
    sequence_number: int
    queued_at: datetime | None
    holder_id: str | None  # None: nobody holds the lock in our copy (it is about to start)


def queue_places(*, invocation_ids: Iterable[str]) -> dict[str, QueuePlace]:
    """The queue places of those of `invocation_ids` that are queued (one query)."""
    ids = list(dict.fromkeys(invocation_ids))
    if not ids:
        return {}
    queue, lock = QueuedInvocation._meta.db_table, ObjectLock._meta.db_table
    with connection.cursor() as cursor:
        # Whole queues of the keys these ids wait on (the index on key, sequence), numbered in order.
        cursor.execute(
            "SELECT q.invocation_id, q.service_name, q.service_key, q.position, q.length, q.sequence_number, "
            "q.created_at, l.invocation_id "
            "FROM (SELECT *, row_number() OVER w AS position, count(*) OVER (PARTITION BY service_name, service_key) "
            f"AS length FROM {queue} WHERE (service_name, service_key) IN "
            f"(SELECT service_name, service_key FROM {queue} WHERE invocation_id = ANY(%s)) "
            "WINDOW w AS (PARTITION BY service_name, service_key ORDER BY sequence_number)) q "
            f"LEFT JOIN {lock} l ON l.service_name = q.service_name AND l.service_key = q.service_key "
            "WHERE q.invocation_id = ANY(%s)",
            [ids, ids],
        )
        rows = cursor.fetchall()
    return {
        row[0]: QueuePlace(
            invocation_id=row[0],
            service=row[1],
            key=row[2],
            position=row[3],
            length=row[4],
            sequence_number=row[5],
            queued_at=row[6],
            holder_id=row[7],
        )
        for row in rows
    }


def held_keys(*, invocation_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
    """The object key each of `invocation_ids` holds the lock of, for those that hold one."""
    return {
        holder: (service, key)
        for service, key, holder in ObjectLock.objects.filter(invocation_id__in=list(invocation_ids)).values_list(
            "service_name", "service_key", "invocation_id"
        )
    }


_MEMBERS = Prefetch("members", queryset=DeadlockMember.objects.order_by("position"))


def deadlock_memberships(*, invocation_ids: Iterable[str]) -> dict[str, str]:
    """invocation id -> the current deadlock it is part of, for those that are."""
    return dict(
        DeadlockMember.objects.filter(
            invocation_id__in=list(invocation_ids), deadlock__resolved_at__isnull=True
        ).values_list("invocation_id", "deadlock_id")
    )


def deadlocks_current() -> list[Deadlock]:
    """The cycles as they stand, oldest first, with their members in wait order."""
    return list(
        Deadlock.objects.filter(resolved_at__isnull=True)
        .prefetch_related(_MEMBERS)
        .order_by("since", "detected_at", "id")
    )


def deadlocks_recently_resolved(*, limit: int = 20) -> list[Deadlock]:
    return list(
        Deadlock.objects.filter(resolved_at__isnull=False).prefetch_related(_MEMBERS).order_by("-resolved_at")[:limit]
    )


def deadlock_get(*, deadlock_id: str) -> Deadlock | None:
    return Deadlock.objects.filter(id=deadlock_id).prefetch_related(_MEMBERS).first()


def invocations_get(*, invocation_ids: Iterable[str]) -> dict[str, Invocation]:
    return {inv.id: inv for inv in Invocation.objects.filter(id__in=list(invocation_ids))}


def pending_calls_between(*, invocation_ids: Iterable[str]) -> set[tuple[str, str]]:
    """(caller, callee) request-response calls among these invocations (the edge index on caller)."""
    ids = list(invocation_ids)
    rows = InvocationEdge.objects.filter(caller_id__in=ids, callee_id__in=ids, kind=EdgeKind.CALL)
    return {(caller, callee) for caller, callee in rows.values_list("caller_id", "callee_id") if callee is not None}


def tree_deadlocks(*, invocation_id: str, root_id: str | None) -> list[Deadlock]:
    """The current deadlocks with a member in this invocation's call tree (or the invocation itself)."""
    in_tree = DeadlockMember.objects.filter(deadlock__resolved_at__isnull=True)
    if root_id:
        members = in_tree.filter(
            invocation_id__in=Invocation.objects.filter(root_id=root_id).values("id")
        ) | in_tree.filter(invocation_id=invocation_id)
    else:
        members = in_tree.filter(invocation_id=invocation_id)
    ids = set(members.values_list("deadlock_id", flat=True))
    if not ids:
        return []
    return list(Deadlock.objects.filter(id__in=ids).prefetch_related(_MEMBERS).order_by("since", "id"))
