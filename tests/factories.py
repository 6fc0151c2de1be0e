"""Rows for tests that need our tables in a given state without a real Restate.

One way to make an invocation, an edge or a journal entry, so every test file
means the same thing by "a completed Greeter/greet invocation". Ids are valid
Restate-shaped ids (`inv_1` + letters), unique per call unless given.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from invocations.mirror.models import Invocation, InvocationEdge, InvocationSpan, JournalEntry

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
_serial = itertools.count(1)


def invocation_id(tag: str = "t", n: int | None = None) -> str:
    """`inv_1<tag><n>AAAA…`: 36 characters, letters and digits only, like Restate's."""
    number = next(_serial) if n is None else n
    return f"inv_1{tag}{number:06d}".ljust(36, "A")


def build_invocation(
    *,
    id: str | None = None,
    target: str = "Greeter/greet",
    status: str = "completed",
    created_at: datetime | None = None,
    ran_ms: float | None = 250,
    parent: Invocation | str | None = None,
    root: Invocation | str | None = None,
    **fields: Any,
) -> Invocation:
    """An unsaved invocation of `target` ("Service/handler" or "Object/key/handler").

    Completed ones ran `ran_ms` from creation (None: not completed). The root is
    the parent's root, or the invocation itself when it has no parent.
    """
    inv_id = id or invocation_id()
    parts = target.split("/")
    service, handler = parts[0], parts[-1]
    key = parts[1] if len(parts) == 3 else None
    created = created_at or T0
    parent_id = parent.id if isinstance(parent, Invocation) else parent
    if root is None:
        root_id = (parent.root_id if isinstance(parent, Invocation) else None) if parent_id else inv_id
    else:
        root_id = root.id if isinstance(root, Invocation) else root
    completed = status == "completed" and ran_ms is not None
    values: dict[str, Any] = {
        "id": inv_id,
        "target": target,
        "service_name": service,
        "service_key": key,
        "handler_name": handler,
        "service_type": "virtual_object" if key is not None else "service",
        "status": status,
        "completion_result": "success" if completed else None,
        "invoked_by": "service" if parent_id else "ingress",
        "parent_id": parent_id,
        "root_id": root_id,
        "created_at": created,
        "modified_at": created,
        "running_at": created if status not in ("scheduled", "pending") else None,
        "completed_at": created + timedelta(milliseconds=ran_ms) if completed and ran_ms is not None else None,
        "retry_count": 1 if status != "scheduled" else 0,
        "first_seen_at": created,
        "synced_at": created,
    }
    values.update(fields)
    return Invocation(**values)


def create_invocation(**kwargs: Any) -> Invocation:
    inv = build_invocation(**kwargs)
    inv.save(force_insert=True)
    return inv


def build_edge(
    caller: Invocation,
    callee: Invocation | None,
    *,
    kind: str = "call",
    journal_index: int | None = None,
    created_at: datetime | None = None,
    fire_at: datetime | None = None,
) -> InvocationEdge:
    """The journal entry of `caller` that reached `callee` (None: a callee we never synced)."""
    target = callee.target if callee is not None else "Unknown/handler"
    parts = target.split("/")
    return InvocationEdge(
        caller_id=caller.id,
        caller_service=caller.service_name,
        caller_handler=caller.handler_name,
        journal_index=next(_serial) if journal_index is None else journal_index,
        callee_id=callee.id if callee is not None else None,
        kind=kind,
        target_service=parts[0],
        target_key=parts[1] if len(parts) == 3 else None,
        target_handler=parts[-1],
        created_at=created_at or caller.created_at + timedelta(milliseconds=5),
        fire_at=fire_at,
    )


def payload_bytes(value: Any) -> list[int]:
    """A payload as Restate's entry_json carries it: the JSON bytes as a list of ints."""
    return list(json.dumps(value).encode())


def build_journal_entry(invocation: Invocation, index: int, entry_type: str, **entry: Any) -> JournalEntry:
    kind = entry_type.split(": ", 1)[-1]
    section = "Command" if entry_type.startswith("Command") else "Notification"
    return JournalEntry(
        invocation_id=invocation.id,
        index=index,
        entry_type=entry_type,
        appended_at=invocation.created_at + timedelta(milliseconds=index),
        entry={section: {kind: entry}},
        entry_lite={section: {kind: {k: v for k, v in entry.items() if k != "payload"}}},
    )


def build_span(
    invocation: Invocation | str,
    start_ms: float,
    end_ms: float,
    *,
    kind: str = "attempt",
    error: str | None = None,
    deployment_id: str = "dp_14ebMt9tPSDh9vwDbanWEkL",
    deployment_address: str = "http://127.0.0.1:9080/",
    result: str = "",
) -> InvocationSpan:
    """An unsaved span of `invocation` as Restate 1.7.12 exports it, `start_ms`..`end_ms` after
    its creation (T0 for an id): an attempt fails with status ERROR and its message."""
    inv_id = invocation.id if isinstance(invocation, Invocation) else invocation
    created = invocation.created_at if isinstance(invocation, Invocation) else T0
    n = next(_serial)
    return InvocationSpan(
        invocation_id=inv_id,
        kind=kind,
        trace_id=f"{n:032x}",
        span_id=f"{n:016x}",
        started_at=created + timedelta(milliseconds=start_ms),
        ended_at=created + timedelta(milliseconds=end_ms),
        status=InvocationSpan.Status.ERROR if error is not None else InvocationSpan.Status.OK,
        status_message=error or "",
        deployment_id=deployment_id if kind == "attempt" else "",
        deployment_address=deployment_address if kind == "attempt" else "",
        result=result,
        received_at=created + timedelta(milliseconds=end_ms + 60),
    )
