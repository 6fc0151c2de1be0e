"""Breaking a deadlock from /deadlocks/ in Chromium: the demo's hop objects deadlock
across two keys in real Restate, a real `sync_restate` process (with its deadlock
detector) finds the cycle, the operator clicks the page's one button, and the cycle
leaves the page without a reload."""

# ruff: noqa: F811  (the fixtures imported from other test modules are parameters here, as pytest wants)
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from invocations.operations.roles import Role, user_set_role
from invocations.restate import RestateClient, sql_list, sql_literal
from tests.conftest import wait_for_restate
from tests.test_browser import page, redis_url  # noqa: F401  (fixtures used by name)
from tests.test_browser_live import mark_page, off_loop, same_document
from tests.test_browser_operate import sync_process, web  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def test_an_operator_breaks_a_deadlock_with_the_button_and_it_leaves_the_page(
    page: Any, web: str, restate: RestateClient, demo_stack: Any, redis_url: str, tmp_path: Path
) -> None:
    off_loop(lambda: user_set_role(username="browser", role=Role.OPERATOR))
    key = f"dl-{uuid.uuid4().hex[:10]}"
    root = restate.send("Alpha", "hop", key=key, payload=["Beta", "Alpha"])
    (queued,) = wait_for_restate(
        restate,
        f"SELECT id FROM sys_inbox WHERE service_name = 'Alpha' AND service_key = {sql_literal(key)}",
        lambda rows: len(rows) == 1,
    )
    members = sorted(
        r["id"] for r in restate.query(f"SELECT id FROM sys_invocation WHERE target_service_key = {sql_literal(key)}")
    )
    sync = sync_process(tmp_path, redis_url, demo_stack)
    try:
        page.goto(f"{web}/deadlocks/")
        page.wait_for_selector("#live[data-state=live]")
        mark_page(page)
        # Found by the sync process's detector, pushed to the open page.
        card = page.locator("article.deadlock", has=page.locator(f"#member-{root}"))
        expect(card).to_be_visible(timeout=20_000)
        for member in members:
            expect(card.locator(f"#member-{member}")).to_be_visible()
        expect(card.locator("svg.deadlock-graph g.edges .edge-queued")).to_have_count(1)
        # The youngest is the call queued back on Alpha/key: it is the one suggested.
        expect(card.locator(".suggestion h3 code")).to_have_text(queued["id"])
        expect(card.locator(".suggestion .why")).to_contain_text("youngest")
        expect(card.locator(".suggestion .reach-none")).to_be_visible()
        # Every page's header counts the current deadlocks and links here (other tests may
        # have left theirs in the shared Restate: only this one's leaving is asserted).
        badge = page.locator("#sync-state a.deadlock-alert")
        expect(badge).to_contain_text("deadlock")
        before = int(badge.inner_text().split()[0])
        card.locator("form.break button").click()
        expect(page.locator("dialog.action-dialog.result .words")).to_have_text("accepted")
        # The cycle breaks in Restate, the sync re-reads it, the detector marks it broken,
        # and the page drops it by itself.
        expect(card).to_have_count(0, timeout=20_000)
        if before == 1:
            expect(page.locator("#deadlocks-list .none-now")).to_be_visible()
            expect(badge).to_have_count(0)
        else:
            expect(badge).to_have_text(f"{before - 1} deadlock{'s' if before - 1 != 1 else ''}")
        expect(page.locator(f"table.deadlocks-resolved a[href='/invocations/{root}/']")).to_be_visible()
        assert same_document(page), "no reload"
        wait_for_restate(
            restate,
            f"SELECT id FROM sys_invocation WHERE status <> 'completed' AND id IN {sql_list(members)}",
            lambda rows: not rows,
        )
    finally:
        sync.stop()
        restate.kill(root)
