"""Pure functions from Restate's rows to our model instances. No I/O here:
tests feed literal rows in the shape `/query` returns them.

A row may come from the JSON format (timestamps as strings, null columns left
out) or from Arrow (aware datetimes); both are accepted.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from invocations.mirror.models import (
    Deployment,
    EdgeKind,
    Invocation,
    InvocationEdge,
    JournalEntry,
    ObjectLock,
    QueuedInvocation,
    Service,
    WorkflowPromise,
)
from invocations.mirror.sync.writes import RawJson

Row = dict[str, Any]

# The sys_invocation columns we mirror. scheduled_at must stay in the list:
# Restate returns scheduled_start_at as null unless scheduled_at is selected too.
INVOCATION_COLUMNS = (
    "id",
    "target",
    "target_service_name",
    "target_service_key",
    "target_handler_name",
    "target_service_ty",
    "status",
    "completion_result",
    "completion_failure",
    "idempotency_key",
    "invoked_by",
    "invoked_by_id",
    "invoked_by_target",
    "restarted_from",
    "pinned_deployment_id",
    "trace_id",
    "journal_size",
    "retry_count",
    "next_retry_at",
    "last_failure",
    "last_failure_error_code",
    "last_failure_related_command_name",
    "created_at",
    "modified_at",
    "inboxed_at",
    "scheduled_at",
    "scheduled_start_at",
    "running_at",
    "completed_at",
    "completion_retention",
    "journal_retention",
)

JOURNAL_COLUMNS = ("id", "index", "entry_type", "name", "appended_at", "entry_json", "entry_lite_json")
EDGE_ENTRY_TYPES = ("Command: Call", "Command: OneWayCall")


def parse_timestamp(value: Any) -> datetime | None:
    """Restate timestamps: JSON gives naive ISO strings in UTC, Arrow gives datetimes."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value).rstrip("Z")
    # Restate may print nanoseconds; Python keeps microseconds.
    if "." in text:
        head, frac = text.split(".", 1)
        digits = "".join(ch for ch in frac if ch.isdigit())
        text = f"{head}.{digits[:6]}"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def epoch_ms_to_datetime(value: Any) -> datetime | None:
    if value in (None, "", 0):
        return None
    return datetime.fromtimestamp(int(value) / 1000, tz=UTC)


def _int(value: Any, default: int = 0) -> int:
    if value is None or value == "":
        return default
    return int(value)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _duration(value: Any) -> str | None:
    """A retention as text: ISO-8601 from JSON (`PT86400S`), a timedelta from Arrow written
    as PostgreSQL's interval text (`1 day 0:00:00`, what psycopg sent for it before)."""
    if isinstance(value, timedelta):
        return str(value).replace(",", "")
    return value


def invocation_values(row: Row, *, now: datetime) -> Row:
    """An invocation row as our column values (attnames), every column present.

    The sync writes these dicts as they are: building a model instance per row cost
    more than the COPY that writes it (a backfill maps tens of thousands per second).
    """
    parent_id = row.get("invoked_by_id")
    created_at = parse_timestamp(row["created_at"])
    if created_at is None:
        raise ValueError(f"invocation {row.get('id')!r} has no created_at")
    modified_at = parse_timestamp(row.get("modified_at")) or created_at
    return {
        "id": row["id"],
        "target": row.get("target", ""),
        "service_name": row.get("target_service_name", ""),
        "service_key": row.get("target_service_key"),
        "handler_name": row.get("target_handler_name", ""),
        "service_type": row.get("target_service_ty", ""),
        "status": row["status"],
        "completion_result": row.get("completion_result"),
        "completion_failure": row.get("completion_failure"),
        "idempotency_key": row.get("idempotency_key"),
        "invoked_by": row.get("invoked_by", ""),
        "parent_id": parent_id,
        "invoked_by_target": row.get("invoked_by_target"),
        # A root is its own root; a child's root is resolved from its ancestors by the engine.
        "root_id": None if parent_id else row["id"],
        "restarted_from": row.get("restarted_from"),
        "pinned_deployment_id": row.get("pinned_deployment_id"),
        "trace_id": row.get("trace_id"),
        "journal_size": _int(row.get("journal_size")),
        "retry_count": _int(row.get("retry_count")),
        "next_retry_at": parse_timestamp(row.get("next_retry_at")),
        "last_failure": row.get("last_failure"),
        "last_failure_error_code": _str(row.get("last_failure_error_code")),
        "last_failure_related_command_name": row.get("last_failure_related_command_name"),
        "created_at": created_at,
        "modified_at": modified_at,
        "inboxed_at": parse_timestamp(row.get("inboxed_at")),
        "scheduled_at": parse_timestamp(row.get("scheduled_at")),
        "scheduled_start_at": parse_timestamp(row.get("scheduled_start_at")),
        "running_at": parse_timestamp(row.get("running_at")),
        "completed_at": parse_timestamp(row.get("completed_at")),
        "completion_retention": _duration(row.get("completion_retention")),
        "journal_retention": _duration(row.get("journal_retention")),
        "first_seen_at": now,
        "synced_at": now,
        "journal_synced_size": 0,
        "journal_attempted_at": None,
        "gone_from_restate_at": None,
    }


def invocation_from_row(row: Row, *, now: datetime) -> Invocation:
    return Invocation(**invocation_values(row, now=now))


def _raw_json(value: Any) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, (dict, list)):
        return value
    return RawJson(value)


def load_json(value: Any) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, (dict, list)):
        return value
    try:
        return json.loads(value)
    except ValueError:
        # Keep what Restate said even when it is not JSON, rather than drop the entry.
        return {"unparsed": str(value)}


def journal_values(row: Row) -> Row:
    """A journal row as our column values. Both JSON columns go to jsonb as Restate wrote
    them (PostgreSQL parses them); only the entries that record an edge are parsed here."""
    return {
        "invocation_id": row["id"],
        "index": int(row["index"]),
        "entry_type": row.get("entry_type", ""),
        "name": row.get("name") or None,
        "appended_at": parse_timestamp(row.get("appended_at")),
        "entry": _raw_json(row.get("entry_json")),
        "entry_lite": _raw_json(row.get("entry_lite_json")),
    }


def journal_entry_from_row(row: Row) -> JournalEntry:
    values = journal_values(row)
    values["entry_lite"] = load_json(row.get("entry_lite_json"))
    return JournalEntry(**values)


def _target_parts(target: dict[str, Any]) -> tuple[str, str | None, str]:
    """`{"VirtualObject": {"name", "key", "handler"}}` and its Service/Workflow siblings."""
    if not target:
        return "", None, ""
    (_kind, fields), *_ = target.items()
    return fields.get("name", ""), fields.get("key"), fields.get("handler", "")


def edge_values(entry: Row) -> Row | None:
    """The call/send edge a journal entry (`journal_values`) records, as our column values,
    or None for any other entry. The caller's service and handler are the caller's to add.

    With journal v2 the typed columns (invoked_id, invoked_target, ...) are null,
    so everything comes from entry_lite_json.
    """
    if entry["entry_type"] not in EDGE_ENTRY_TYPES:
        return None
    lite = entry["entry_lite"]
    lite = lite if isinstance(lite, dict) else load_json(lite)
    if not isinstance(lite, dict):
        return None
    command = lite.get("Command", {})
    is_call = entry["entry_type"] == "Command: Call"
    body = command.get("Call" if is_call else "OneWayCall") if isinstance(command, dict) else None
    if not isinstance(body, dict):
        return None
    service, key, handler = _target_parts(body.get("invocation_target") or {})
    fire_at = None if is_call else epoch_ms_to_datetime(body.get("invoke_time"))
    if is_call:
        kind = EdgeKind.CALL
    else:
        kind = EdgeKind.DELAYED_SEND if fire_at is not None else EdgeKind.SEND
    return {
        "caller_id": entry["invocation_id"],
        "journal_index": entry["index"],
        "caller_service": "",
        "caller_handler": "",
        "callee_id": body.get("invocation_id"),
        "kind": kind.value,
        "target_service": service,
        "target_key": key,
        "target_handler": handler,
        "created_at": entry["appended_at"],
        "fire_at": fire_at,
    }


def edge_from_journal_entry(entry: JournalEntry) -> InvocationEdge | None:
    values = edge_values(
        {
            "invocation_id": entry.invocation_id,
            "index": entry.index,
            "entry_type": entry.entry_type,
            "appended_at": entry.appended_at,
            "entry_lite": entry.entry_lite,
        }
    )
    return None if values is None else InvocationEdge(**values)


def queued_from_row(row: Row) -> QueuedInvocation:
    return QueuedInvocation(
        invocation_id=row["id"],
        service_name=row["service_name"],
        service_key=row.get("service_key", ""),
        sequence_number=int(row["sequence_number"]),
        created_at=parse_timestamp(row.get("created_at")),
    )


def lock_from_row(row: Row) -> ObjectLock:
    return ObjectLock(
        service_name=row["service_name"], service_key=row.get("service_key", ""), invocation_id=row["invocation_id"]
    )


def split_lock_name(lock_name: str, service_name: str | None = None) -> tuple[str, str]:
    """(service, key) of a vqueues lock name, `Service/key`.

    The key may hold '/' itself; a service name cannot, so the name ends at the first
    '/' (how Restate parses its own lock names). When the row names the service too
    (sys_vqueue_meta.service_name), that is the prefix taken.
    """
    if service_name and lock_name.startswith(f"{service_name}/"):
        return service_name, lock_name[len(service_name) + 1 :]
    service, sep, key = lock_name.partition("/")
    if not sep:
        raise ValueError(f"lock name without a key: {lock_name!r}")
    return service, key


def queued_from_vqueue_rows(rows: list[Row]) -> list[QueuedInvocation]:
    """Invocations waiting in an object key's vqueue, from sys_vqueues joined with sys_vqueue_meta
    (`entry_id`, `service_name`, `lock_name`, `run_at`, `sequence_number`, `created_at`).

    Restate's scheduler takes a queue's entries in (run_at, sequence_number, entry_id) order,
    and a delayed send keeps the sequence number it got when it was sent, so once due it
    waits behind calls sent after it (verified on 1.7.12): sequence_number alone is not the
    order. So `sequence_number` here is the position in the key's queue, 1 for the next in line.
    """
    ordered = sorted(
        rows,
        key=lambda r: (
            *split_lock_name(r["lock_name"], r.get("service_name")),
            parse_timestamp(r.get("run_at")) or datetime.min.replace(tzinfo=UTC),
            int(r["sequence_number"]),
            r["entry_id"],
        ),
    )
    positions: dict[tuple[str, str], int] = {}
    queued: list[QueuedInvocation] = []
    seen: set[str] = set()
    for row in ordered:
        if row["entry_id"] in seen:
            continue  # partitions are scanned without a common snapshot: an entry may be read twice
        seen.add(row["entry_id"])
        service, key = split_lock_name(row["lock_name"], row.get("service_name"))
        position = positions[service, key] = positions.get((service, key), 0) + 1
        queued.append(
            QueuedInvocation(
                invocation_id=row["entry_id"],
                service_name=service,
                service_key=key,
                sequence_number=position,
                created_at=parse_timestamp(row.get("created_at")),
            )
        )
    return queued


def lock_from_vqueues_row(row: Row) -> ObjectLock:
    """A sys_locks row (`lock_name` `Service/key`, `acquired_by`)."""
    service, key = split_lock_name(row["lock_name"])
    return ObjectLock(service_name=service, service_key=key, invocation_id=row["acquired_by"])


def promise_from_row(row: Row) -> WorkflowPromise:
    return WorkflowPromise(
        service_name=row["service_name"],
        service_key=row.get("service_key", ""),
        key=row["key"],
        completed=bool(row.get("completed", False)),
        success_value=row.get("completion_success_value_utf8"),
        failure=row.get("completion_failure"),
    )


def service_from_row(row: Row) -> Service:
    return Service(
        name=row["name"],
        service_type=row.get("ty", ""),
        revision=_int(row.get("revision")),
        public=bool(row.get("public", True)),
        deployment_id=row.get("deployment_id"),
    )


def deployment_from_row(row: Row) -> Deployment:
    return Deployment(
        id=row["id"],
        deployment_type=row.get("ty", ""),
        endpoint=row.get("endpoint"),
        created_at=parse_timestamp(row.get("created_at")),
    )
