"""Live updates in a real browser: Chromium (Playwright) against Daphne, real Restate
with the demo services, PostgreSQL, and Redis carrying the sync engine's broadcasts
(the engine runs here, in the test process). Each test marks the window after the
page loaded: a reload would lose the mark, so "changed without a reload" is checked,
not assumed."""

# ruff: noqa: F811  (the fixtures imported from test_browser are parameters here, as pytest wants)
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from playwright.sync_api import expect

from demo import traffic
from invocations.mirror.sync.engine import SyncEngine
from invocations.models import Invocation, SyncState
from invocations.restate import RestateClient, sql_literal
from tests.conftest import wait_completed, wait_for_restate
from tests.test_browser import page, redis_url, web  # noqa: F401  (fixtures used by name)

pytestmark = [pytest.mark.integration, pytest.mark.browser]

# Before any page script: count htmx's "out-of-band swap found no target" errors
# (every list row swap failed this way when rows were sent as bare <tr>s).
COUNT_OOB_ERRORS = """
window.__oobErrors = 0;
document.addEventListener("htmx:oobErrorNoTarget", () => { window.__oobErrors += 1; });
"""


def mark_page(page: Any) -> None:
    page.evaluate("window.__sameDocument = true")


def same_document(page: Any) -> bool:
    return page.evaluate("window.__sameDocument === true")


def status_text(page: Any, selector: str) -> str:
    return page.evaluate(f"document.querySelector({selector!r}).textContent")


def sync_step(engine: SyncEngine) -> None:
    """One sync step off this thread (its broadcast must not run in Playwright's event loop)."""

    def step() -> None:
        try:
            engine.sync_once()
        finally:
            connection.close()  # the worker's own: left open, it outlives the test database

    with ThreadPoolExecutor(1) as pool:
        pool.submit(step).result()


def off_loop(func: Any) -> Any:
    """Run an ORM call on a worker thread that closes its connection: made from Playwright's
    greenlet, it would open a connection nobody closes, which blocks the test database's teardown."""

    def call() -> Any:
        try:
            return func()
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result()


def sync_until(engine: SyncEngine, condition: Any, what: str) -> None:
    for _ in range(60):
        sync_step(engine)
        if off_loop(condition):
            return
    pytest.fail(f"the sync never saw {what}")


def running_in_restate(restate: RestateClient, invocation_id: str) -> None:
    wait_for_restate(
        restate,
        f"SELECT status FROM sys_invocation WHERE id = {sql_literal(invocation_id)}",
        lambda rows: bool(rows) and rows[0]["status"] == "running",
    )


def test_list_row_changes_status_in_place_and_is_marked_when_it_leaves_the_filter(
    page: Any,
    web: str,
    restate: RestateClient,
    engine: SyncEngine,
) -> None:
    # Orchestrator.long -> Sleeper.nap for ~5 s: running, then completed.
    root = traffic.fire_long(restate, minutes=0.08)[0]
    running_in_restate(restate, root)
    sync_until(engine, lambda: Invocation.objects.filter(id=root, status="running").exists(), "it running")

    page.add_init_script(COUNT_OOB_ERRORS)
    page.goto(f"{web}/invocations/?status=running")
    row = f"#row-{root}"
    page.wait_for_selector(row)
    page.wait_for_selector("#live[data-state=live]")
    assert status_text(page, f"{row} .status") == "running"
    mark_page(page)

    wait_completed(restate, root)
    sync_until(engine, lambda: Invocation.objects.filter(id=root, status="completed").exists(), "it complete")
    # Locator waits, not wait_for_function: the page's CSP forbids the eval that one needs.
    expect(page.locator(f"{row} .status")).to_have_text("completed")
    assert same_document(page), "the row changed in place, not by a reload"
    text = page.inner_text(row)
    assert "no longer matches the filter" in text, "a status=running list says the row left the filter"
    assert page.evaluate("window.__oobErrors") == 0


def test_detail_tree_updates_live_and_keeps_a_collapsed_subtree_and_the_scroll(
    page: Any,
    web: str,
    restate: RestateClient,
    engine: SyncEngine,
) -> None:
    root = traffic.fire_long(restate, minutes=0.08)[0]
    (child,) = (
        r["id"]
        for r in wait_for_restate(
            restate,
            f"SELECT id FROM sys_invocation WHERE invoked_by_id = {sql_literal(root)}",
            lambda rows: len(rows) == 1,
        )
    )
    sync_until(engine, lambda: Invocation.objects.filter(id=child, root_id=root).exists(), "the child in the tree")

    page.set_viewport_size({"width": 1400, "height": 420})  # short, so the page scrolls
    page.add_init_script(COUNT_OOB_ERRORS)
    page.goto(f"{web}/invocations/{root}/")
    page.wait_for_selector(f"#node-{child}")
    page.wait_for_selector("#live[data-state=live]")
    # The reader collapses the root's subtree (a click on its row, away from the links)...
    page.click(f"details#node-{root} > summary .wf-when")
    assert page.evaluate(f"document.getElementById('node-{root}').open") is False
    assert not page.is_visible(f"#node-{child}")
    # Chrome's own scroll anchoring would cover for the page here; not every browser has it.
    page.evaluate("document.documentElement.style.overflowAnchor = 'none'")
    # ...and scrolls so the tree sits near the top. Spacers stand for a long journal below and
    # for a header that will change height above (the update replaces the header without it).
    page.evaluate("document.body.insertAdjacentHTML('beforeend', '<div style=\"height:2000px\"></div>')")
    page.evaluate(
        "document.getElementById('inv-header').insertAdjacentHTML('beforeend', '<div style=\"height:300px\"></div>')"
    )
    page.evaluate(
        f"window.scrollTo(0, document.getElementById('node-{root}').getBoundingClientRect().top + scrollY - 40)"
    )
    row_top = f"document.getElementById('node-{root}').getBoundingClientRect().top"
    before = page.evaluate(row_top)
    assert abs(before - 40) < 1 and page.evaluate("window.scrollY") > 0
    mark_page(page)

    wait_completed(restate, root)
    sync_until(engine, lambda: Invocation.objects.filter(id=child, status="completed").exists(), "the nap complete")
    # The hidden child's row is updated all the same, and the header says so too.
    expect(page.locator(f"#node-{child} .status").first).to_have_text("completed")
    expect(page.locator("#inv-header .status").first).to_have_text("completed")
    assert same_document(page)
    assert page.evaluate(f"document.getElementById('node-{root}').open") is False, "the subtree stays collapsed"
    # The header above it was replaced (and changed height): the row the reader looks at stays put.
    assert abs(page.evaluate(row_top) - before) < 1
    assert page.evaluate("window.__oobErrors") == 0


def test_sync_indicator_turns_stale_on_its_own_when_the_sync_stops(page: Any, web: str) -> None:
    # The last step 26 s ago; with the default pacing (10 s between steps at most) the
    # indicator turns stale 30 s after it. Nothing is running that could send a message.
    now = timezone.now()
    off_loop(
        lambda: SyncState.objects.update_or_create(
            id=1,
            defaults={
                "last_success_at": now - timedelta(seconds=26),
                "mirrored_as_of": now - timedelta(seconds=26),
                "last_duration_s": 0.0,
                "consecutive_failures": 0,
            },
        )
    )
    page.goto(f"{web}/invocations/")
    page.wait_for_selector("#sync-state.ok")
    assert not page.is_visible("#sync-state .stale-note")
    mark_page(page)
    page.wait_for_selector("#sync-state.stale", timeout=15_000)
    assert page.is_visible("#sync-state .stale-note") and "No sync step since" in page.inner_text("#sync-state")
    assert same_document(page)


def test_the_detail_header_shows_a_new_status_from_the_socket_before_its_fetch_returns(
    page: Any, web: str, restate: RestateClient, engine: SyncEngine
) -> None:
    """The sync's broadcast carries each changed row's status: the header's status changes from
    the socket's message alone. Here every fetch of the header and tree is held back, so only
    the message can explain it; the rest of the header (the "succeeded" mark) waits for the fetch."""
    root = traffic.fire_long(restate, minutes=0.05)[0]
    running_in_restate(restate, root)
    sync_until(engine, lambda: Invocation.objects.filter(id=root, status="running").exists(), "it running")
    page.goto(f"{web}/invocations/{root}/")
    page.wait_for_selector("#live[data-state=live]")
    expect(page.locator("#inv-status")).to_have_text("running")
    mark_page(page)

    held: list[Any] = []
    holding = [True]

    def hold(route: Any) -> None:
        if holding[0]:
            held.append(route)
        else:
            route.continue_()

    page.route(f"**/invocations/{root}/live/**", hold)
    wait_completed(restate, root)
    sync_until(engine, lambda: Invocation.objects.filter(id=root, status="completed").exists(), "it complete")
    expect(page.locator("#inv-status")).to_have_text("completed")
    expect(page.locator("#inv-status")).to_have_attribute("data-status", "completed")
    assert held, "the page asked for its header and tree too"
    assert page.locator("#inv-header .ok").count() == 0, "the header's redraw was held back"
    assert same_document(page)

    holding[0] = False
    for route in held:
        route.continue_()
    expect(page.locator("#inv-header .ok")).to_have_text("succeeded")
