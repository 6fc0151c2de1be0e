"""Live updates in a real browser: Chromium (Playwright) against Daphne, real Restate
with the demo services, PostgreSQL, and Redis carrying the sync engine's broadcasts
(the engine runs here, in the test process). Each test marks the window after the
page loaded: a reload would lose the mark, so "changed without a reload" is checked,
not assumed."""

# ruff: noqa: F811  (the fixtures imported from test_browser are parameters here, as pytest wants)
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import connection

from demo import traffic
from invocations.mirror.sync.engine import SyncEngine
from invocations.models import Invocation
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


def sync_until(engine: SyncEngine, condition: Any, what: str) -> None:
    for _ in range(60):
        sync_step(engine)
        if condition():
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
    page.wait_for_function(f"document.querySelector('{row} .status').textContent === 'completed'")
    assert same_document(page), "the row changed in place, not by a reload"
    text = page.inner_text(row)
    assert "no longer matches the filter" in text, "a status=running list says the row left the filter"
    assert page.evaluate("window.__oobErrors") == 0
