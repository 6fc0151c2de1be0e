"""Pushed, not polled, in the browser: the dashboard's Daphne is also the receiver the
session's Restate exports its spans to; a real `sync_restate` polls only every 5 minutes,
so a row that changes status in place within seconds was carried by the spans' hints.
The sync line says the mirror is in push mode."""

# ruff: noqa: F811  (the fixtures imported from test_browser are parameters here, as pytest wants)
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import override_settings
from playwright.sync_api import expect

from demo.stack import start_web
from invocations.mirror.models import Invocation, InvocationSpan, SyncState
from invocations.restate import RestateClient
from tests.conftest import TRACES_TOKEN
from tests.test_browser import PASSWORD, page, redis_url  # noqa: F401  (fixtures used by name)
from tests.test_browser_live import mark_page, off_loop, same_document
from tests.test_trace_feed_restate import _database_url, pushing_sync, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.browser]


@pytest.fixture
def web(transactional_db: None, redis_url: str, tmp_path: Path, demo_stack: Any, traces_port: int) -> Iterator[str]:
    """The pages and /v1/traces, on the port the session's Restate exports to."""
    User.objects.create_user("browser", password=PASSWORD)
    env = {
        "DATABASE_URL": _database_url(),
        "REDIS_URL": redis_url,
        "RESTATE_ADMIN_URL": demo_stack.admin_url,
        "RESTATE_INGRESS_URL": demo_stack.ingress_url,
        "TRACES_TOKEN": TRACES_TOKEN,
    }
    server = start_web(traces_port, tmp_path / "daphne.log", env)
    layers = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [redis_url]}}}
    with override_settings(CHANNEL_LAYERS=layers):
        yield f"http://127.0.0.1:{traces_port}"
    server.stop()


def test_retries_appear_as_attempt_bars_and_a_row_turns_completed_in_place_while_the_poll_waits_minutes(
    page: Any, web: str, restate: RestateClient, demo_stack: Any, redis_url: str, tmp_path: Path
) -> None:
    """One setup, two things the spans carry: a Flaky invocation's attempts (each failed attempt
    a bar, backing off between them, redrawn in place on its detail page), and a list row's
    status. Polls are 5 minutes apart: within seconds, only the spans' hints explain them."""
    minutes = {"SYNC_MIN_INTERVAL_S": "300", "SYNC_MAX_INTERVAL_S": "300", "SYNC_SAFETY_NET_S": "300"}
    started: list[str] = []
    try:
        with pushing_sync(tmp_path, demo_stack, restate, db=off_loop, REDIS_URL=redis_url, **minutes) as log:
            steps = off_loop(lambda: SyncState.objects.get().last_success_at)
            _attempts_appear(page, web, restate, log, steps, tmp_path, started)
            _row_turns_completed(page, web, restate, log, steps)
    finally:
        for inv in started:
            restate.kill(inv)  # a Flaky invocation would retry for minutes in the session's Restate


def _row_turns_completed(page: Any, web: str, restate: RestateClient, log: Path, steps: Any) -> None:
    nap = restate.send("Sleeper", "nap", payload=0.08)  # ~5 s
    off_loop(lambda: wait_until(lambda: Invocation.objects.filter(id=nap, status="running").exists(),
                                timeout=5, what="the nap, running, through its start span", log=log))  # fmt: skip
    page.goto(f"{web}/invocations/?service=Sleeper")
    page.wait_for_selector("#live[data-state=live]")
    expect(page.locator("#feed-mode")).to_have_attribute("data-mode", "push")
    expect(page.locator("#feed-mode")).to_contain_text("Live from Restate's spans")
    row = f"#row-{nap}"
    expect(page.locator(f"{row} .status")).to_have_text("running")
    mark_page(page)

    t0 = time.monotonic()
    expect(page.locator(f"{row} .status")).to_have_text("completed", timeout=20_000)
    assert same_document(page), "the row changed in place, not by a reload"
    assert off_loop(lambda: SyncState.objects.get().last_success_at) == steps, "no full step ran meanwhile"
    waited = time.monotonic() - t0
    assert waited < 15, f"{waited:.1f}s"


def _attempts_appear(
    page: Any, web: str, restate: RestateClient, log: Path, steps: Any, tmp_path: Path, started: list[str]
) -> None:
    flaky = restate.send("Flaky", "fail", payload="charge-attempts")
    started.append(flaky)
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
