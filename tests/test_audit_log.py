"""The audit log is append-only in PostgreSQL itself, not only by the app's lack of paths."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction

from invocations.mirror.actions import Action
from invocations.records.models import AuditEntry, AuditKind

pytestmark = pytest.mark.django_db


def make_entry() -> AuditEntry:
    return AuditEntry.objects.create(
        username="alice",
        kind=AuditKind.SINGLE,
        action=Action.CANCEL,
        targets=["inv_1aaaaaaaaaaaaaaaaaaaa"],
        request={"method": "PATCH", "path": "/invocations/inv_1aaaaaaaaaaaaaaaaaaaa/cancel"},
        response={"outcome": "done", "http_status": 202},
        outcome="done",
    )


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE invocations_auditentry SET outcome = 'forged' WHERE id = %s",
        "UPDATE invocations_auditentry SET username = 'mallory' WHERE id = %s",
        "DELETE FROM invocations_auditentry WHERE id = %s",
    ],
)
def test_the_database_refuses_to_change_or_delete_an_audit_entry(statement: str) -> None:
    entry = make_entry()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement, [entry.id])
    entry.refresh_from_db()
    assert (entry.outcome, entry.username) == ("done", "alice")


def test_the_orm_cannot_update_or_delete_an_audit_entry_either() -> None:
    entry = make_entry()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEntry.objects.filter(id=entry.id).update(outcome="forged")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        entry.delete()
    assert AuditEntry.objects.filter(id=entry.id, outcome="done").exists()


def test_entries_can_still_be_appended() -> None:
    make_entry()
    make_entry()
    assert AuditEntry.objects.count() == 2


# ---------------------------------------------------------------- the audit page


def entry(
    *,
    username: str = "alice",
    action: str = Action.CANCEL,
    targets: list[str] | None = None,
    outcome: str = "done",
    kind: str = AuditKind.SINGLE,
    message: str = "",
) -> AuditEntry:
    targets = targets if targets is not None else ["inv_1aaaaaaaaaaaaaaaaaaaa"]
    return AuditEntry.objects.create(
        username=username,
        kind=kind,
        action=action,
        targets=targets,
        request={"method": "PATCH", "path": f"/invocations/{targets[0] if targets else ''}/{action}"},
        response={"outcome": outcome, "http_status": 202 if outcome == "done" else 409, "message": message},
        outcome=outcome,
    )


def test_the_page_lists_entries_newest_first_with_restates_answer_in_words(client: Any) -> None:
    entry(username="alice", outcome="done")
    entry(username="bob", action=Action.KILL, outcome="conflict", message="already completed")
    html = client.get("/audit/").content.decode()
    html = html[html.index('id="audit-rows"') :]  # past the filter's list of users
    assert html.index("bob") < html.index("alice")
    assert "accepted" in html and "already completed" in html
    assert "PATCH /invocations/inv_1aaaaaaaaaaaaaaaaaaaa/cancel" in html


def test_filters_narrow_by_user_action_and_invocation(client: Any) -> None:
    entry(username="alice", targets=["inv_1aaaaaaaaaaaaaaaaaaaa"])
    entry(username="bob", action=Action.PURGE, targets=["inv_1bbbbbbbbbbbbbbbbbbbb"])
    by_user = client.get("/audit/?user=bob").content.decode()
    assert "inv_1bbbbbbbbbbbbbbbbbbbb" in by_user and "inv_1aaaaaaaaaaaaaaaaaaaa" not in by_user
    by_action = client.get("/audit/?action=cancel").content.decode()
    assert "inv_1aaaaaaaaaaaaaaaaaaaa" in by_action and "inv_1bbbbbbbbbbbbbbbbbbbb" not in by_action
    by_target = client.get("/audit/?invocation=inv_1bbbbbbbbbbbbbbbbbbbb").content.decode()
    assert "inv_1bbbbbbbbbbbbbbbbbbbb" in by_target and "inv_1aaaaaaaaaaaaaaaaaaaa" not in by_target


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("invocation=robert'); DROP TABLE", "not an invocation id"),
        ("job=-1", "job"),
        ("before=abc", "before"),
        ("action=explode", "action"),
        ("since=3000000-01-01", "since"),
    ],
)
def test_bad_filters_are_a_400_that_says_what_was_wrong(client: Any, query: str, says: str) -> None:
    response = client.get(f"/audit/?{query}")
    assert response.status_code == 400
    assert says in response.content.decode()


def test_pages_go_back_in_time_by_id(client: Any) -> None:
    from invocations.reads.selectors.audit import PAGE_SIZE

    made = [entry(targets=[f"inv_1{i:020d}"]) for i in range(PAGE_SIZE + 3)]
    first = client.get("/audit/").content.decode()
    assert made[-1].targets[0] in first and made[2].targets[0] not in first
    assert "Older entries" in first
    second = client.get(f"/audit/?before={made[3].id}").content.decode()
    assert made[2].targets[0] in second and made[0].targets[0] in second and made[3].targets[0] not in second


def test_anonymous_users_are_sent_to_login() -> None:
    from django.test import Client

    response = Client().get("/audit/")
    assert response.status_code == 302 and "/login/" in response["Location"]


@pytest.mark.django_db(transaction=True)
def test_a_new_entry_reaches_an_open_audit_page_within_its_filter() -> None:
    from asgiref.sync import async_to_sync
    from channels.db import database_sync_to_async
    from channels.routing import URLRouter
    from channels.testing import WebsocketCommunicator
    from django.contrib.auth.models import User

    from invocations import events
    from invocations.live.routing import websocket_urlpatterns

    user = User.objects.create_user("reader")

    async def scenario() -> tuple[str, str]:
        communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/audit/?user=carol")
        communicator.scope["user"] = user
        connected, _ = await communicator.connect(timeout=5)
        assert connected
        first = await communicator.receive_from(timeout=5)
        await database_sync_to_async(entry)(username="carol", targets=["inv_1ccccccccccccccccccccc"])
        await database_sync_to_async(entry)(username="dave", targets=["inv_1ddddddddddddddddddddd"])
        await database_sync_to_async(events.action_committed)(root_ids=[])
        pushed = await communicator.receive_from(timeout=5)
        await communicator.disconnect()
        return first, pushed

    first, pushed = async_to_sync(scenario)()
    assert 'id="audit-table" hx-swap-oob' in first and "inv_1cccc" not in first
    assert "inv_1ccccccccccccccccccccc" in pushed and "inv_1ddddddddddddddddddddd" not in pushed


def test_a_bad_filter_on_the_socket_is_refused() -> None:
    from asgiref.sync import async_to_sync
    from channels.routing import URLRouter
    from channels.testing import WebsocketCommunicator
    from django.contrib.auth.models import User

    from invocations.live.routing import websocket_urlpatterns

    user = User.objects.create_user("reader2")

    async def scenario() -> Any:
        communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/audit/?job=x")
        communicator.scope["user"] = user
        connected, code = await communicator.connect(timeout=5)
        return connected, code

    assert async_to_sync(scenario)() == (False, 4400)
