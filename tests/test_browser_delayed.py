"""/delayed/ in Chromium: real Restate with the demo's Orchestrator.later, the sync engine
run here, Redis carrying its broadcasts to Daphne. The countdowns tick, hovering a bar of
the chart shows its count and clicking it filters the list in place; a message that fires
leaves the page and one cancelled from the page leaves it too, without a reload (the page
is marked)."""

# ruff: noqa: F811  (the fixtures imported from the other browser tests are parameters here, as pytest wants)
from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest
from django.db import connection
from playwright.sync_api import expect

from invocations.mirror.models import Invocation
from invocations.mirror.sync.engine import SyncEngine
from invocations.operations.roles import Role, user_set_role
from invocations.restate import RestateClient, sql_literal
from tests.conftest import wait_completed, wait_for_restate
from tests.test_browser import page, redis_url  # noqa: F401  (fixtures used by name)
from tests.test_browser_live import mark_page, off_loop, same_document, sync_until
from tests.test_browser_operate import web  # noqa: F401  (Daphne that acts on the demo's Restate)

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def later(restate: RestateClient, engine: SyncEngine, seconds: list[float], nap_minutes: float = 0.0) -> list[str]:
    """Delayed sends of Sleeper.nap from Orchestrator.later, in our copy; their ids in fire order."""
    root = restate.send("Orchestrator", "later", payload={"seconds": seconds, "nap_minutes": nap_minutes})
    wait_completed(restate, root)
    rows = wait_for_restate(
        restate,
        f"SELECT id, scheduled_at, scheduled_start_at FROM sys_invocation WHERE invoked_by_id = {sql_literal(root)}",
        lambda rows: len(rows) == len(seconds),
    )
    ids = [r["id"] for r in sorted(rows, key=lambda r: r["scheduled_start_at"])]
    sync_until(
        engine,
        lambda: Invocation.objects.filter(id__in=ids, status="scheduled").count() == len(ids),
        "the delayed messages",
    )
    return ids


def seconds_left(text: str) -> int:
    """ "in 1 min 58 s" -> 118."""
    match = re.fullmatch(r"in (?:(\d+) min )?(\d+) s", text.strip())
    assert match, f"not a countdown: {text!r}"
    return int(match.group(1) or 0) * 60 + int(match.group(2))


def hinted(engine: SyncEngine) -> None:
    """The sync engine's re-read of what an action touched, off Playwright's loop (it broadcasts)."""

    def run() -> None:
        try:
            engine.sync_hinted()
        finally:
            connection.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(run).result()


def test_countdowns_tick_and_a_bar_of_the_chart_filters_the_list(
    page: Any, web: str, restate: RestateClient, engine: SyncEngine
) -> None:
    soon, also_soon, later_on = later(restate, engine, [150, 152, 1800])
    try:
        page.goto(f"{web}/delayed/?chart=hour&sender_service=Orchestrator&sender_handler=later")
        page.wait_for_selector("#live[data-state=live]")
        mark_page(page)
        countdown = page.locator(f"#delayed-{soon} time.countdown")
        first = seconds_left(countdown.inner_text())
        assert 100 < first <= 150
        time.sleep(2.5)
        second = seconds_left(countdown.inner_text())
        assert 1 <= first - second <= 4, (first, second)  # the page counts down by itself, once a second

        # The bar holding the two soon ones: hovering shows its count, clicking lists them alone.
        fire_at = datetime.fromisoformat(page.get_attribute(f"#delayed-{soon}", "data-fires") or "")
        bars = page.locator("svg.fires-chart a.fire-bar")
        holding = None
        for i in range(bars.count()):
            bar = bars.nth(i)
            start = datetime.fromisoformat(bar.get_attribute("data-start") or "")
            end = datetime.fromisoformat(bar.get_attribute("data-end") or "")
            if start <= fire_at < end:
                holding = bar
        assert holding is not None
        count = holding.get_attribute("data-count")
        assert count is not None and int(count) >= 2  # both soon ones (they may straddle a bucket edge: then 1)
        label = holding.locator("text.count")
        expect(label).to_be_hidden()
        holding.hover()
        expect(label).to_be_visible()
        expect(label).to_have_text(count)
        holding.click()
        page.wait_for_url(re.compile(r"fires_after=.*fires_before="))
        expect(page.locator("svg.fires-chart a.fire-bar.selected")).to_have_count(1)
        expect(page.locator(f"#delayed-{soon}")).to_be_visible()
        expect(page.locator(f"#delayed-{later_on}")).to_have_count(0)
        expect(page.locator("#delayed-table .summary")).to_contain_text(f"{count} pending delayed message")
        assert also_soon  # (in the same bucket unless the bucket's edge fell between them)
        assert same_document(page), "filtered in place, not by a reload"
        expect(page.locator("#live")).to_have_attribute("data-state", "live")  # the new filter's socket
    finally:
        for invocation_id in (soon, also_soon, later_on):
            restate.kill(invocation_id)


def test_a_message_leaves_the_page_live_when_it_fires_and_when_it_is_cancelled(
    page: Any, web: str, restate: RestateClient, engine: SyncEngine
) -> None:
    off_loop(lambda: user_set_role(username="browser", role=Role.OPERATOR))
    fires, stays = later(restate, engine, [8, 3600], nap_minutes=0.5)
    try:
        page.goto(f"{web}/delayed/?sender_service=Orchestrator&sender_handler=later")
        page.wait_for_selector("#live[data-state=live]")
        expect(page.locator(f"#delayed-{fires}")).to_be_visible()
        mark_page(page)

        # It fires: Restate starts it, the sync sees it running, the row leaves.
        wait_for_restate(
            restate,
            f"SELECT status FROM sys_invocation WHERE id = {sql_literal(fires)}",
            lambda rows: bool(rows) and rows[0]["status"] == "running",
            timeout=30,
        )
        sync_until(engine, lambda: Invocation.objects.filter(id=fires, status="running").exists(), "it running")
        expect(page.locator(f"#delayed-{fires}")).to_have_count(0)
        expect(page.locator(f"#delayed-{stays}")).to_be_visible()

        # Cancelled from its row: the confirmation, Restate's answer, and the row leaves.
        page.click(f"#delayed-{stays} a.act-cancel")
        dialog = page.locator("dialog.action-dialog.confirm")
        expect(dialog).to_contain_text(stays)
        dialog.locator("button.danger").click()
        result = page.locator("dialog.action-dialog.result")
        expect(result.locator(".words")).to_have_text("accepted")
        expect(result).to_contain_text("Cancelled at once")
        hinted(engine)
        expect(page.locator(f"#delayed-{stays}")).to_have_count(0)
        assert not restate.query(f"SELECT id FROM sys_invocation WHERE id = {sql_literal(stays)}")
        assert same_document(page), "the rows left in place, not by a reload"
    finally:
        for invocation_id in (fires, stays):
            restate.kill(invocation_id)
