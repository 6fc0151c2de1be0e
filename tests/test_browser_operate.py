"""Acting from the browser: an operator cancels a long-running demo invocation from its
page and sees it turn cancelled without a reload, carried by a real `sync_restate`
process whose polling is slowed to 30 s, so only the action's sync hint can explain a
quick update; a viewer is drawn no action control anywhere."""

# ruff: noqa: F811  (the fixtures imported from test_browser are parameters here, as pytest wants)
from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import override_settings
from playwright.sync_api import expect

from demo.stack import free_port, spawn, start_web
from invocations.mirror.models import Invocation
from invocations.mirror.sync.engine import SyncEngine
from invocations.operations.roles import Role, user_set_role
from invocations.restate import RestateClient
from tests.test_browser import PASSWORD, page, redis_url  # noqa: F401  (fixtures used by name)
from tests.test_browser_live import mark_page, off_loop, running_in_restate, same_document, sync_until

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def _database_url() -> str:
    db = connection.settings_dict
    return f"postgresql://{db['USER']}:@/{db['NAME']}?host={db['HOST']}"


@pytest.fixture
def web(transactional_db: None, redis_url: str, tmp_path: Path, demo_stack: Any) -> Iterator[str]:
    """Daphne as in test_browser, but acting on the demo Restate (the page's POSTs go there)."""
    User.objects.create_user("browser", password=PASSWORD)
    port = free_port()
    env = {
        "DATABASE_URL": _database_url(),
        "REDIS_URL": redis_url,
        "RESTATE_ADMIN_URL": demo_stack.admin_url,
        "RESTATE_INGRESS_URL": demo_stack.ingress_url,
    }
    server = start_web(port, tmp_path / "daphne.log", env)
    layers = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [redis_url]}}}
    with override_settings(CHANNEL_LAYERS=layers):
        yield f"http://127.0.0.1:{port}"
    server.stop()


def sync_process(tmp_path: Path, redis_url: str, demo_stack: Any, **env: str) -> Any:
    """A real `manage.py sync_restate` on the test database and the demo Restate (its deadlock detector too)."""
    return spawn(
        "sync_restate",
        [sys.executable, "manage.py", "sync_restate"],
        tmp_path / "sync.log",
        {
            "DATABASE_URL": _database_url(),
            "REDIS_URL": redis_url,
            "RESTATE_ADMIN_URL": demo_stack.admin_url,
            "RESTATE_INGRESS_URL": demo_stack.ingress_url,
            **env,
        },
    )


def test_an_operator_cancels_from_the_page_and_the_hint_redraws_it_at_once(
    page: Any, web: str, restate: RestateClient, engine: SyncEngine, demo_stack: Any, redis_url: str, tmp_path: Path
) -> None:
    off_loop(lambda: user_set_role(username="browser", role=Role.OPERATOR))
    root = restate.send("Orchestrator", "long", payload=10.0)
    running_in_restate(restate, root)
    sync_until(
        engine,
        lambda: Invocation.objects.filter(parent_id=root, target="Sleeper/nap", status="running").exists(),
        "the root and its running nap",
    )
    nap = off_loop(lambda: Invocation.objects.get(parent_id=root).id)
    # The real sync process, polling only every 30 s: after its first step, only a hint wakes it.
    sync = sync_process(tmp_path, redis_url, demo_stack, SYNC_MIN_INTERVAL_S="30", SYNC_MAX_INTERVAL_S="30")
    try:
        page.goto(f"{web}/invocations/{root}/")
        page.wait_for_selector("#live[data-state=live]")
        time.sleep(3)  # the sync process's first step is done: from here it sleeps 30 s
        assert sync.alive(), (tmp_path / "sync.log").read_text()[-2000:]
        mark_page(page)
        # A tree row's "⋯" opens the actions Restate allows for that row's invocation.
        page.click(f"#node-{nap} a.acts-menu")
        menu = page.locator("dialog.action-dialog", has_text=nap)
        expect(menu).to_contain_text("Cancel")
        expect(menu).to_contain_text("Kill")
        expect(menu).not_to_contain_text("Purge")
        menu.get_by_role("button", name="Close").click()
        expect(menu).to_be_hidden()
        page.click("#inv-header .inv-actions a.act-cancel")
        dialog = page.locator("dialog.action-dialog.confirm")
        expect(dialog).to_contain_text(nap)  # the descendant it reaches, by id
        expect(dialog).to_contain_text("Compensations run")
        expect(dialog).to_contain_text(f"restate invocations cancel --yes {root}")
        copy_cli = dialog.locator("button.copy").first
        copy_cli.click()
        expect(copy_cli).to_have_text("copied")  # the CLI line, with the id, is on the clipboard
        clicked = time.monotonic()
        dialog.locator("button.danger").click()
        expect(page.locator("dialog.action-dialog.result .words")).to_have_text("accepted")
        expect(page.locator("#inv-header .status").first).to_have_text("completed", timeout=10_000)
        expect(page.locator("#inv-header .failure").first).to_contain_text("cancelled")
        expect(page.locator(f"#node-{nap} .status").first).to_have_text("completed")
        took = time.monotonic() - clicked
        assert took < 5, f"the page changed {took:.1f} s after the click: not the hint's doing"
        assert same_document(page), "no reload"
        # Completed now: the header offers what Restate allows for that (restart, purge), not cancel.
        expect(page.locator("#inv-header .inv-actions a.act-purge")).to_be_visible()
        expect(page.locator("#inv-header .inv-actions a.act-cancel")).to_have_count(0)
    finally:
        sync.stop()


def test_a_viewer_sees_no_action_control(page: Any, web: str, restate: RestateClient, engine: SyncEngine) -> None:
    off_loop(lambda: user_set_role(username="browser", role=Role.VIEWER))
    root = restate.send("Orchestrator", "long", payload=0.2)
    running_in_restate(restate, root)
    sync_until(engine, lambda: Invocation.objects.filter(parent_id=root).exists(), "the root and its nap")
    for url in (f"{web}/invocations/", f"{web}/invocations/{root}/"):
        page.goto(url)
        expect(page.locator(f"text={root}").first).to_be_visible()
        expect(page.locator("a.act, a.acts-menu, .inv-actions, dialog")).to_have_count(0)
        expect(page.locator("a[href*='/actions/']")).to_have_count(0)
    # Typing the URL gets a refusal, not a form.
    response = page.goto(f"{web}/invocations/{root}/actions/cancel/")
    assert response is not None and response.status == 403
    expect(page.locator("body")).to_contain_text("Operators only")
    expect(page.locator("form button[type=submit]", has_text="Cancel")).to_have_count(0)
