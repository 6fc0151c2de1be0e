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
    since = datetime.now(UTC) - timedelta(seconds=1)
    ids = fire_long(restate, 60)
    for _ in range(60):
        sync_step(engine)
        if Invocation.objects.filter(id__in=ids, status="running").count() == len(ids):
            break
    filters = InvocationFilters(service="Orchestrator", handler="long", created_after=since)

    page.goto(f"{web}/invocations/?{filters.query_string()}")
    page.wait_for_selector("#live[data-state=live]")
    page.select_option("form.bulk-action select[name=action]", "cancel")
    page.click("form.bulk-action button[type=submit]")
    preview = page.locator("#bulk-preview")
    expect(preview).to_contain_text("60 of 60 matching")
    preview.locator("button[type=submit]").click()
    page.wait_for_url(f"{web}/jobs/*/")
    job = BulkJob.objects.get()
    assert job.total == 60 and job.created_by == "browser"
    progress = page.locator("#job-progress")
    expect(progress).to_contain_text("Queued")
    expect(progress).to_contain_text("0%")
    expect(progress.locator("button", has_text="Stop job")).to_be_visible()
    expect(page.locator("#job-items tbody tr.item-pending")).to_have_count(60)
    page.wait_for_selector("#live[data-state=live]")

    # From here the page is not reloaded: every change arrives over the websocket.
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
    # The worker starts only now, with small batches and slowed PATCHes, so the bar moves in steps.
    proxy = CountingProxy(demo_stack.admin_url, patch_delay_s=0.5)
    db = connection.settings_dict
    worker = spawn(
        "bulk worker",
        [sys.executable, "manage.py", "procrastinate", "worker", "--queues", BULK_QUEUE],
        tmp_path / "worker.log",
        {
            "DATABASE_URL": f"postgresql://{db['USER']}:@/{db['NAME']}?host={db['HOST']}",
            "REDIS_URL": redis_url,
            "RESTATE_ADMIN_URL": proxy.url,
            "RESTATE_INGRESS_URL": demo_stack.ingress_url,
            "BULK_BATCH_SIZE": "10",
        },
    )
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
