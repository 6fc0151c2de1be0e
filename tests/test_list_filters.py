"""List filters, sorts and chips against real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client

from invocations.models import EdgeKind, Invocation, InvocationEdge
from tests.factories import T0, build_invocation, invocation_id


def inv(n: int, **fields: Any) -> Invocation:
    """Invocation number `n`, created n seconds after T0; completed without timestamps unless given."""
    fields.setdefault("created_at", T0 + timedelta(seconds=n))
    fields.setdefault("completion_result", None)
    fields.setdefault("running_at", None)
    fields.setdefault("retry_count", 0)
    fields.setdefault("id", invocation_id("f", n))
    return build_invocation(ran_ms=None, **fields)


@pytest.fixture
def rows(db: None) -> list[Invocation]:
    root = inv(0, service_name="Orchestrator", handler_name="call_all", target="Orchestrator/call_all")
    made = [
        root,
        inv(1, status="running", parent_id=root.id, root_id=root.id, invoked_by="service"),
        inv(2, status="backing-off", service_name="Flaky", handler_name="fail", target="Flaky/fail", retry_count=3),
        inv(
            3,
            service_name="Counter",
            handler_name="add",
            service_type="virtual_object",
            service_key="mary",
            target="Counter/mary/add",
            idempotency_key="order-7",
            parent_id=root.id,
            root_id=root.id,
            invoked_by="service",
        ),
        inv(4, status="scheduled", pinned_deployment_id="dp_1abc", modified_at=T0 + timedelta(hours=2)),
        inv(5, completed_at=T0 + timedelta(seconds=5 + 9)),  # 9 s long
        inv(6, completed_at=T0 + timedelta(seconds=6, milliseconds=20)),  # 20 ms
    ]
    Invocation.objects.bulk_create(made)
    InvocationEdge.objects.create(
        caller_id=root.id,
        journal_index=1,
        callee_id=made[1].id,
        kind=EdgeKind.CALL,
        target_service="Greeter",
        target_handler="greet",
    )
    InvocationEdge.objects.create(
        caller_id=root.id,
        journal_index=2,
        callee_id=made[3].id,
        kind=EdgeKind.SEND,
        target_service="Counter",
        target_key="mary",
        target_handler="add",
    )
    return made


def ids(client: Client, **params: object) -> list[str]:
    response = client.get("/invocations/", params)
    assert response.status_code == 200, response.content[:500]
    return [row.id for row in response.context["page"].rows]


def short(*numbers: int) -> list[str]:
    return [invocation_id("f", n) for n in numbers]


def test_each_filter(client: Client, rows: list[Invocation]) -> None:
    assert ids(client, status=["running", "backing-off"]) == short(2, 1)
    assert ids(client, service="Flaky") == short(2)
    assert ids(client, service="Greeter", handler="greet") == short(6, 5, 4, 1)
    assert ids(client, key="mary") == short(3)
    assert ids(client, idempotency_key="order-7") == short(3)
    assert ids(client, parent=rows[0].id) == short(3, 1)
    assert ids(client, roots="1") == short(6, 5, 4, 2, 0)
    assert ids(client, deployment="dp_1abc") == short(4)
    assert ids(client, created_after=(T0 + timedelta(seconds=5)).isoformat()) == short(6, 5)
    assert ids(client, created_before=(T0 + timedelta(seconds=1)).isoformat()) == short(0)
    assert ids(client, modified_after=(T0 + timedelta(hours=1)).isoformat()) == short(4)
    assert ids(client, q="inv_1f00000") == short(6, 5, 4, 3, 2, 1, 0)
    assert ids(client, q=short(3)[0]) == short(3)
    assert ids(client, caller_service="Orchestrator", caller_handler="call_all", kind="send") == short(3)
    assert ids(client, caller_service="Orchestrator", kind="call") == short(1)


def test_sorts(client: Client, rows: list[Invocation]) -> None:
    assert ids(client, sort="created") == short(0, 1, 2, 3, 4, 5, 6)
    assert ids(client, sort="-modified")[0] == short(4)[0]
    assert ids(client, sort="-duration") == short(5, 6)
    assert ids(client, sort="duration") == short(6, 5)


def test_keyset_by_duration_visits_every_completed_row_once(client: Client, db: None) -> None:
    Invocation.objects.bulk_create(
        [inv(n, completed_at=T0 + timedelta(seconds=n) + timedelta(milliseconds=(n % 7) * 100)) for n in range(130)]
    )
    seen: list[str] = []
    params: dict[str, str] = {"sort": "-duration"}
    while True:
        response = client.get("/invocations/", params)
        page = response.context["page"]
        seen += [r.id for r in page.rows]
        if not page.next_cursor:
            break
        params = {"sort": "-duration", "after": page.next_cursor.encode()}
    assert len(seen) == 130 and len(set(seen)) == 130
    durations = [r.completed_at - r.created_at for r in Invocation.objects.in_bulk(seen).values()]
    assert (
        max(durations)
        == Invocation.objects.get(id=seen[0]).completed_at - Invocation.objects.get(id=seen[0]).created_at
    )


def test_status_chips_count_under_other_filters_and_toggle(client: Client, rows: list[Invocation]) -> None:
    response = client.get("/invocations/", {"service": "Greeter", "status": "running"})
    chips = {c["status"]: c for c in response.context["chips"]}
    assert chips["completed"]["count"] == 2 and chips["running"]["count"] == 1 and chips["scheduled"]["count"] == 1
    assert chips["running"]["active"]
    # Clicking the active chip removes it; clicking another adds it; other filters stay.
    assert "status=running" not in chips["running"]["query"] and "service=Greeter" in chips["running"]["query"]
    assert "status=completed" in chips["completed"]["query"] and "status=running" in chips["completed"]["query"]


def test_filters_round_trip_through_the_url(client: Client, rows: list[Invocation]) -> None:
    response = client.get(
        "/invocations/", {"service": "Greeter", "status": ["running", "scheduled"], "sort": "created"}
    )
    query = response.context["filters"].query_string()
    again = client.get(f"/invocations/?{query}")
    assert [r.id for r in again.context["page"].rows] == [r.id for r in response.context["page"].rows] == short(1, 4)
    body = response.content.decode()
    assert 'name="service" value="Greeter"' in body


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"status": "exploded"}, "status"),
        ({"created_after": "yesterday-ish"}, "created_after"),
        ({"created_after": "2026-11-22T12:00", "created_before": "2026-11-22T11:00"}, "earlier"),
        ({"parent": "inv_1x' OR 1=1"}, "not an invocation id"),
        ({"q": "inv_1%"}, "letters, digits"),
        ({"sort": "price"}, "sort"),
        ({"kind": "teleport"}, "kind"),
        ({"sort": "-duration", "after": "fast~inv_1x"}, "seconds"),
    ],
)
def test_bad_input_is_a_clear_400(client: Client, db: None, params: dict, says: str) -> None:
    response = client.get("/invocations/", params)
    assert response.status_code == 400
    assert says in response.content.decode()


def test_empty_filtered_state(client: Client, rows: list[Invocation]) -> None:
    body = client.get("/invocations/", {"service": "Nope"}).content.decode()
    assert "No invocation matches these filters" in body


def test_status_counts_stop_at_the_cap(client: Client, rows: list[Invocation], monkeypatch: pytest.MonkeyPatch) -> None:
    from invocations.reads.selectors import invocations as selectors

    monkeypatch.setattr(selectors, "STATUS_COUNT_CAP", 2)
    response = client.get("/invocations/")
    chips = {c["status"]: c for c in response.context["chips"]}
    assert chips["completed"]["capped"] and chips["completed"]["count"] == 3  # counted to cap + 1, no further
    assert not chips["running"]["capped"] and chips["running"]["count"] == 1
    body = response.content.decode()
    assert "completed <b>2+</b>" in body and "more than 2 matches" in body
