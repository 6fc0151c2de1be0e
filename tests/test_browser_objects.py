"""The object pages live in Chromium: real Restate with the demo's Worker object, the sync
engine run here, Redis carrying its broadcasts to Daphne. A key's page shows a new call
join the queue and the queue drain when the holder finishes; /objects/ shows a key appear
with its queue and leave once it is free; neither reloads (the page is marked)."""

# ruff: noqa: F811  (the fixtures imported from the other browser tests are parameters here, as pytest wants)
from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.urls import reverse
from playwright.sync_api import expect

from invocations.mirror.models import ObjectLock, QueuedInvocation
from invocations.mirror.sync.engine import SyncEngine
from invocations.restate import RestateClient, sql_literal
from tests.conftest import wait_for_restate
from tests.test_browser import page, redis_url  # noqa: F401  (fixtures used by name)
from tests.test_browser_live import mark_page, same_document, sync_step, sync_until
from tests.test_browser_operate import web  # noqa: F401  (Daphne that reads the demo's Restate)

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def inbox(restate: RestateClient, key: str, size: int) -> list[str]:
    rows = wait_for_restate(
        restate,
        f"SELECT id FROM sys_inbox WHERE service_name = 'Worker' AND service_key = {sql_literal(key)} ORDER BY sequence_number",
        lambda rows: len(rows) == size,
    )
    return [r["id"] for r in rows]


def held_by(restate: RestateClient, key: str, holder: str) -> None:
    wait_for_restate(
        restate,
        f"SELECT invocation_id FROM sys_keyed_service_status WHERE service_name = 'Worker' AND service_key = {sql_literal(key)}",
        lambda rows: [r["invocation_id"] for r in rows] == [holder],
    )


def test_a_key_page_follows_its_queue_live(page: Any, web: str, restate: RestateClient, engine: SyncEngine) -> None:
    key = f"browser/{uuid.uuid4().hex[:8]}"
    holder = restate.send("Worker", "work", key=key, payload=8.0)
    held_by(restate, key, holder)
    first = restate.send("Worker", "work", key=key, payload=0.0)
    inbox(restate, key, 1)
    sync_until(engine, lambda: QueuedInvocation.objects.filter(service_key=key).count() == 1, "the first queued call")

    page.goto(web + reverse("invocations:object", args=["Worker", key]))
    page.wait_for_selector(f"#queued-{first}")
    page.wait_for_selector("#live[data-state=live]")
    expect(page.locator(".object-holder")).to_contain_text(holder)
    mark_page(page)

    # A new call joins the queue: it appears behind the first, in sequence order.
    second = restate.send("Worker", "work", key=key, payload=0.0)
    inbox(restate, key, 2)
    sync_until(engine, lambda: QueuedInvocation.objects.filter(service_key=key).count() == 2, "the second queued call")
    expect(page.locator(f"#queued-{second} .position")).to_have_text("2")
    expect(page.locator(f"#queued-{first} .position")).to_have_text("1")

    # The holder finishes (8 s): the queue drains and nobody holds the key.
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
        "the queue drained",
    )
    expect(page.locator(f"#queued-{first}")).to_have_count(0)
    expect(page.locator("#object-queue")).to_contain_text("Nothing queued on this key.")
    expect(page.locator(".object-holder")).to_contain_text("Nobody holds the lock.")
    # The calls that ran are among the key's recent invocations, and the state shows what they did.
    expect(page.locator("#object-recent")).to_contain_text(second)
    print(
        "STATE IN RESTATE",
        restate.query(
            f"SELECT key, value_utf8 FROM state WHERE service_name = 'Worker' AND service_key = {sql_literal(key)}"
        ),
    )
    print("HTML", page.inner_html("#object-state"))
    expect(page.locator("#object-state")).to_contain_text("done")
    assert same_document(page), "changed in place, not by a reload"


def test_objects_shows_a_busy_key_arrive_and_leave_live(
    page: Any, web: str, restate: RestateClient, engine: SyncEngine
) -> None:
    key = f"browser-list-{uuid.uuid4().hex[:8]}"
    sync_step(engine)  # the catalog: a filter names a service our copy knows
    page.goto(f"{web}/objects/?service=Worker")
    page.wait_for_selector("#live[data-state=live]")
    mark_page(page)
    row = f"tr.object-row[data-key='{key}']"
    assert page.locator(row).count() == 0

    holder = restate.send("Worker", "work", key=key, payload=120.0)
    started = [holder]
    try:
        held_by(restate, key, holder)
        started.append(restate.send("Worker", "work", key=key, payload=0.0))
        inbox(restate, key, 1)
        sync_until(engine, lambda: QueuedInvocation.objects.filter(service_key=key).exists(), "the key's queue")
        expect(page.locator(f"{row} .queue-length")).to_have_text("1")
        expect(page.locator(f"{row} .holder")).to_contain_text(holder)
    finally:
        for invocation_id in started:
            restate.kill(invocation_id)
    sync_until(engine, lambda: not ObjectLock.objects.filter(service_key=key).exists(), "the key free again")
    expect(page.locator(row)).to_have_count(0)
    assert same_document(page)
