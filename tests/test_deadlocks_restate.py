"""Deadlocks in real Restate, found in our copy: the demo's hop objects deadlock
across two keys (Alpha -> Beta -> Alpha) and three (Alpha -> Beta -> Gamma -> Alpha);
the wait-for graph built from the mirror finds exactly the members of each."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import User

from invocations.analysis.deadlocks import deadlocks_refresh
from invocations.mirror.models import Deadlock, Invocation, QueuedInvocation
from invocations.mirror.sync.engine import SyncEngine
from invocations.operations.roles import Role, user_set_role
from invocations.reads.selectors.waits import deadlocks_current
from invocations.restate import RestateClient, sql_list, sql_literal
from tests.conftest import sync_until, wait_for_restate

pytestmark = pytest.mark.integration


def _deadlock(restate: RestateClient, engine: SyncEngine, path: list[str]) -> tuple[str, set[str]]:
    key = f"dl-{uuid.uuid4().hex[:10]}"
    root = restate.send("Alpha", "hop", key=key, payload=path)
    # Deadlocked when the call that comes back to Alpha/key waits in its inbox.
    wait_for_restate(
        restate,
        f"SELECT id FROM sys_inbox WHERE service_name = 'Alpha' AND service_key = {sql_literal(key)}",
        lambda rows: len(rows) == 1,
    )
    members = {
        row["id"]
        for row in restate.query(f"SELECT id FROM sys_invocation WHERE target_service_key = {sql_literal(key)}")
    }
    sync_until(
        engine,
        lambda: (
            QueuedInvocation.objects.filter(service_key=key).exists()
            and Invocation.objects.filter(id__in=members).count() == len(members)
            and _stored_cycle(members) is not None
        ),
        what=f"the deadlock on {key} in our copy",
    )
    return root, members


def _members(deadlock: Deadlock) -> set[str]:
    return {m.invocation_id for m in deadlock.members.all()}


def _stored_cycle(members: set[str]) -> Deadlock | None:
    """The stored current deadlock with exactly these members, after a detection pass."""
    deadlocks_refresh()
    return next((d for d in deadlocks_current() if _members(d) & members), None)


@pytest.mark.parametrize(("path", "size"), [(["Beta", "Alpha"], 3), (["Beta", "Gamma", "Alpha"], 4)])
def test_a_deadlock_is_found_with_exactly_its_members(
    restate: RestateClient, engine: SyncEngine, path: list[str], size: int
) -> None:
    root, members = _deadlock(restate, engine, path)
    try:
        cycle = _stored_cycle(members)
        assert cycle is not None and _members(cycle) == members and len(members) == size
        assert {service for service, _ in cycle.keys} == {"Alpha", *path}
        ordered = [m.invocation_id for m in cycle.members.all()]
        assert ordered[0] == min(members), "wait order starts from the smallest id"
    finally:
        restate.kill(root)  # a kill reaches the whole call tree and frees the keys
    sync_until(
        engine,
        lambda: _stored_cycle(members) is None,
        what="the killed deadlock to leave our copy's cycles",
    )
    assert Deadlock.objects.get(id=cycle.id).resolved_at is not None, "kept as recently broken"


def test_the_page_suggests_the_youngest_and_cancelling_it_unblocks_the_rest(
    restate: RestateClient, engine: SyncEngine, client: Any, demo_stack: Any, settings: Any
) -> None:
    settings.RESTATE_ADMIN_URL = demo_stack.admin_url  # the page's cancel goes to the demo Restate
    root, members = _deadlock(restate, engine, ["Beta", "Alpha"])
    try:
        cycle = _stored_cycle(members)
        assert cycle is not None
        youngest = max(Invocation.objects.filter(id__in=members), key=lambda i: (i.created_at, i.id))
        assert cycle.suggested_id == youngest.id
        page = client.get("/deadlocks/")
        assert page.status_code == 200
        html = page.content.decode()
        assert f'id="deadlock-{cycle.id}"' in html
        for member in members:
            assert f'id="member-{member}"' in html
        assert "It is the youngest member" in html
        assert f"cancel --yes {youngest.id}" in html, "a viewer is shown the CLI line, not a button"
        assert 'class="break"' not in html
        assert "<svg" in html and "queued behind" in html and "calls" in html, "drawn as a loop"
        # Every member's page (and the root's tree) shows the banner linking to it.
        for member in members:
            detail = client.get(f"/invocations/{member}/").content.decode()
            assert f"/deadlocks/#deadlock-{cycle.id}" in detail
        operator = User.objects.create_user("deadlock-operator", password="pw-for-tests-only")
        user_set_role(username=operator.username, role=Role.OPERATOR)
        client.force_login(operator)
        html = client.get("/deadlocks/").content.decode()
        assert 'class="break"' in html and f"/invocations/{youngest.id}/actions/cancel/" in html
        key = re.search(r'name="request_key" value="([^"]+)"', html)
        assert key is not None
        answer = client.post(f"/invocations/{youngest.id}/actions/cancel/", {"request_key": key.group(1)})
        assert answer.status_code == 200 and "accepted" in answer.content.decode(), answer.content.decode()[-1500:]
        # Completed, or already forgotten (a call's result is kept only as long as its retention).
        wait_for_restate(
            restate,
            f"SELECT id FROM sys_invocation WHERE status <> 'completed' AND id IN {sql_list(sorted(members))}",
            lambda rows: not rows,
        )
    finally:
        restate.kill(root)
    engine.sync_hinted()  # what the cancel's hints re-read (the sync loop does this between steps)
    sync_until(engine, lambda: _stored_cycle(members) is None, what="the broken deadlock to leave")
    outcomes = dict(Invocation.objects.filter(id__in=members).values_list("id", "completion_failure"))
    cancelled = Invocation.objects.get(id=youngest.id)
    # A call cancelled in the inbox never ran: Restate may forget it before a sync step sees it completed.
    assert "cancel" in (cancelled.completion_failure or "") or cancelled.gone_from_restate_at is not None, outcomes
    # The demo's hop lets the cancellation fail its caller, and that one's caller in turn.
    assert all("[409] cancel" in (outcomes[m] or "") for m in members - {youngest.id}), outcomes
    html = client.get("/deadlocks/").content.decode()
    assert f'id="deadlock-{cycle.id}"' not in html and f'id="resolved-{cycle.id}"' in html
