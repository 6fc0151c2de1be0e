"""The first page, against real PostgreSQL: newest first, keyset pages, sync state."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client

from invocations.models import Invocation, SyncState
from tests.factories import T0, build_invocation, invocation_id


def make_invocations(n: int, *, same_time: bool = False) -> list[Invocation]:
    """n invocations, odd ones completed (250 ms), even ones running; one second apart unless same_time."""
    rows = [
        build_invocation(
            id=invocation_id("test", i),
            status="completed" if i % 2 else "running",
            created_at=T0 if same_time else T0 + timedelta(seconds=i),
        )
        for i in range(n)
    ]
    return Invocation.objects.bulk_create(rows)


def test_requires_login(db: None) -> None:
    response = Client().get("/invocations/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_newest_first_and_keyset_pages_cover_every_row_once(client: Client) -> None:
    # Same created_at for all: the id breaks ties, so no row is skipped or repeated.
    made = make_invocations(120, same_time=True)
    seen: list[str] = []
    url = "/invocations/"
    pages = 0
    while url:
        response = client.get(url)
        assert response.status_code == 200
        page = response.context["page"]
        seen.extend(inv.id for inv in page.rows)
        pages += 1
        url = f"/invocations/?after={page.next_cursor.encode()}" if page.next_cursor else ""
    assert pages == 3
    assert seen == sorted((inv.id for inv in made), reverse=True)


def test_rows_show_target_status_duration_and_parent(client: Client) -> None:
    parent, child = make_invocations(2)
    Invocation.objects.filter(id=child.id).update(parent_id=parent.id, root_id=parent.id, invoked_by="service")
    body = client.get("/invocations/").content.decode()
    assert "Greeter/greet" in body
    assert "250 ms" in body  # completed_at - created_at
    assert parent.id in body and child.id in body
    assert 'class="status">running' in body


def test_htmx_request_gets_only_the_table(client: Client) -> None:
    make_invocations(3)
    full = client.get("/invocations/").content.decode()
    partial = client.get("/invocations/", headers={"HX-Request": "true"}).content.decode()
    assert "<html" in full and "<html" not in partial
    assert 'id="results"' in partial


@pytest.mark.parametrize("cursor", ["garbage", "2026-13-01T00:00:00~inv_1x", "2026-11-22T12:00:00~inv_1x", "~"])
def test_bad_cursor_is_a_clear_400(client: Client, cursor: str) -> None:
    response = client.get("/invocations/", {"after": cursor})
    assert response.status_code == 400
    assert "cursor" in response.content.decode()


def test_sync_state_is_visible(client: Client) -> None:
    SyncState.objects.update_or_create(
        id=1,
        defaults={
            "last_success_at": T0,
            "mirrored_as_of": T0,
            "last_duration_s": 0.12,
            "last_rows": 42,
            "consecutive_failures": 3,
            "last_error": "RestateUnavailable: cannot reach Restate",
            "last_error_at": T0,
        },
    )
    body = client.get("/invocations/").content.decode()
    assert "42 rows read" in body
    assert "Sync failing (3 failures" in body and "cannot reach Restate" in body


def test_empty_state_says_what_is_going_on(client: Client) -> None:
    body = client.get("/invocations/").content.decode()
    assert "No invocations in our copy yet" in body
    assert "Not synced yet" in body


def test_database_down_is_a_503_page_not_a_500(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    # A fake only for "the server went away": the real one cannot be stopped under a test transaction.
    from django.db import OperationalError

    from invocations.reads.selectors import invocations as selectors

    def gone(**_kwargs: object) -> None:
        raise OperationalError("server closed the connection unexpectedly / could not connect to server")

    monkeypatch.setattr(selectors, "invocation_list", gone)
    response = client.get("/invocations/")
    assert response.status_code == 503
    assert "PostgreSQL database is not answering" in response.content.decode()
    assert response["Retry-After"] == "5"
