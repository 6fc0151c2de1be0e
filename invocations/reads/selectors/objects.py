"""Reads for the virtual object pages: every key with a lock holder or a queue, one
key's holder and queue in Restate's order, who waits on each queued call, the key's
recent invocations, and the key's state, which is the one thing read from Restate
itself (the sync does not mirror the `state` table)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper
from django.db.models import Q
from django.utils import timezone

from invocations.mirror.models import Invocation, InvocationEdge, ObjectLock, QueuedInvocation, Service
from invocations.restate import RestateClient, RestateError, sql_literal

# Restate's service types that have keys, a lock per key and a queue (sys_service.ty).
KEYED_TYPES = ("virtual_object", "workflow")
KEYS_PAGE_SIZE = 100
QUEUE_CAP = 200  # queue entries drawn on a key's page; the rest is counted
RECENT_CAP = 20
MAX_CHAIN = 50  # caller hops followed up from a queued call (bad data must not loop)
STATE_ENTRIES = 100
STATE_VALUE_CHARS = 4096
# The key's page waits this long for Restate's state, not the client's 30 s: the rest
# of the page comes from our copy and should not hang on it.
STATE_TIMEOUT_S = 5.0


# ---------------------------------------------------------------- services


def service_type_get(service: str) -> str | None:
    """Restate's type of `service` ("virtual_object", "workflow", "service"), from the
    catalog, else from any invocation or queue of it we hold; None: never heard of."""
    found = Service.objects.filter(name=service).values_list("service_type", flat=True).first()
    if found:
        return found
    found = (
        Invocation.objects.filter(service_name=service, service_key__isnull=False)
        .values_list("service_type", flat=True)
        .first()
    )
    if found:
        return found
    if (
        ObjectLock.objects.filter(service_name=service).exists()
        or QueuedInvocation.objects.filter(service_name=service).exists()
    ):
        return "virtual_object"
    return None


def keyed_services() -> list[str]:
    """Names for the service filter: the keyed services of the catalog, and any service
    with a lock or queue in our copy (the catalog is synced less often)."""
    names = set(Service.objects.filter(service_type__in=KEYED_TYPES).values_list("name", flat=True))
    with connection.cursor() as cursor:
        for table in (ObjectLock._meta.db_table, QueuedInvocation._meta.db_table):
            # A skip scan over the index that starts with service_name (the lock's primary key,
            # queue_key_seq_idx): one probe per service, where DISTINCT read every row
            # (150,000 rows: 0.19 s).
            cursor.execute(
                f"WITH RECURSIVE s AS ((SELECT service_name FROM {table} ORDER BY service_name LIMIT 1) "
                f"UNION ALL SELECT (SELECT t.service_name FROM {table} t WHERE t.service_name > s.service_name "
                "ORDER BY t.service_name LIMIT 1) FROM s WHERE s.service_name IS NOT NULL) "
                "SELECT service_name FROM s WHERE service_name IS NOT NULL"
            )
            names.update(name for (name,) in cursor.fetchall())
    return sorted(names)


# ---------------------------------------------------------------- every busy key


@dataclass(frozen=True)
class KeySummary:
    """One key with a lock holder or a queue, as /objects/ lists it."""

    service: str
    key: str
    queue_length: int
    oldest_queued_at: datetime | None  # when the head of the queue entered it (the longest wait)
    holder_id: str | None
    holder_handler: str | None  # None: no holder, or its invocation is not in our copy yet
    holder_status: str | None
    # Restate's running_at of the holder: when it first ran, which for an exclusive handler
    # is when it took the lock (verified on 1.7.12: a queued call's running_at is the moment
    # the one before it completed, and suspending and resuming leave it unchanged).
    holder_running_at: datetime | None


@dataclass(frozen=True)
class KeysPage:
    rows: list[KeySummary]
    total: int  # keys with a holder or a queue under the filter
    page: int
    page_size: int
    # False past RANK_CAP keys: ordered by queue length alone (then by name), not by wait times.
    ranked: bool = True

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


# Ranking by wait times needs the queued time of every queue's head and the start of every
# holder: a join into the invocation table per busy key. Measured on this 2-core machine
# (shared, so noisy): 15,000 busy keys 0.1-0.2 s, 75,000 keys 0.7-1.5 s, while counting them
# and ordering by queue length alone took 0.15-0.25 s at 75,000. Past this many keys under
# the filter the page orders by queue length alone and says so.
RANK_CAP = 10_000

_KEYS = (
    # Per key: its queue's length and head sequence number, and its holder; a key with only
    # a queue or only a holder is a key all the same (full join).
    "WITH q AS (SELECT service_name, service_key, count(*) AS n, min(sequence_number) AS head "
    "FROM {queue} {where} GROUP BY service_name, service_key), "
    "l AS (SELECT service_name, service_key, invocation_id FROM {lock} {where}), "
    "k AS (SELECT coalesce(q.service_name, l.service_name) AS service_name, "
    "coalesce(q.service_key, l.service_key) AS service_key, coalesce(q.n, 0) AS n, q.head, "
    "l.invocation_id AS holder_id FROM q FULL JOIN l "
    "ON l.service_name = q.service_name AND l.service_key = q.service_key) "
)
# Byte order for the names: only a tie-break, and cheaper than the locale's.
_BY_NAME = 'k.service_name COLLATE "C", k.service_key COLLATE "C"'
_HEAD = (
    "LEFT JOIN {queue} qh ON qh.service_name = k.service_name AND qh.service_key = k.service_key "
    "AND qh.sequence_number = k.head LEFT JOIN {inv} ih ON ih.id = qh.invocation_id "
)
_OLDEST = "coalesce(qh.created_at, ih.inboxed_at, ih.created_at)"


def busy_keys_page(*, service: str = "", page: int = 1, page_size: int = KEYS_PAGE_SIZE) -> KeysPage:
    """Keys with a lock holder or a queue, most contended first: longest queue, then the
    longest wait at its head, then the longest-held lock (past RANK_CAP keys: longest
    queue, then name). The order needs every such key, so it is computed on narrow rows;
    the page's holders are read after the LIMIT."""
    tables = {
        "queue": QueuedInvocation._meta.db_table,
        "lock": ObjectLock._meta.db_table,
        "inv": Invocation._meta.db_table,
        "where": "WHERE service_name = %s" if service else "",
    }
    keys = _KEYS.format(**tables)
    head = _HEAD.format(**tables)
    args = [service, service] if service else []
    with transaction.atomic(), connection.cursor() as cursor:
        # Tens of thousands of keys spill the sorts and hashes to disk at the default 4 MB.
        cursor.execute("SET LOCAL work_mem = '32MB'")
        # Ordered by queue length alone first, counted in the same pass; the heads' queued
        # times are read for the page only. Few enough keys: ranked by the waits as well.
        cursor.execute(
            f"{keys}, p AS (SELECT *, count(*) OVER () AS total FROM k ORDER BY k.n DESC, {_BY_NAME} LIMIT %s OFFSET %s) "
            f"SELECT k.service_name, k.service_key, k.n, {_OLDEST}, k.holder_id, k.total FROM p k {head}"
            f"ORDER BY k.n DESC, {_BY_NAME}",
            [*args, page_size, (page - 1) * page_size],
        )
        rows = cursor.fetchall()
        total = rows[0][5] if rows else _busy_keys_count(cursor, keys, args)
        ranked = total <= RANK_CAP
        if ranked:
            cursor.execute(
                f"{keys} SELECT k.service_name, k.service_key, k.n, {_OLDEST} AS oldest, k.holder_id, 0 FROM k {head}"
                f"LEFT JOIN {tables['inv']} h ON h.id = k.holder_id "
                f"ORDER BY k.n DESC, oldest ASC NULLS LAST, h.running_at ASC NULLS LAST, {_BY_NAME} "
                "LIMIT %s OFFSET %s",
                [*args, page_size, (page - 1) * page_size],
            )
            rows = cursor.fetchall()
    holders = Invocation.objects.only("id", "handler_name", "status", "running_at").in_bulk(
        [r[4] for r in rows if r[4]]
    )
    summaries = []
    for name, key, n, oldest, holder_id, _ in rows:
        holder = holders.get(holder_id) if holder_id else None
        summaries.append(
            KeySummary(
                service=name,
                key=key,
                queue_length=n,
                oldest_queued_at=oldest,
                holder_id=holder_id,
                holder_handler=holder.handler_name if holder else None,
                holder_status=holder.status if holder else None,
                holder_running_at=holder.running_at if holder else None,
            )
        )
    return KeysPage(rows=summaries, total=total, page=page, page_size=page_size, ranked=ranked)


def _busy_keys_count(cursor: CursorWrapper, keys: str, args: list[str]) -> int:
    """The count alone: a page past the end has no row to carry it."""
    cursor.execute(f"{keys} SELECT count(*) FROM k", args)
    return cursor.fetchone()[0]


# ---------------------------------------------------------------- one key


@dataclass(frozen=True)
class QueueEntry:
    """One queued call, at its place in Restate's order."""

    position: int  # 1 = next to run once the holder lets go
    sequence_number: int
    invocation_id: str
    invocation: Invocation | None  # None: queued in Restate, its row not in our copy yet
    queued_at: datetime | None
    # How it was reached from its parent ("call", "send", "delayed_send"); None: from the
    # ingress, or the parent's journal not synced yet.
    reached_by: str | None = None
    # The invocations that wait on it through request-response calls: its caller, that
    # caller's caller and so on while each is a call, nearest first.
    waiting: list[Invocation] = field(default_factory=list)


@dataclass(frozen=True)
class ObjectKey:
    service: str
    key: str
    holder_id: str | None
    holder: Invocation | None  # None: nobody holds the lock, or its row is not in our copy yet
    queue: list[QueueEntry]
    queue_length: int
    recent: list[Invocation]

    @property
    def shown_ids(self) -> set[str]:
        """Every invocation the page draws: a change to any of them redraws it."""
        ids = {e.invocation_id for e in self.queue} | {i.id for i in self.recent}
        ids |= {w.id for e in self.queue for w in e.waiting}
        if self.holder_id:
            ids.add(self.holder_id)
        return ids


def object_key_get(*, service: str, key: str) -> ObjectKey:
    """The key's holder, its queue in sequence order (first QUEUE_CAP), who waits on each
    queued call, and its latest invocations in our copy."""
    holder_id = (
        ObjectLock.objects.filter(service_name=service, service_key=key).values_list("invocation_id", flat=True).first()
    )
    queued = list(
        QueuedInvocation.objects.filter(service_name=service, service_key=key).order_by("sequence_number")[:QUEUE_CAP]
    )
    length = len(queued)
    if length == QUEUE_CAP:
        length = QueuedInvocation.objects.filter(service_name=service, service_key=key).count()
    ids = [q.invocation_id for q in queued]
    rows = Invocation.objects.in_bulk([*ids, *([holder_id] if holder_id else [])])
    kinds = dict(InvocationEdge.objects.filter(callee_id__in=ids).values_list("callee_id", "kind"))
    waiting = callers_waiting(invocation_ids=ids)
    queue = [
        QueueEntry(
            position=n,
            sequence_number=q.sequence_number,
            invocation_id=q.invocation_id,
            invocation=rows.get(q.invocation_id),
            queued_at=q.created_at or _queued_at(rows.get(q.invocation_id)),
            reached_by=kinds.get(q.invocation_id),
            waiting=waiting.get(q.invocation_id, []),
        )
        for n, q in enumerate(queued, start=1)
    ]
    recent = list(
        # inv_object_key_created_idx: the latest invocations of one key.
        Invocation.objects.filter(service_name=service, service_key=key).order_by("-created_at", "-id")[:RECENT_CAP]
    )
    return ObjectKey(
        service=service,
        key=key,
        holder_id=holder_id,
        holder=rows.get(holder_id) if holder_id else None,
        queue=queue,
        queue_length=length,
        recent=recent,
    )


def _queued_at(inv: Invocation | None) -> datetime | None:
    # Restate 1.7.12 leaves sys_inbox.created_at null; the invocation's inboxed_at says it.
    if inv is None:
        return None
    return inv.inboxed_at or inv.created_at


def callers_waiting(*, invocation_ids: Iterable[str]) -> dict[str, list[Invocation]]:
    """For each id, the invocations waiting on it through request-response calls, nearest
    first: the caller, then its caller while that one is a call too, up to the root or
    the first one-way send (whose sender does not wait). One recursive query on the
    edges' callee index, and one for the rows."""
    ids = list(dict.fromkeys(invocation_ids))
    if not ids:
        return {}
    edge = InvocationEdge._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "WITH RECURSIVE chain(start_id, caller_id, depth) AS ("
            f"SELECT e.callee_id, e.caller_id, 1 FROM {edge} e WHERE e.callee_id = ANY(%s) AND e.kind = 'call' "
            f"UNION SELECT c.start_id, e.caller_id, c.depth + 1 FROM chain c JOIN {edge} e "
            "ON e.callee_id = c.caller_id AND e.kind = 'call' WHERE c.depth < %s) "
            "SELECT start_id, caller_id, min(depth) FROM chain GROUP BY start_id, caller_id ORDER BY 1, 3, 2",
            [ids, MAX_CHAIN],
        )
        chains = cursor.fetchall()
    rows = Invocation.objects.in_bulk({caller for _, caller, _ in chains})
    out: dict[str, list[Invocation]] = {}
    for start, caller, _ in chains:
        if caller in rows:
            out.setdefault(start, []).append(rows[caller])
    return out


def holders_waiting_counts(*, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Queue lengths of these keys (the detail header of a lock holder says how many wait)."""
    wanted = list(keys)
    if not wanted:
        return {}
    q = Q()
    for service, key in wanted:
        q |= Q(service_name=service, service_key=key)
    counts: dict[tuple[str, str], int] = {}
    for service, key in QueuedInvocation.objects.filter(q).values_list("service_name", "service_key"):
        counts[(service, key)] = counts.get((service, key), 0) + 1
    return counts


# ---------------------------------------------------------------- the key's state, from Restate


@dataclass(frozen=True)
class StateEntry:
    key: str
    text: str | None  # value_utf8, cut at STATE_VALUE_CHARS characters
    hex: str | None  # the first bytes in hex, when Restate has no UTF-8 text for it
    length: int  # the value's size in bytes (Restate's value_length)

    @property
    def cut(self) -> bool:
        shown = len(self.text.encode()) if self.text is not None else len(self.hex or "") // 2
        return shown < self.length


@dataclass(frozen=True)
class StateRead:
    """What Restate's `state` table held for a key when we asked (not our copy)."""

    read_at: datetime
    entries: list[StateEntry] = field(default_factory=list)
    total: int = 0  # entries Restate holds for the key (more than shown when > STATE_ENTRIES)
    error: str = ""  # Restate did not answer: the page says so instead of failing


_clients: dict[tuple[str, str, float], RestateClient] = {}
_clients_lock = threading.Lock()


def state_client() -> RestateClient:
    """One client per process (and per settings, which tests change): making one loads
    the TLS trust store, 40 ms of every key page; httpx's client is safe across threads."""
    config = (
        settings.RESTATE_ADMIN_URL,
        settings.RESTATE_INGRESS_URL,
        min(STATE_TIMEOUT_S, settings.RESTATE_TIMEOUT_S),
    )
    with _clients_lock:
        client = _clients.get(config)
        if client is None:
            client = _clients[config] = RestateClient(admin_url=config[0], ingress_url=config[1], timeout=config[2])
    return client


def object_state_read(*, service: str, key: str, client: RestateClient | None = None) -> StateRead:
    """The key's state from Restate's `state` table (partition_key, service_name,
    service_key, key, key_length, value_utf8, value, value_length, and `scope`, null for
    an ordinary object; checked on restate-server 1.7.12), first STATE_ENTRIES entries
    by state key, each value cut to STATE_VALUE_CHARS characters in Restate's own SQL so
    a large value never crosses the wire whole."""
    read_at = timezone.now()
    if "\x00" in service or "\x00" in key:
        return StateRead(read_at=read_at, error="the key contains a NUL character, which Restate's SQL cannot carry")
    sql = (
        f"SELECT key, left(value_utf8, {STATE_VALUE_CHARS}) AS text, "
        f"CASE WHEN value_utf8 IS NULL THEN left(encode(value, 'hex'), {STATE_VALUE_CHARS}) END AS hex, "
        "value_length, count(*) OVER () AS total FROM state "
        f"WHERE service_name = {sql_literal(service)} AND service_key = {sql_literal(key)} "
        f"ORDER BY key LIMIT {STATE_ENTRIES}"
    )
    try:
        rows = (client or state_client()).query(sql)
    except RestateError as exc:
        return StateRead(read_at=read_at, error=str(exc))
    entries = [
        StateEntry(
            key=row.get("key", ""),
            text=row.get("text"),
            hex=row.get("hex"),
            length=int(row.get("value_length") or 0),
        )
        for row in rows
    ]
    return StateRead(read_at=read_at, entries=entries, total=int(rows[0].get("total", 0)) if rows else 0)


def invocations_of_key(*, service: str, key: str, among: Iterable[str]) -> set[str]:
    """Those of `among` (ids a sync step changed) that are invocations of this key."""
    return set(
        Invocation.objects.filter(id__in=list(among), service_name=service, service_key=key).values_list(
            "id", flat=True
        )
    )
