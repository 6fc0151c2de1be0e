"""The pure row mapping, fed literal rows in the shape Restate's /query returns
(JSON format: timestamps as strings, null columns absent)."""

from datetime import UTC, datetime

from invocations.mirror.sync import mapping
from invocations.models import EdgeKind

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)

ROOT_ROW = {
    "id": "inv_1rootAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "target": "Checkout/run",
    "target_service_name": "Checkout",
    "target_handler_name": "run",
    "target_service_ty": "service",
    "status": "completed",
    "completion_result": "success",
    "idempotency_key": "01KAB0W9ZJ4T6V2Q0M3S8H5N7P",
    "invoked_by": "ingress",
    "journal_size": 4,
    "retry_count": 0,
    "created_at": "2026-11-22T11:59:58.120",
    "modified_at": "2026-11-22T11:59:59.500",
    "running_at": "2026-11-22T11:59:58.125",
    "completed_at": "2026-11-22T11:59:59.500",
    "completion_retention": "PT86400S",
}

CHILD_ROW = {
    "id": "inv_1childBBBBBBBBBBBBBBBBBBBBBBBBBB",
    "target": "Counter/mary/add",
    "target_service_name": "Counter",
    "target_service_key": "mary",
    "target_handler_name": "add",
    "target_service_ty": "virtual_object",
    "status": "backing-off",
    "invoked_by": "service",
    "invoked_by_id": ROOT_ROW["id"],
    "invoked_by_target": "Checkout/run",
    "journal_size": 1,
    "retry_count": 7,
    "next_retry_at": "2026-11-22T12:00:03.000",
    "last_failure": "[500] boom",
    "last_failure_error_code": "RT0007",
    "created_at": "2026-11-22T11:59:58.300123456",
    "modified_at": "2026-11-22T11:59:58.400",
}


def test_root_row_maps_every_column() -> None:
    inv = mapping.invocation_from_row(ROOT_ROW, now=NOW)
    assert inv.id == ROOT_ROW["id"]
    assert (inv.service_name, inv.handler_name, inv.service_key) == ("Checkout", "run", None)
    assert inv.service_type == "service"
    assert inv.status == "completed" and inv.completion_result == "success"
    assert inv.parent_id is None
    assert inv.root_id == inv.id, "a root is its own root"
    assert inv.created_at == datetime(2026, 11, 22, 11, 59, 58, 120000, tzinfo=UTC)
    assert inv.completed_at - inv.created_at == datetime(2026, 1, 1, 0, 0, 1, 380000) - datetime(2026, 1, 1)
    assert inv.journal_size == 4
    assert inv.completion_retention == "PT86400S"
    assert inv.first_seen_at == NOW


def test_child_row_keeps_parent_and_leaves_root_for_the_sync() -> None:
    inv = mapping.invocation_from_row(CHILD_ROW, now=NOW)
    assert inv.parent_id == ROOT_ROW["id"]
    assert inv.root_id is None
    assert inv.service_key == "mary"
    assert inv.retry_count == 7 and inv.last_failure_error_code == "RT0007"
    assert inv.next_retry_at == datetime(2026, 11, 22, 12, 0, 3, tzinfo=UTC)
    # Nanoseconds are cut to microseconds, not rounded into the next second.
    assert inv.created_at == datetime(2026, 11, 22, 11, 59, 58, 300123, tzinfo=UTC)


def test_absent_columns_get_defaults_not_errors() -> None:
    inv = mapping.invocation_from_row(
        {"id": "inv_1x", "status": "pending", "created_at": "2026-11-22T00:00:00"}, now=NOW
    )
    assert inv.modified_at == inv.created_at
    assert inv.journal_size == 0 and inv.retry_count == 0
    assert inv.completed_at is None and inv.idempotency_key is None


def test_arrow_datetimes_are_accepted_too() -> None:
    row = dict(ROOT_ROW, created_at=datetime(2026, 11, 22, 11, 59, 58, 120000), modified_at=NOW)
    inv = mapping.invocation_from_row(row, now=NOW)
    assert inv.created_at.tzinfo is not None
    assert inv.modified_at == NOW


def _journal(entry_type: str, lite: str, index: int = 1) -> mapping.JournalEntry:
    return mapping.journal_entry_from_row(
        {
            "id": ROOT_ROW["id"],
            "index": index,
            "entry_type": entry_type,
            "appended_at": "2026-11-22T11:59:58.200",
            "entry_lite_json": lite,
        }
    )


def test_call_entry_becomes_call_edge() -> None:
    entry = _journal(
        "Command: Call",
        '{"Command":{"Call":{"invocation_id":"inv_1childBBB","invocation_target":'
        '{"VirtualObject":{"name":"Counter","key":"mary","handler":"add"}},"result_completion_id":2}}}',
    )
    edge = mapping.edge_from_journal_entry(entry)
    assert edge is not None
    assert edge.kind == EdgeKind.CALL
    assert (edge.caller_id, edge.journal_index, edge.callee_id) == (ROOT_ROW["id"], 1, "inv_1childBBB")
    assert edge.target == "Counter/mary/add"
    assert edge.fire_at is None


def test_one_way_call_with_zero_invoke_time_is_a_send() -> None:
    entry = _journal(
        "Command: OneWayCall",
        '{"Command":{"OneWayCall":{"invocation_id":"inv_1sendCCC","invoke_time":0,'
        '"invocation_target":{"Service":{"name":"Mailer","handler":"notify"}}}}}',
    )
    edge = mapping.edge_from_journal_entry(entry)
    assert edge is not None and edge.kind == EdgeKind.SEND
    assert edge.target_key is None and edge.target == "Mailer/notify"


def test_one_way_call_with_invoke_time_is_a_delayed_send_with_fire_time() -> None:
    entry = _journal(
        "Command: OneWayCall",
        '{"Command":{"OneWayCall":{"invocation_id":"inv_1laterDDD","invoke_time":1795305600000,'
        '"invocation_target":{"Workflow":{"name":"Order","key":"o-1","handler":"run"}}}}}',
    )
    edge = mapping.edge_from_journal_entry(entry)
    assert edge is not None and edge.kind == EdgeKind.DELAYED_SEND
    assert edge.fire_at == datetime.fromtimestamp(1795305600, tz=UTC)
    assert edge.target == "Order/o-1/run"


def test_other_entries_are_not_edges() -> None:
    assert (
        mapping.edge_from_journal_entry(_journal("Command: Sleep", '{"Command":{"Sleep":{"wake_up_time":1}}}')) is None
    )
    assert mapping.edge_from_journal_entry(_journal("Command: Input", '{"Command":{"Input":{}}}', index=0)) is None
    # A malformed entry is kept as a journal row and simply yields no edge.
    broken = _journal("Command: Call", "not json")
    assert broken.entry_lite == {"unparsed": "not json"}
    assert mapping.edge_from_journal_entry(broken) is None


def test_queue_lock_and_promise_rows() -> None:
    q = mapping.queued_from_row(
        {"service_name": "Counter", "service_key": "mary", "id": "inv_1q", "sequence_number": 3}
    )
    assert (q.invocation_id, q.sequence_number) == ("inv_1q", 3)
    lock = mapping.lock_from_row({"service_name": "Counter", "service_key": "mary", "invocation_id": "inv_1h"})
    assert lock.invocation_id == "inv_1h"
    p = mapping.promise_from_row(
        {
            "service_name": "Order",
            "service_key": "o-1",
            "key": "approval",
            "completed": True,
            "completion_success_value_utf8": '"yes"',
        }
    )
    assert p.completed and p.success_value == '"yes"' and p.failure is None
