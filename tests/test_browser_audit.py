"""The audit page in Chromium: an action taken elsewhere appears at the top of an open
audit page without a reload, and an entry outside the page's filter does not."""

# ruff: noqa: F811  (the fixtures imported from test_browser are parameters here, as pytest wants)
from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from invocations.mirror.actions import Action
from invocations.operations.roles import Role, user_set_role
from invocations.operations.services import invocation_act
from invocations.restate import RestateClient
from tests.test_browser import page, redis_url, web  # noqa: F401  (fixtures used by name)
from tests.test_browser_live import mark_page, off_loop, same_document

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def test_an_action_appears_on_an_open_audit_page_live(page: Any, web: str, restate: RestateClient) -> None:
    napping = restate.send("Sleeper", "nap", payload=5)

    def make_operator() -> None:
        User.objects.create_user("auditor")
        user_set_role(username="auditor", role=Role.OPERATOR)

    off_loop(make_operator)
    page.goto(f"{web}/audit/?action=cancel")
    expect(page.locator("#audit-rows")).to_contain_text("No entry matches")
    page.wait_for_selector("#live[data-state=live]")
    mark_page(page)

    def act(action: Action) -> None:
        user = User.objects.get(username="auditor")
        invocation_act(user=user, action=action, invocation_id=napping, request_key=None, client=restate)

    off_loop(lambda: act(Action.PAUSE))  # outside the page's filter (action=cancel)
    off_loop(lambda: act(Action.CANCEL))
    row = page.locator("#audit-rows tr", has_text=napping)
    expect(row).to_have_count(1)
    expect(row).to_contain_text("auditor")
    expect(row).to_contain_text("Cancel")
    expect(row).to_contain_text("accepted")
    expect(page.locator("#audit-rows")).not_to_contain_text("Pause")
    assert same_document(page)
