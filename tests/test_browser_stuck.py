"""/stuck/ live in Chromium: real Restate with the demo services, the sync engine in this
process, Redis to Daphne. A reason's group appears when an invocation starts waiting and
leaves when it stops, in the open page, without a reload."""

# ruff: noqa: F811  (the fixtures imported from test_browser are parameters here, as pytest wants)
from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from demo import traffic
from invocations.mirror.models import Invocation
from invocations.mirror.sync.engine import SyncEngine
from invocations.reads.selectors.stuck import waiting_q
from invocations.restate import RestateClient, sql_literal
from tests.conftest import wait_completed, wait_for_restate
from tests.test_browser import page, redis_url, web  # noqa: F401  (fixtures used by name)
from tests.test_browser_live import mark_page, off_loop, same_document, sync_until

pytestmark = [pytest.mark.integration, pytest.mark.browser]

BACKING_OFF = "tr.stuck-group[data-reason='backing-off'][data-service='Flaky'][data-handler='fail']"
SLEEPING = "tr.stuck-group[data-reason='wait-sleep'][data-status='running'][data-service='Sleeper'][data-handler='nap']"


def test_stuck_groups_appear_and_leave_live(page: Any, web: str, restate: RestateClient, engine: SyncEngine) -> None:
    (failing,) = traffic.fire_failing(restate)
    nap = None
    try:
        wait_for_restate(
            restate,
            f"SELECT status FROM sys_invocation WHERE id = {sql_literal(failing)}",
            lambda rows: bool(rows) and rows[0]["status"] == "backing-off",
        )
        sync_until(
            engine,
            lambda: Invocation.objects.filter(id=failing, status="backing-off").exists(),
            "the failing invocation backing off",
        )
        page.goto(f"{web}/stuck/")
        page.wait_for_selector("#live[data-state=live]")
        expect(page.locator(BACKING_OFF).first).to_be_visible()
        assert page.locator(SLEEPING).count() == 0
        mark_page(page)

        # A count appears: a nap starts sleeping.
        nap = restate.send("Sleeper", "nap", payload=5)
        wait_for_restate(
            restate,
            f"SELECT entry_type FROM sys_journal WHERE id = {sql_literal(nap)}",
            lambda rows: any(r["entry_type"] == "Command: Sleep" for r in rows),
        )
        sync_until(
            engine,
            lambda: Invocation.objects.filter(id=nap, journal_synced_size__gte=2).exists(),
            "the nap's sleep in our copy",
        )
        row = page.locator(SLEEPING)
        expect(row).to_have_count(1)
        expected = off_loop(
            lambda: (
                Invocation.objects.filter(status="running", service_name="Sleeper", handler_name="nap")
                .filter(waiting_q("sleep"))
                .count()
            )
        )
        expect(row).to_have_attribute("data-count", str(expected))
        # Its target opens the oldest of the group: this nap, unless another test's is older.
        assert nap in (row.locator("td:nth-child(2) a").get_attribute("href") or "") or expected > 1

        # A group leaves: the failing invocation is killed, so nothing of Flaky/fail backs off.
        restate.kill(failing)
        wait_completed(restate, failing)
        sync_until(
            engine, lambda: Invocation.objects.filter(id=failing, status="completed").exists(), "the kill in our copy"
        )
        left = off_loop(
            lambda: Invocation.objects.filter(status="backing-off", service_name="Flaky", handler_name="fail").count()
        )
        if left:  # another test's Flaky invocation still retries: the group stays, one fewer
            expect(page.locator(BACKING_OFF).first).to_have_attribute("data-count", str(left))
        else:
            expect(page.locator(BACKING_OFF)).to_have_count(0)
        assert same_document(page), "the page changed in place, not by a reload"
    finally:
        restate.kill(failing)
        if nap is not None:
            restate.kill(nap)
