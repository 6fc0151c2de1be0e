"""Live updates: consumers via WebsocketCommunicator against real PostgreSQL,
the broadcast after a sync step, and the same across processes through a real
Redis server (the one `make run` uses)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User
from django.db import connection
from django.test import override_settings

from dashboard import embedded_redis
from demo.stack import free_port
from invocations.live.routing import websocket_urlpatterns
from invocations.mirror import events
from invocations.models import Invocation, SyncState

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent


def make(n: int, **fields: Any) -> Invocation:
    created = fields.pop("created_at", T0 + timedelta(seconds=n))
    inv_id = f"inv_1live{n:04d}AAAAAAAAAAAAAAAAAAAAAAAA"
    values: dict[str, Any] = {
        "id": inv_id,
        "root_id": inv_id,
        "target": "Greeter/greet",
        "service_name": "Greeter",
        "handler_name": "greet",
        "service_type": "service",
        "status": "running",
        "invoked_by": "ingress",
        "created_at": created,
        "modified_at": created,
        "first_seen_at": created,
        "synced_at": created,
    }
    values.update(fields)
    return Invocation.objects.create(**values)


async def _session(path: str, user: Any, steps: Any) -> list[str]:
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path)
    communicator.scope["user"] = user
    connected, code = await communicator.connect(timeout=5)
    received: list[str] = []
    try:
        if not connected:
            return [f"closed:{code}"]
        received.append(await communicator.receive_from(timeout=5))
        for step in steps:
            await database_sync_to_async(step)()
            # A step's broadcast is two messages: the sync indicator, then the rows.
            received.append(await communicator.receive_from(timeout=10) + await communicator.receive_from(timeout=10))
    finally:
        await communicator.disconnect()
    return received


def run_session(path: str, user: Any, *steps: Any) -> list[str]:
    return async_to_sync(_session)(path, user, steps)


@pytest.fixture
def user(transactional_db: None) -> User:
    return User.objects.create_user("live")


def test_anonymous_socket_is_refused(transactional_db: None) -> None:
    assert run_session("/ws/invocations/", AnonymousUser()) == ["closed:4401"]


def test_bad_filters_close_the_socket(user: User) -> None:
    assert run_session("/ws/invocations/?status=exploded", user) == ["closed:4400"]


def test_list_gets_current_state_on_connect_then_changes_after_a_step(user: User) -> None:
    shown = make(1)
    since = shown.created_at.isoformat()
    SyncState.objects.update_or_create(id=1, defaults={"last_success_at": T0, "mirrored_as_of": T0, "last_rows": 7})

    def a_sync_step_commits() -> None:
        make(2)  # newer than the page: counted, not inserted
        make(3, service_name="Other", target="Other/x")  # does not match the filter
        Invocation.objects.filter(id=shown.id).update(status="completed", completed_at=T0 + timedelta(seconds=2))
        events.sync_step_committed(changed_ids=[shown.id, "inv_1live0002AAAAAAAAAAAAAAAAAAAAAAAA"])

    first, update = run_session(f"/ws/invocations/?service=Greeter&since={since}", user, a_sync_step_commits)
    # Subscribed first, then the current state: nothing new yet, and the sync indicator.
    assert 'id="new-banner" hx-swap-oob="outerHTML"' in first and "new invocation" not in first
    assert 'id="sync-state" hx-swap-oob="outerHTML"' in first and "7 rows read" in first
    # After the step: a count instead of a reshuffle, and the visible row updated in place.
    assert "1 new invocation" in update
    assert f'id="row-{shown.id}" hx-swap-oob="outerHTML"' in update
    assert 'class="status">completed' in update
    assert "Other/x" not in update


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
    inv = make(1)
    settings_dict = connection.settings_dict
    database_url = f"postgresql://{settings_dict['USER']}:@/{settings_dict['NAME']}?host={settings_dict['HOST']}"
    layers = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [redis_url]}}}

    def another_process_syncs() -> None:
        Invocation.objects.filter(id=inv.id).update(status="suspended")
        script = (
            "import django; django.setup(); from invocations.mirror import events; "
            f"events.sync_step_committed(changed_ids=[{inv.id!r}])"
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
        _first, update = run_session(
            f"/ws/invocations/?since={inv.created_at.isoformat()}", user, another_process_syncs
        )
    assert 'id="sync-state" hx-swap-oob' in update
    assert f'id="row-{inv.id}" hx-swap-oob="outerHTML"' in update and 'class="status">suspended' in update


def test_detail_page_tree_updates_when_any_node_of_its_tree_changes(user: User) -> None:
    root = make(1, status="suspended")
    child = make(2, parent_id=root.id, root_id=root.id, invoked_by="service")

    def the_child_completes() -> None:
        Invocation.objects.filter(id=child.id).update(status="completed", completed_at=T0 + timedelta(seconds=3))
        Invocation.objects.filter(id=root.id).update(status="completed", completed_at=T0 + timedelta(seconds=4))
        events.sync_step_committed(changed_ids=[child.id, root.id])

    first, update = run_session(f"/ws/invocations/{root.id}/", user, the_child_completes)
    assert 'id="inv-header" hx-swap-oob="outerHTML"' in first and 'id="inv-tree" hx-swap-oob="outerHTML"' in first
    assert child.id in first, "the whole tree is sent on connect"
    assert 'id="inv-tree" hx-swap-oob="outerHTML"' in update
    assert "completed" in update.split('id="inv-header"')[1].split("</section>")[0]


def test_unknown_invocation_socket_is_closed(user: User) -> None:
    assert run_session("/ws/invocations/inv_1nothereAAAAAAAAAAAAAAAAAAAAAAAAA/", user) == ["closed:4404"]
