"""Live updates: consumers via WebsocketCommunicator against real PostgreSQL,
the broadcast after a sync step, the detail page's HTTP refresh, and the same
across processes through a real Redis server (the one `make run` uses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User
from django.core.cache import cache
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext

from dashboard import embedded_redis
from demo.stack import free_port
from invocations import events
from invocations.live import fragments
from invocations.live.routing import websocket_urlpatterns
from invocations.models import Invocation, InvocationEdge, SyncState
from tests.factories import T0, create_invocation, invocation_id
from tests.test_detail_page import ROOT as TREE_ROOT
from tests.test_detail_page import iid, inv

ROOT = Path(__file__).resolve().parent.parent


def make(n: int, **fields: Any) -> Invocation:
    """Running Greeter/greet invocation number `n`, created n seconds after T0."""
    fields.setdefault("created_at", T0 + timedelta(seconds=n))
    fields.setdefault("status", "running")
    fields.setdefault("retry_count", 0)
    fields.setdefault("id", invocation_id("live", n))
    return create_invocation(**fields)


@dataclass
class Session:
    first: str = ""  # what the server sends on connect
    hello_reply: str = ""  # what it sends once the page named its rows
    updates: list[str] = field(default_factory=list)  # everything after each step, joined per step
    closed: int | None = None


async def _gather(communicator: WebsocketCommunicator) -> str:
    """Every message until the socket has been quiet for a moment (a step sends one to three)."""
    parts = [await communicator.receive_from(timeout=10)]
    while not await communicator.receive_nothing(timeout=0.5):
        parts.append(await communicator.receive_from(timeout=5))
    return "".join(parts)


async def _session(path: str, user: Any, rows: list[str] | None, steps: tuple[Callable[[], None], ...]) -> Session:
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path)
    communicator.scope["user"] = user
    connected, code = await communicator.connect(timeout=5)
    session = Session()
    try:
        if not connected:
            session.closed = code
            return session
        session.first = await communicator.receive_from(timeout=5)
        if rows is not None:
            await communicator.send_to(text_data=json.dumps({"rows": rows}))
            if rows:
                session.hello_reply = await _gather(communicator)
        for step in steps:
            await database_sync_to_async(step)()
            session.updates.append(await _gather(communicator))
    finally:
        await communicator.disconnect()
    return session


def run_session(path: str, user: Any, *steps: Callable[[], None], rows: list[str] | None = None) -> Session:
    return async_to_sync(_session)(path, user, rows, steps)


@pytest.fixture
def user(transactional_db: None) -> User:
    cache.clear()  # live refreshes are cached per invocation id, and tests reuse ids
    return User.objects.create_user("live")


def test_anonymous_socket_is_refused(transactional_db: None) -> None:
    assert run_session("/ws/invocations/", AnonymousUser()).closed == 4401


def test_bad_filters_close_the_socket(user: User) -> None:
    assert run_session("/ws/invocations/?status=exploded", user).closed == 4400


# ------------------------------------------------------------------ list page


def test_list_swaps_the_rows_it_shows_in_place_and_counts_new_ones(user: User) -> None:
    shown = make(1)
    not_on_page = make(0, created_at=T0 - timedelta(hours=1))  # matches, but on another page
    since = shown.created_at.isoformat()
    SyncState.objects.update_or_create(id=1, defaults={"last_success_at": T0, "mirrored_as_of": T0, "last_rows": 7})

    def a_sync_step_commits() -> None:
        new = make(2)  # newer than the page: counted, not inserted
        other = make(3, service_name="Other", target="Other/x")  # does not match the filter
        Invocation.objects.filter(id__in=[shown.id, not_on_page.id]).update(
            status="completed", completed_at=T0 + timedelta(seconds=2)
        )
        events.sync_step_committed(changed_ids=[shown.id, not_on_page.id, new.id, other.id])

    s = run_session(f"/ws/invocations/?service=Greeter&since={since}", user, a_sync_step_commits, rows=[shown.id])
    # Subscribed first, then the current state: nothing new yet, and the sync indicator.
    assert 'id="new-banner" hx-swap-oob="outerHTML"' in s.first and "new invocation" not in s.first
    assert 'id="sync-state" hx-swap-oob="outerHTML"' in s.first and "7 rows read" in s.first
    # Once the page named its rows: their current state (what changed before it subscribed).
    assert f'<template><tr id="row-{shown.id}" hx-swap-oob="outerHTML"' in s.hello_reply
    (update,) = s.updates
    assert "1 new invocation" in update
    # The row is wrapped in <template>: a bare <tr> outside a table is parsed away by the browser.
    row = update[update.index(f'<template><tr id="row-{shown.id}" hx-swap-oob="outerHTML"') :]
    assert 'class="status">completed' in row.split("</template>")[0] and "no longer matches" not in row
    assert not_on_page.id not in update, "a row the page does not show is not sent (it would have no target)"
    assert "Other/x" not in update


def test_a_row_that_leaves_the_status_filter_is_updated_and_marked(user: User) -> None:
    shown = make(1)

    def it_completes() -> None:
        Invocation.objects.filter(id=shown.id).update(status="completed", completed_at=T0 + timedelta(seconds=2))
        events.sync_step_committed(changed_ids=[shown.id])

    s = run_session(
        f"/ws/invocations/?status=running&since={shown.created_at.isoformat()}", user, it_completes, rows=[shown.id]
    )
    assert "no longer matches" not in s.hello_reply
    row = s.updates[0][s.updates[0].index(f'<tr id="row-{shown.id}"') :].split("</tr>")[0]
    assert 'class="status">completed' in row and " stale" in row and "no longer matches the filter" in row


def test_new_banner_is_capped_and_only_on_the_newest_first_first_page(transactional_db: None) -> None:
    for n in range(1, 106):
        make(n)
    query = {"since": [T0.isoformat()]}
    view = fragments.ListView.from_query(query)
    assert view is not None and view.counts_new
    assert "100+ new invocations" in view.current_state()
    for elsewhere in ({"sort": ["created"]}, {"paged": ["1"]}, {}):  # oldest first, page 2, no `since`
        view = fragments.ListView.from_query(query | elsewhere if elsewhere else {})
        assert view is not None and not view.counts_new
        assert "new invocation" not in view.current_state()


def test_new_count_after_a_step_looks_only_at_what_the_step_changed(transactional_db: None) -> None:
    shown = make(1)
    view = fragments.ListView.from_query({"since": [shown.created_at.isoformat()]})
    assert view is not None
    view.show([shown.id])
    view.current_state()
    new = make(2)
    with CaptureQueriesContext(connection) as queries:
        html = view.changes([new.id, shown.id])
    assert "1 new invocation" in html
    counts = [q["sql"] for q in queries if "created_at" in q["sql"] and '"id" IN' in q["sql"]]
    assert counts, "the count is restricted to the changed ids"
    assert not any("COUNT(" in q["sql"].upper() for q in queries)
    # The same row changing again is not counted twice (and an unchanged banner is not re-sent).
    assert view.changes([new.id]) == ""
    assert view.new_ids == {new.id}


@pytest.fixture
def redis_url(tmp_path: Path) -> Any:
    port = free_port()
    proc = embedded_redis.start(tmp_path / "redis", port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(5)


def test_a_sync_process_reaches_a_web_process_through_redis(user: User, redis_url: str) -> None:
    """The sync engine and the web server are separate processes in production."""
    shown = make(1)
    settings_dict = connection.settings_dict
    database_url = f"postgresql://{settings_dict['USER']}:@/{settings_dict['NAME']}?host={settings_dict['HOST']}"
    layers = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [redis_url]}}}

    def another_process_syncs() -> None:
        Invocation.objects.filter(id=shown.id).update(status="suspended")
        script = (
            "import django; django.setup(); from invocations import events; "
            f"events.sync_step_committed(changed_ids=[{shown.id!r}])"
        )
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "DJANGO_SETTINGS_MODULE": "dashboard.settings",
        }
        result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr.decode()[-2000:]

    with override_settings(CHANNEL_LAYERS=layers):
        s = run_session(
            f"/ws/invocations/?since={shown.created_at.isoformat()}", user, another_process_syncs, rows=[shown.id]
        )
    (update,) = s.updates
    assert 'id="sync-state" hx-swap-oob' in update
    assert f'<tr id="row-{shown.id}" hx-swap-oob="outerHTML"' in update and 'class="status">suspended' in update


# ------------------------------------------------------------------ detail page


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_detail_socket_signals_a_change_and_the_page_fetches_it(user: User) -> None:
    root = make(1, status="suspended")
    child = make(2, parent_id=root.id, root_id=root.id, invoked_by="service")
    SyncState.objects.update_or_create(id=1, defaults={"last_success_at": T0, "mirrored_as_of": T0})
    rendered = int((T0 + timedelta(seconds=1)).timestamp() * 1000)  # after the last step: nothing missed

    def the_child_completes() -> None:
        Invocation.objects.filter(id=child.id).update(status="completed", completed_at=T0 + timedelta(seconds=3))
        Invocation.objects.filter(id=root.id).update(status="completed", completed_at=T0 + timedelta(seconds=4))
        events.sync_step_committed(changed_ids=[child.id, root.id])

    s = run_session(f"/ws/invocations/{root.id}/?rendered={rendered}", user, the_child_completes)
    assert 'id="sync-state"' in s.first and "inv-changed" not in s.first, "nothing changed since the render"
    (update,) = s.updates
    assert child.id not in update, "the socket carries a signal, never the tree"
    signal = update[update.index('<div id="inv-changed"') :].split("</div>")[0]
    url = signal.split('data-url="')[1].split('"')[0]
    assert url.startswith(f"/invocations/{root.id}/live/?t=")

    body = _client(user).get(url, headers={"HX-Request": "true"}).content.decode()
    header = body[body.index('<section id="inv-header" hx-swap-oob="outerHTML"') :].split("</section>")[0]
    assert 'data-status="completed">completed' in header
    tree = body[body.index('<section id="inv-tree" hx-swap-oob="outerHTML"') :]
    assert f'id="node-{child.id}"' in tree and "status-completed" in tree


def test_detail_socket_signals_on_connect_when_a_step_landed_after_the_render(user: User) -> None:
    root = make(1)
    SyncState.objects.update_or_create(id=1, defaults={"last_success_at": T0 + timedelta(seconds=5)})
    rendered = int(T0.timestamp() * 1000)
    assert '<div id="inv-changed"' in run_session(f"/ws/invocations/{root.id}/?rendered={rendered}", user).first


def _ten_thousand_node_tree() -> None:
    """The tree of tests/test_detail_page.py::test_ten_thousand_nodes_render_bounded."""
    rows = [inv(TREE_ROOT)]
    for i in range(100):
        parent = iid(f"p{i:03d}")
        rows.append(inv(parent, parent=TREE_ROOT, at=i))
        rows += [
            inv(iid(f"p{i:03d}c{j:02d}"), parent=parent, at=i + j / 100, status="running" if j % 7 else "completed")
            for j in range(99)
        ]
    Invocation.objects.bulk_create(rows, batch_size=2000)


def test_first_message_for_a_ten_thousand_node_tree_is_small(user: User, capsys: pytest.CaptureFixture[str]) -> None:
    _ten_thousand_node_tree()
    SyncState.objects.update_or_create(id=1, defaults={"last_success_at": T0, "mirrored_as_of": T0})
    # A page rendered before the last step: the first message carries the change signal too.
    s = run_session(f"/ws/invocations/{TREE_ROOT}/?rendered=1", user)
    size = len(s.first.encode())
    assert '<div id="inv-changed"' in s.first
    assert size < 4096, "Daphne closes a socket whose message is over 1 MiB; this one was 1.25 MB"
    with capsys.disabled():
        print(f"\n10,001-node tree: first websocket message {size} bytes")


def test_live_refresh_is_rendered_once_for_every_reader_of_a_change(
    user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    from invocations.reads.presenters import detail as detail_presenter

    root = make(1)
    renders: list[str] = []
    real = detail_presenter.detail_context

    def counting(invocation_id: str, **kwargs: Any) -> dict[str, Any]:
        renders.append(invocation_id)
        return real(invocation_id, **kwargs)

    monkeypatch.setattr(detail_presenter, "detail_context", counting)
    client = _client(user)
    announced = int(datetime.now(UTC).timestamp() * 1000)
    first = client.get(f"/invocations/{root.id}/live/?t={announced}").content
    second = client.get(f"/invocations/{root.id}/live/?t={announced}").content
    assert first == second and len(renders) == 1
    # A change announced after that render needs a new one.
    later = int(datetime.now(UTC).timestamp() * 1000) + 1
    client.get(f"/invocations/{root.id}/live/?t={later}")
    assert len(renders) == 2
    # A reader who opened a "show more" row has a render of its own.
    client.get(f"/invocations/{root.id}/live/?t={announced}&expand={root.id}:50:")
    assert len(renders) == 3
    assert client.get("/invocations/nonsense/live/").status_code == 400


def test_live_refresh_keeps_show_more_rows_opened(user: User) -> None:
    parent = iid("big")
    Invocation.objects.bulk_create(
        [inv(TREE_ROOT), inv(parent, parent=TREE_ROOT, at=1)]
        + [inv(iid(f"k{i:04d}"), parent=parent, at=2 + i) for i in range(130)]
    )
    InvocationEdge.objects.bulk_create(
        [
            InvocationEdge(
                caller_id=parent,
                journal_index=i,
                callee_id=iid(f"k{i:04d}"),
                kind="call",
                target_service="Greeter",
                target_handler="greet",
            )
            for i in range(130)
        ]
    )
    client = _client(user)
    plain = client.get(f"/invocations/{TREE_ROOT}/live/").content.decode()
    assert "show 80 more" in plain and f"node-{iid('k0050')}" not in plain
    opened = client.get(f"/invocations/{TREE_ROOT}/live/?expand={parent}:50:").content.decode()
    # The placeholder is replaced by the rows it stood for (its own "show more" after them).
    assert "show 80 more" not in opened and "show 30 more" in opened
    assert f"node-{iid('k0050')}" in opened and f"node-{iid('k0099')}" in opened
    assert opened.count("<details") == opened.count("</details>")
    twice = client.get(f"/invocations/{TREE_ROOT}/live/?expand={parent}:50:&expand={parent}:100:").content.decode()
    assert "show" not in twice.split('class="waterfall"')[1] and f"node-{iid('k0129')}" in twice


def test_unknown_invocation_socket_is_closed(user: User) -> None:
    assert run_session("/ws/invocations/inv_1nothereAAAAAAAAAAAAAAAAAAAAAAAAA/", user).closed == 4404
