"""Object queues in real Restate (the demo services): a Worker key held by a slow call,
with two more calls queued behind it, one from the ingress and one that a caller waits
on; synced into our copy and read through the pages."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from invocations.mirror.models import InvocationEdge, ObjectLock, QueuedInvocation
from invocations.mirror.sync.engine import SyncEngine
from invocations.restate import RestateClient, sql_literal
from tests.conftest import sync_until, wait_for_restate

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def restate_settings(settings: Any, demo_stack: Any) -> None:
    """The pages read the key's state from the demo's Restate."""
    settings.RESTATE_ADMIN_URL = demo_stack.admin_url
    settings.RESTATE_INGRESS_URL = demo_stack.ingress_url


def part(body: str, section: str) -> str:
    return body[body.index(f'<section id="{section}"') :].split("</section>")[0]


def kill_all(restate: RestateClient, ids: list[str]) -> None:
    for invocation_id in ids:
        restate.kill(invocation_id)  # one that completed already answers 409: nothing to do


def test_two_calls_queued_on_one_key_appear_in_their_order_behind_the_holder(
    restate: RestateClient, engine: SyncEngine, client: Client
) -> None:
    # A key no URL could carry as it is: a slash, a space, non-ASCII.
    key = f"queue/ é {uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    restate.call("Worker", "work", key=key, payload=0.0)  # leaves state behind: done = 1
    holder = restate.send("Worker", "work", key=key, payload=120.0)
    started: list[str] = [holder]
    try:
        wait_for_restate(
            restate,
            f"SELECT invocation_id FROM sys_keyed_service_status WHERE service_name = 'Worker' AND service_key = {sql_literal(key)}",
            lambda rows: [r["invocation_id"] for r in rows] == [holder],
        )
        first = restate.send("Worker", "work", key=key, payload=0.0)
        started.append(first)
        caller = restate.send("Orchestrator", "wait_worker", payload={"key": key, "seconds": 0.0})
        started.append(caller)
        inbox = wait_for_restate(
            restate,
            f"SELECT id, sequence_number FROM sys_inbox WHERE service_name = 'Worker' AND service_key = {sql_literal(key)} "
            "ORDER BY sequence_number",
            lambda rows: len(rows) == 2,
        )
        assert inbox[0]["id"] == first
        second = inbox[1]["id"]
        sync_until(
            engine,
            lambda: (
                QueuedInvocation.objects.filter(service_key=key).count() == 2
                and ObjectLock.objects.filter(service_key=key, invocation_id=holder).exists()
                and InvocationEdge.objects.filter(caller_id=caller, callee_id=second, kind="call").exists()
            ),
            what="the holder, both queued calls and the caller's call edge in our copy",
        )
        t_synced = time.monotonic()

        # The key's page: the holder, then the two in Restate's order, and who waits on each.
        response = client.get(reverse("invocations:object", args=["Worker", key]))
        assert response.status_code == 200
        body = response.content.decode()
        queue = part(body, "object-queue")
        assert queue.index(holder) < queue.index(first) < queue.index(second)
        assert "took the lock" in queue
        rows = response.context["queue"]
        assert [(r.position, r.invocation_id, r.handler) for r in rows] == [(1, first, "work"), (2, second, "work")]
        assert rows[0].sequence_number < rows[1].sequence_number
        assert rows[0].waiting == [] and "no invocation: it came from the ingress" in queue
        assert [w.id for w in rows[1].waiting] == [caller], "the caller waits on the second, and it is the root"
        assert "Orchestrator/wait_worker" in queue[queue.index(f'id="queued-{second}"') :].split("</tr>")[0]
        # The state, read from Restate as the page was drawn.
        state = part(body, "object-state")
        assert "read from Restate's <code>state</code> table at" in state and "Could not read" not in state
        assert "<code>done</code>" in state and "JSON" in state and "<pre>1</pre>" in state
        recent = part(body, "object-recent")
        assert holder in recent and first in recent and second in recent

        # /objects/: the key with its queue of 2 and its holder.
        listing = client.get("/objects/?service=Worker")
        (row,) = [r for r in listing.context["rows"] if r.key == key]
        assert row.queue_length == 2 and row.holder_id == holder and row.holder_handler == "work"
        assert row.holder_since is not None and row.oldest_queued_at is not None
        assert reverse("invocations:object", args=["Worker", key]) in listing.content.decode()

        # The queued call's own page: its place and the holder it waits behind, in the header and its tree row.
        detail = client.get(f"/invocations/{second}/").content.decode()
        header = part(detail, "inv-header")
        assert "position 2 of 2 on" in header and holder in header and "which holds the lock" in header
        tree = part(detail, "inv-tree")
        row_html = tree[tree.index(f'id="node-{second}"') :].split("\n")[0]
        assert f"position 2 of 2, behind {holder}" in row_html
        assert "position 1 of 2" in part(client.get(f"/invocations/{first}/").content.decode(), "inv-header")
        held = part(client.get(f"/invocations/{holder}/").content.decode(), "inv-header")
        assert "holds the lock of" in held and "2 calls queued behind it" in held
        print(f"\nqueued and synced in {t_synced - t0:.1f} s; pages checked in {time.monotonic() - t_synced:.1f} s")
    finally:
        kill_all(restate, started)  # killing the caller kills the call it waits on
    wait_for_restate(
        restate,
        f"SELECT id FROM sys_invocation WHERE target_service_key = {sql_literal(key)} AND status != 'completed'",
        lambda rows: not rows,
    )
    sync_until(
        engine,
        lambda: (
            not QueuedInvocation.objects.filter(service_key=key).exists()
            and not ObjectLock.objects.filter(service_key=key).exists()
        ),
        what="the key's queue and lock gone from our copy",
    )
    assert "Nobody holds the lock." in client.get(reverse("invocations:object", args=["Worker", key])).content.decode()
