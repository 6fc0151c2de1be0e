"""Attempts as bars, in the browser, from a real Restate: a Flaky invocation fails on every
attempt and backs off (1 s, 2 s, 4 s ...); each attempt's span reaches the dashboard's
receiver, the sync re-reads the invocation (its hint), and the open detail page redraws its
Attempts section and its waterfall row in place with one more failed attempt each time, while
the poll waits minutes."""

# ruff: noqa: F811  (the fixtures imported from test_browser are parameters here, as pytest wants)
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from invocations.mirror.models import Invocation, InvocationSpan, SyncState
from invocations.restate import RestateClient
from tests.test_browser import page, redis_url  # noqa: F401  (fixtures used by name)
from tests.test_browser_live import mark_page, off_loop, same_document
from tests.test_browser_trace_feed import web  # noqa: F401  (the pages and /v1/traces on one Daphne)
from tests.test_trace_feed_restate import pushing_sync, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def test_a_flaky_invocations_retries_appear_as_attempt_bars(
    page: Any, web: str, restate: RestateClient, demo_stack: Any, redis_url: str, tmp_path: Path
) -> None:
    # Polls 5 minutes apart: each attempt's bar within seconds was carried by its span.
    minutes = {"SYNC_MIN_INTERVAL_S": "300", "SYNC_MAX_INTERVAL_S": "300", "SYNC_SAFETY_NET_S": "300"}
    flaky = ""
    try:
        with pushing_sync(tmp_path, demo_stack, restate, db=off_loop, REDIS_URL=redis_url, **minutes) as log:
            steps = off_loop(lambda: SyncState.objects.get().last_success_at)
            flaky = restate.send("Flaky", "fail", payload="charge-attempts")
            off_loop(lambda: wait_until(lambda: Invocation.objects.filter(id=flaky).exists(),
                                        timeout=15, what="the flaky invocation in our copy", log=log))  # fmt: skip
            page.goto(f"{web}/invocations/{flaky}/")
            page.wait_for_selector("#live[data-state=live]")
            mark_page(page)

            # Retries 1 s, 2 s, 4 s apart: three failed attempts within ~4 s, each its own row and bar.
            failed_rows = page.locator("#inv-attempts tr.attempt.outcome-failed")
            expect(failed_rows).to_have_count(3, timeout=20_000)
            assert same_document(page), "the attempts arrived by the live refresh, not a reload"
            assert off_loop(lambda: SyncState.objects.get().last_success_at) == steps, "no full step ran meanwhile"
            first = failed_rows.nth(0)
            # Restate 1.7.12's attempt span says "transient failure", not the handler's error
            # (that is the invocation's last failure, in the header).
            expect(first.locator(".outcome")).to_have_text("failed: transient failure")
            expect(first).to_contain_text("backing off")
            stored = off_loop(lambda: InvocationSpan.objects.filter(invocation_id=flaky, kind="attempt").first())
            assert stored is not None and stored.deployment_id
            expect(first).to_contain_text(stored.deployment_id)

            # The strip and the waterfall row: failed attempts with backing off between them.
            strip = page.locator("#inv-attempts .attempt-strip")
            assert strip.locator(".seg-attempt-failed").count() >= 3
            assert strip.locator(".seg-backing-off").count() >= 2
            title = strip.locator(".seg-attempt-failed").first.get_attribute("title") or ""
            assert title.startswith("attempt 1: ran ") and "failed: transient failure" in title, title
            row = page.locator(f"#node-{flaky}")
            assert row.locator(".seg-attempt-failed").count() >= 3
            assert row.locator(".bar").count() == 0, "a row with spans is drawn as its attempts"
            page.screenshot(path=str(tmp_path / "attempts.png"), full_page=True)
    finally:
        if flaky:
            restate.kill(flaky)  # it would retry for minutes in the session's Restate
