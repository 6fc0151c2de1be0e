"""Browser test of a bulk job: an operator runs a bulk cancel from the list's filter
in Chromium and watches the progress bar reach 100% live, while a real procrastinate
worker (its own process) runs the job and Redis carries its progress to Daphne."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from demo.counting_proxy import CountingProxy
from demo.stack import spawn
from invocations.mirror.models import Invocation
from invocations.mirror.sync.engine import SyncEngine
from invocations.operations.roles import Role, user_set_role
from invocations.operations.tasks import BULK_QUEUE
from invocations.reads.filters import InvocationFilters
from invocations.records.models import BulkJob, JobState
from invocations.restate import RestateClient, sql_list
from tests.conftest import wait_for_restate
from tests.test_browser import page, redis_url, sync_step, web  # noqa: F401 - fixtures
from tests.test_bulk_jobs import fire_long

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def start_worker(tmp_path: Path, redis: str, admin_url: str, ingress_url: str) -> Any:
    """A real bulk worker (its own process) on the test database, in batches of 10."""
    db = connection.settings_dict
    return spawn(
        "bulk worker",
        [sys.executable, "manage.py", "procrastinate", "worker", "--queues", BULK_QUEUE],
        tmp_path / "worker.log",
        {
            "DATABASE_URL": f"postgresql://{db['USER']}:@/{db['NAME']}?host={db['HOST']}",
            "REDIS_URL": redis,
            "RESTATE_ADMIN_URL": admin_url,
            "RESTATE_INGRESS_URL": ingress_url,
            "BULK_BATCH_SIZE": "10",
        },
    )


def start_from_the_list(tab: Any, base: str, filters: InvocationFilters, *, expected: int) -> BulkJob:
    from playwright.sync_api import expect

    tab.goto(f"{base}/invocations/?{filters.query_string()}")
    tab.wait_for_selector("#live[data-state=live]")
    tab.select_option("form.bulk-action select[name=action]", "cancel")
    tab.click("form.bulk-action button[type=submit]")
    preview = tab.locator("#bulk-preview")
    expect(preview).to_contain_text(f"{expected} of {expected} matching")
    preview.locator("button[type=submit]").click()
    tab.wait_for_url(f"{base}/jobs/*/")
    return BulkJob.objects.latest("id")


def running_long(restate: RestateClient, engine: SyncEngine, n: int) -> tuple[list[str], InvocationFilters]:
    since = datetime.now(UTC) - timedelta(seconds=1)
    ids = fire_long(restate, n)
    for _ in range(60):
        sync_step(engine)
        if Invocation.objects.filter(id__in=ids, status="running").count() == len(ids):
            break
    return ids, InvocationFilters(service="Orchestrator", handler="long", created_after=since)


def test_an_operator_runs_a_bulk_cancel_from_the_list_and_watches_it_finish_live(
    page: Any,  # noqa: F811
    web: str,  # noqa: F811
    redis_url: str,  # noqa: F811
    restate: RestateClient,
    engine: SyncEngine,
    demo_stack: Any,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    user_set_role(username="browser", role=Role.OPERATOR)
    ids, filters = running_long(restate, engine, 60)
    job = start_from_the_list(page, web, filters, expected=60)
    assert BulkJob.objects.count() == 1
    assert job.total == 60 and job.created_by == "browser"
    progress = page.locator("#job-progress")
    expect(progress).to_contain_text("Queued")
    expect(progress).to_contain_text("0%")
    expect(progress.locator("button", has_text="Stop job")).to_be_visible()
    expect(page.locator("#job-items tbody tr.item-pending")).to_have_count(60)
    page.wait_for_selector("#live[data-state=live]")
    # A second tab on the jobs' history, which follows the job too.
    tab = page.context.browser.new_context(viewport={"width": 1400, "height": 900})
    tab.add_cookies(page.context.cookies())  # the same login
    history = tab.new_page()
    history.goto(f"{web}/jobs/")
    history_row = history.locator(f"#job-{job.id}")
    expect(history_row).to_contain_text("Queued")
    expect(history.locator("#live")).to_have_attribute("data-state", "live")

    # From here the page is not reloaded: every change arrives over the websocket.
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
    # The worker starts only now, with small batches and slowed PATCHes, so the bar moves in steps.
    proxy = CountingProxy(demo_stack.admin_url, patch_delay_s=0.5)
    worker = start_worker(tmp_path, redis_url, proxy.url, demo_stack.ingress_url)
    try:
        expect(progress).to_contain_text("Running", timeout=30_000)
        expect(progress).to_contain_text("100%", timeout=60_000)
        expect(progress).to_contain_text("Finished")
        expect(progress).to_contain_text("60 succeeded")
        expect(progress.locator("progress")).to_have_attribute("value", "60")
        # The results table and the stop button follow the job too, without a reload.
        expect(page.locator("#job-items tbody tr.item-pending")).to_have_count(0)
        expect(page.locator("#job-items tbody tr.item-succeeded")).to_have_count(60)
        expect(progress.locator("button", has_text="Stop job")).to_have_count(0)
        expect(history_row).to_contain_text("Finished")
        expect(history_row).to_contain_text("60 / 60")
    finally:
        worker.stop()
        proxy.close()
    assert navigations == [], navigations
    job.refresh_from_db()
    assert job.state == JobState.FINISHED and job.succeeded == 60
    wait_for_restate(
        restate,
        f"SELECT id FROM sys_invocation WHERE id IN {sql_list(ids)} AND completion_failure = '[409] cancelled'",
        lambda rows: len(rows) == 60,
    )
    # "Show these invocations": the list filtered to the job's snapshot.
    page.goto(f"{web}/jobs/{job.id}/")
    page.click("text=Show these invocations")
    page.wait_for_url(f"**/invocations/?job={job.id}")
    expect(page.locator("#results")).to_contain_text(f"bulk job {job.id}")


def test_an_operator_stops_a_running_job_from_its_page(
    page: Any,  # noqa: F811
    web: str,  # noqa: F811
    redis_url: str,  # noqa: F811
    restate: RestateClient,
    engine: SyncEngine,
    demo_stack: Any,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    user_set_role(username="browser", role=Role.OPERATOR)
    ids, filters = running_long(restate, engine, 40)
    job = start_from_the_list(page, web, filters, expected=40)
    progress = page.locator("#job-progress")
    page.wait_for_selector("#live[data-state=live]")
    # Slow PATCHes (2 s each batch of 10): the stop lands while the job runs.
    proxy = CountingProxy(demo_stack.admin_url, patch_delay_s=2.0)
    worker = start_worker(tmp_path, redis_url, proxy.url, demo_stack.ingress_url)
    try:
        expect(progress).to_contain_text("Running", timeout=30_000)
        progress.locator("button", has_text="Stop job").click()
        expect(progress).to_contain_text("Stopped", timeout=30_000)
        expect(progress.locator("button", has_text="Stop job")).to_have_count(0)
        expect(page.locator("#job-items tbody tr.item-skipped").first).to_contain_text("Stopped by browser")
    finally:
        worker.stop()
        proxy.close()
    job.refresh_from_db()
    assert job.state == JobState.STOPPED and job.skipped > 0 and job.succeeded + job.skipped == 40
    # What the job did not send is still running in Restate.
    still = restate.query(f"SELECT id FROM sys_invocation WHERE id IN {sql_list(ids)} AND status <> 'completed'")
    assert len(still) == job.skipped
    for row in still:
        restate.kill(row["id"])
