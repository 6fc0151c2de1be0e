"""Deadlocks in real Restate, found in our copy: the demo's hop objects deadlock
across two keys (Alpha -> Beta -> Alpha) and three (Alpha -> Beta -> Gamma -> Alpha);
the wait-for graph built from the mirror finds exactly the members of each."""

from __future__ import annotations

import uuid

import pytest

from invocations.analysis.deadlocks import deadlocks_refresh
from invocations.mirror.models import Deadlock, Invocation, QueuedInvocation
from invocations.mirror.sync.engine import SyncEngine
from invocations.reads.selectors.waits import deadlocks_current
from invocations.restate import RestateClient, sql_literal
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
