"""Browser tests: Debian's Chromium driven by Playwright against the real ASGI
server (Daphne, a separate process as in production), real Restate with the demo
services, real PostgreSQL, and Redis carrying live updates from the sync engine
(run here, in the test process) to the web process."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import override_settings

from dashboard import embedded_redis
from demo import traffic
from demo.stack import free_port, start_web
from invocations.mirror.models import Invocation
from invocations.mirror.sync.engine import SyncEngine
from invocations.restate import RestateClient, sql_literal
from tests.conftest import wait_completed, wait_for_restate

pytestmark = [pytest.mark.integration, pytest.mark.browser]
ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "browser-test-password"


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = embedded_redis.start(tmp_path / "redis", port)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(5)


@pytest.fixture
def web(transactional_db: None, redis_url: str, tmp_path: Path) -> Iterator[str]:
    """Daphne serving the dashboard from the test database; returns its base URL."""
    User.objects.create_user("browser", password=PASSWORD)
    db = connection.settings_dict
    port = free_port()
    server = start_web(
        port,
        tmp_path / "daphne.log",
        {"DATABASE_URL": f"postgresql://{db['USER']}:@/{db['NAME']}?host={db['HOST']}", "REDIS_URL": redis_url},
    )
    layers = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [redis_url]}}}
    with override_settings(CHANNEL_LAYERS=layers):
        yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def page(web: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls the
    # test makes between browser steps are still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(15_000)
        page.goto(f"{web}/invocations/")
        assert "/login/" in page.url, "not logged in: sent to the login page"
        page.fill("#id_username", "browser")
        page.fill("#id_password", PASSWORD)
        page.click("section.login button[type=submit]")
        page.wait_for_url(f"{web}/invocations/")
        yield page
        browser.close()


def sync_step(engine: SyncEngine) -> None:
    """One sync step off this thread: the engine's broadcast may not share Playwright's loop."""

    def step() -> None:
        try:
            engine.sync_once()
        finally:
            connection.close()  # the worker thread's own connection; left open it blocks test DB teardown

    with ThreadPoolExecutor(1) as pool:
        pool.submit(step).result()
    connection.close()  # the worker's connection is gone with it; keep ours fresh too


def test_filter_the_list_and_see_a_new_invocation_arrive_live(
    page: Any, web: str, restate: RestateClient, engine: SyncEngine
) -> None:
    first = traffic.fire_call_service(restate)[0]
    wait_completed(restate, first)
    sync_step(engine)
    page.goto(f"{web}/invocations/")
    page.wait_for_selector(f"#row-{first}")
    page.wait_for_selector("#live[data-state=live]")

    # Filter by service through the form: htmx swaps the table, the URL carries the filter.
    page.fill("input[name=service]", "Orchestrator")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**service=Orchestrator**")
    page.wait_for_selector(f"#row-{first}")
    # Other tests share this Restate, so count what our copy holds rather than assume 1.
    shown = page.locator("table.invocations tbody tr td:nth-child(2)").all_inner_texts()
    assert shown and all(text.startswith("Orchestrator/") for text in shown), shown
    assert len(shown) == min(Invocation.objects.filter(service_name="Orchestrator").count(), 50)
    page.wait_for_selector("#live[data-state=live]")

    # The demo fires another one; after a sync step the page says so without a reload.
    second = traffic.fire_call_service(restate)[0]
    wait_completed(restate, second)
    sync_step(engine)
    banner = page.wait_for_selector("#new-banner a")
    assert "1 new invocation" in banner.inner_text()
    banner.click()
    page.wait_for_selector(f"#row-{second}")


def test_tree_shows_a_scheduled_delayed_send_with_its_fire_time(
    page: Any, web: str, restate: RestateClient, engine: SyncEngine
) -> None:
    root = traffic.fire_delayed_sends(restate)[0]
    wait_completed(restate, root)
    wait_for_restate(
        restate, f"SELECT id FROM sys_invocation WHERE invoked_by_id = {sql_literal(root)}", lambda r: len(r) >= 5
    )
    sync_step(engine)
    sync_step(engine)
    page.goto(f"{web}/invocations/{root}/")
    tree = page.wait_for_selector("#inv-tree")
    text = tree.inner_text()
    assert "delayed" in text.lower()
    assert "scheduled" in text
    # A fire time in the future, counted down by the page.
    assert "fires" in text.lower() or "in " in text
    page.screenshot(path=str(ROOT / "data" / "browser-tree.png"), full_page=False) if (ROOT / "data").exists() else None
