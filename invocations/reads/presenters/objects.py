"""What the virtual object pages print: /objects/ (every busy key) and one key's page,
plus the queue facts the invocation detail page shows for a queued call or a holder."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.utils import timezone

from invocations.mirror.models import Invocation, SyncState
from invocations.reads.presenters.invocation import SERVICE_TYPE_LABELS
from invocations.reads.selectors import detail as selectors_detail
from invocations.reads.selectors import objects as selectors
from invocations.reads.selectors import waits
from invocations.reads.selectors.sync_state import sync_state_get
from invocations.reads.shared import cached_once

# Every reader of a key is told of a change at the same moment: one read of Restate's
# state made since the change serves them all, labelled with the moment it was read.
STATE_CACHE_S = 5.0


class UnknownObjectService(LookupError):
    """The service of an object page is not a keyed service we know of; the message says which."""


def key_label(key: str) -> str:
    """A key as the pages print it: an empty key would print as nothing at all."""
    return key if key != "" else "(empty key)"


def _since(moment: datetime | None, now: datetime) -> timedelta | None:
    return now - moment if moment is not None else None


def _snapshot_notes(sync: SyncState) -> list[str]:
    """What the queue pages must not present as whole: the sync keeps at most
    SYNC_SNAPSHOT_ROWS rows of each snapshot, and what it keeps is a prefix."""
    notes = []
    if sync.queues_truncated:
        notes.append("queues (sys_inbox)")
    if sync.locks_truncated:
        notes.append("lock holders (sys_keyed_service_status)")
    return notes


def _sync_notes(sync: SyncState) -> dict[str, Any]:
    return {"truncated": _snapshot_notes(sync), "vqueues": sync.queue_tables == SyncState.QueueTables.VQUEUES}


# ---------------------------------------------------------------- /objects/


@dataclass(frozen=True)
class KeyRow:
    service: str
    key: str
    label: str
    queue_length: int
    oldest_queued_at: datetime | None
    longest_wait: timedelta | None
    holder_id: str | None
    holder_handler: str | None
    holder_status: str | None
    holder_since: datetime | None
    held_for: timedelta | None


def objects_context(*, service: str, page: int) -> dict[str, Any]:
    now = timezone.now()
    keys = selectors.busy_keys_page(service=service, page=page)
    rows = [
        KeyRow(
            service=k.service,
            key=k.key,
            label=key_label(k.key),
            queue_length=k.queue_length,
            oldest_queued_at=k.oldest_queued_at,
            longest_wait=_since(k.oldest_queued_at, now),
            holder_id=k.holder_id,
            holder_handler=k.holder_handler,
            holder_status=k.holder_status,
            holder_since=k.holder_running_at,
            held_for=_since(k.holder_running_at, now),
        )
        for k in keys.rows
    ]
    query = {"service": service} if service else {}
    return {
        "rows": rows,
        "keys": keys,
        "service": service,
        "services": selectors.keyed_services(),
        "rank_cap": selectors.RANK_CAP,
        # The socket follows the same filter and page as what it updates.
        "live_query": urlencode(query | ({"page": keys.page} if keys.page > 1 else {})),
        "prev_query": urlencode(query | ({"page": keys.page - 1} if keys.page > 2 else {})),
        "next_query": urlencode(query | {"page": keys.page + 1}),
        "first_shown": (keys.page - 1) * keys.page_size + 1 if rows else 0,
        "last_shown": (keys.page - 1) * keys.page_size + len(rows),
        **_sync_notes(sync_state_get()),
    }


# ---------------------------------------------------------------- one key


@dataclass(frozen=True)
class StateRow:
    key: str
    kind: str  # "JSON", "text", "bytes (hex)"
    text: str
    length: int
    cut: bool


@dataclass(frozen=True)
class StateView:
    read_at: datetime
    rows: list[StateRow]
    total: int
    error: str

    @property
    def more(self) -> int:
        return max(0, self.total - len(self.rows))


def _state_row(entry: selectors.StateEntry) -> StateRow:
    if entry.text is None:
        return StateRow(entry.key, "bytes (hex)", entry.hex or "", entry.length, entry.cut)
    if not entry.cut:
        try:
            value = json.loads(entry.text)
        except ValueError:
            pass
        else:
            return StateRow(entry.key, "JSON", json.dumps(value, indent=2, ensure_ascii=False), entry.length, False)
    return StateRow(entry.key, "text", entry.text, entry.length, entry.cut)


def object_state(*, service: str, key: str, fresh_after: float | None = None) -> StateView:
    """The key's state as Restate holds it now. fresh_after (epoch seconds, when a change
    was announced): a read started since then is shared by every reader; None: read now."""
    if fresh_after is None:
        fresh_after = time.time()
    digest = hashlib.sha256(f"{service}\0{key}".encode()).hexdigest()[:32]

    def read() -> StateView:
        found = selectors.object_state_read(service=service, key=key)
        return StateView(found.read_at, [_state_row(e) for e in found.entries], found.total, found.error)

    return cached_once(
        f"object-state:{digest}",
        usable=lambda view: view.read_at.timestamp() >= fresh_after,
        compute=read,
        timeout_s=STATE_CACHE_S,
    )


@dataclass(frozen=True)
class QueueRow:
    position: int
    sequence_number: int
    invocation_id: str
    handler: str  # "" when the row is not in our copy yet
    status: str
    queued_at: datetime | None
    waited: timedelta | None
    reached_by: str | None
    parent_id: str | None
    invoked_by: str
    waiting: list[Invocation]


def object_context(
    *, service: str, key: str, with_state: bool = True, fresh_after: float | None = None
) -> dict[str, Any]:
    """Everything a key's page and its live parts need. Raises UnknownObjectService.

    fresh_after: see object_state (a live redraw shares one read of Restate's state)."""
    kind = selectors.service_type_get(service)
    if kind is None:
        raise UnknownObjectService(
            f"Our copy of Restate has no service named {service!r}: not registered, or the sync has not seen it yet."
        )
    if kind not in selectors.KEYED_TYPES:
        raise UnknownObjectService(f"{service} is a {kind}, not a virtual object or workflow: it has no keys.")
    now = timezone.now()
    found = selectors.object_key_get(service=service, key=key)
    queue = [
        QueueRow(
            position=e.position,
            sequence_number=e.sequence_number,
            invocation_id=e.invocation_id,
            handler=e.invocation.handler_name if e.invocation else "",
            status=e.invocation.status if e.invocation else "",
            queued_at=e.queued_at,
            waited=_since(e.queued_at, now),
            reached_by=e.reached_by,
            parent_id=e.invocation.parent_id if e.invocation else None,
            invoked_by=e.invocation.invoked_by if e.invocation else "",
            waiting=e.waiting,
        )
        for e in found.queue
    ]
    holder = found.holder
    return {
        "service": service,
        "service_kind": SERVICE_TYPE_LABELS.get(kind, kind),
        "key": key,
        "label": key_label(key),
        "live_query": urlencode({"service": service, "key": key}),
        "service_query": urlencode({"service": service}),
        "list_query": urlencode({"service": service, "key": key}),
        "found": found,
        "holder": holder,
        "holder_id": found.holder_id,
        "holder_since": holder.running_at if holder else None,
        "held_for": _since(holder.running_at if holder else None, now),
        "queue": queue,
        "queue_length": found.queue_length,
        "queue_more": found.queue_length - len(queue),
        "recent": found.recent,
        "recent_cap": selectors.RECENT_CAP,
        "state": object_state(service=service, key=key, fresh_after=fresh_after) if with_state else None,
        "now": now,
        **_sync_notes(sync_state_get()),
    }


# ---------------------------------------------------------------- the invocation detail page


def queue_facts(inv: Invocation) -> dict[str, Any]:
    """The detail header's queue lines: where a queued call stands and whom it waits
    behind, or which key the invocation holds and how many wait for it."""
    place = waits.queue_places(invocation_ids=[inv.id]).get(inv.id)
    held = waits.held_keys(invocation_ids=[inv.id]).get(inv.id)
    holder = selectors_detail.invocation_brief_get(place.holder_id) if place and place.holder_id else None
    waiting = selectors.holders_waiting_counts(keys=[held]).get(held, 0) if held else 0
    return {"queue_place": place, "queue_holder": holder, "held_key": held, "held_waiting": waiting}
