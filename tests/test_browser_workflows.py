"""The workflow pages live in Chromium: real Restate with the demo's Signup workflow, the sync
engine run here, Redis carrying its broadcasts to Daphne. A workflow's page shows its promise
turn from pending to resolved with its value and its run complete; /workflows/ shows a new
run arrive and complete; neither reloads (the page is marked)."""

# ruff: noqa: F811  (the fixtures imported from the other browser tests are parameters here, as pytest wants)
from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from playwright.sync_api import expect

from demo import traffic
from invocations.mirror.models import Invocation, WorkflowPromise
from invocations.mirror.sync.engine import SyncEngine
from invocations.restate import RestateClient, sql_literal
from tests.conftest import wait_completed, wait_for_restate
from tests.test_browser import page, redis_url  # noqa: F401  (fixtures used by name)
from tests.test_browser_live import mark_page, same_document, sync_step, sync_until
from tests.test_browser_operate import web  # noqa: F401  (Daphne that reads the demo's Restate)

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def awaiting_its_promise(restate: RestateClient, run: str) -> None:
    wait_for_restate(
        restate,
        f"SELECT entry_type FROM sys_journal WHERE id = {sql_literal(run)}",
        lambda rows: any(r["entry_type"] == "Command: GetPromise" for r in rows),
    )


def kill_unfinished(restate: RestateClient, workflow_id: str) -> None:
    for row in restate.query(
        f"SELECT id FROM sys_invocation WHERE target_service_key = {sql_literal(workflow_id)} AND status != 'completed'"
    ):
        restate.kill(row["id"])


def test_a_workflow_page_shows_its_promise_resolve_and_its_run_complete_live(
    page: Any, web: str, restate: RestateClient, engine: SyncEngine
) -> None:
    wf = traffic.new_key("browser-wf")
    run = restate.send("Signup", "run", key=wf, payload=f"{wf}@example.com")
    try:
        awaiting_its_promise(restate, run)
        sync_until(
            engine,
            lambda: (
                WorkflowPromise.objects.filter(service_key=wf, completed=False).exists()
                and Invocation.objects.filter(id=run).exists()
            ),
            "the run and its pending promise",
        )
        page.goto(web + reverse("invocations:workflow", args=["Signup", wf]))
        page.wait_for_selector("#live[data-state=live]")
        promise = page.locator("#workflow-promises tr[data-promise='confirmed']")
        expect(promise).to_have_attribute("data-state", "pending")
        expect(page.locator("#workflow-run")).not_to_have_attribute("data-status", "completed")
        expect(page.locator("#object-state")).to_contain_text("waiting for confirmation")
        mark_page(page)

        # The test resolves the promise: the page follows without a reload.
        confirm = restate.send("Signup", "confirm", key=wf, payload=f"code-{wf}")
        wait_completed(restate, run)
        sync_until(
            engine,
            lambda: (
                WorkflowPromise.objects.filter(service_key=wf, completed=True).exists()
                and Invocation.objects.filter(id=run, status="completed").exists()
            ),
            "the promise resolved and the run completed",
        )
        expect(promise).to_have_attribute("data-state", "resolved")
        expect(promise).to_contain_text(f'"code-{wf}"')
        expect(page.locator("#workflow-run")).to_have_attribute("data-status", "completed")
        expect(page.locator("#workflow-run .workflow-run-line")).to_contain_text("succeeded")
        expect(page.locator("#workflow-run .retention-end")).to_be_visible()
        expect(page.locator("#inv-stuck")).to_have_count(0)
        expect(page.locator(f"#interaction-{confirm}")).to_be_visible()
        expect(page.locator("#object-state")).to_contain_text('"confirmed"')
        assert same_document(page), "changed in place, not by a reload"
    finally:
        kill_unfinished(restate, wf)


def test_workflows_shows_a_new_run_arrive_and_complete_live(
    page: Any, web: str, restate: RestateClient, engine: SyncEngine
) -> None:
    sync_step(engine)  # the catalog: the filter names a workflow service our copy knows
    page.goto(f"{web}/workflows/?service=Signup")
    page.wait_for_selector("#live[data-state=live]")
    mark_page(page)
    wf = traffic.new_key("browser-wfs")
    run = restate.send("Signup", "run", key=wf, payload=f"{wf}@example.com")
    try:
        awaiting_its_promise(restate, run)
        sync_until(engine, lambda: Invocation.objects.filter(id=run).exists(), "the new run")
        row = page.locator(f"#run-{run}")
        expect(row).to_be_visible()
        expect(row).not_to_have_attribute("data-status", "completed")
        restate.send("Signup", "confirm", key=wf, payload="code")
        wait_completed(restate, run)
        sync_until(engine, lambda: Invocation.objects.filter(id=run, status="completed").exists(), "it completed")
        expect(row).to_have_attribute("data-status", "completed")
        expect(page.locator("#workflows-table .chip[data-status='completed'] b")).not_to_have_text("0")
        assert same_document(page)
    finally:
        kill_unfinished(restate, wf)
