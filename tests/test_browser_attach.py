"""Browser: attach on a running workflow's page, reload it (the wait goes on), resolve
its promise, and the result appears in the page without a further reload (pushed from the attach worker through Redis
to the web process's socket)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from demo.stack import ManagedProcess
from invocations.mirror.sync.engine import SyncEngine
from invocations.restate import RestateClient
from tests.conftest import wait_for_restate
from tests.test_attach import start_attach_worker
from tests.test_browser import page, redis_url, sync_step, web  # noqa: F401 - fixtures

pytestmark = [pytest.mark.integration, pytest.mark.browser]


@pytest.fixture
def attach_worker(web: str, redis_url: str, demo_stack: Any, tmp_path: Path) -> Iterator[ManagedProcess]:  # noqa: F811
    proc = start_attach_worker(tmp_path / "attach-worker.log", demo_stack.ingress_url, {"REDIS_URL": redis_url})
    yield proc
    proc.stop()


def test_attach_shows_the_result_the_moment_it_completes(
    page: Any,  # noqa: F811
    web: str,  # noqa: F811
    attach_worker: ManagedProcess,
    restate: RestateClient,
    engine: SyncEngine,
) -> None:
    from playwright.sync_api import expect

    wf_id = f"browser-{uuid.uuid4().hex[:8]}"
    run = restate.send("Signup", "run", key=wf_id, payload=f"{wf_id}@example.com")
    wait_for_restate(
        restate,
        f"SELECT status FROM sys_invocation WHERE id = '{run}'",
        lambda r: bool(r) and r[0]["status"] == "running",
    )
    sync_step(engine)
    page.goto(f"{web}/invocations/{run}/")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    page.get_by_role("button", name="Wait for the result").click()
    panel = page.locator("#inv-attach")
    expect(panel).to_contain_text("Waiting for the result")
    expect(panel).to_contain_text(f"workflow id (Signup/{wf_id})")
    # The wait outlives the page: a reload finds it waiting, and the result still arrives.
    page.reload()
    expect(panel).to_contain_text("Waiting for the result")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    navigations.clear()
    restate.call("Signup", "confirm", key=wf_id, payload="BROWSER-CODE")
    expect(panel).to_contain_text("Succeeded", timeout=30_000)
    expect(panel).to_contain_text("confirmed with BROWSER-CODE")
    assert navigations == [], "the result must arrive without a reload"
