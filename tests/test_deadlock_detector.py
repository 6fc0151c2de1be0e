"""The deadlock detector on our copy (no Restate): a cycle written into the mirror's
tables is opened with its members in wait order, its keys, the youngest suggested and
the time it closed; it is marked broken when a member completes; a truncated snapshot
is remembered on it; pages are told once per change (after commit); and the sync loop
drives it after steps that changed something, spaced by its own cost."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from django.test import override_settings

from invocations import events
from invocations.analysis import deadlocks as detection
from invocations.analysis.deadlocks import DeadlockDetector, deadlocks_refresh
from invocations.mirror.models import Deadlock, Invocation, ObjectLock, QueuedInvocation, SyncState
from invocations.mirror.sync.engine import SyncEngine
from invocations.mirror.sync.loop import SyncLoop
from invocations.reads.selectors.waits import deadlocks_current
from tests.factories import T0, build_edge, create_invocation
from tests.sync_fake import FakeRestate


def _cross_deadlock(tag: str) -> dict[str, Invocation]:
    """a holds A/k and calls B/k (b2, queued behind b); b holds B/k and calls A/k (a2, queued behind a)."""
    a = create_invocation(target=f"A/{tag}/hop", status="suspended", created_at=T0)
    b = create_invocation(target=f"B/{tag}/hop", status="suspended", created_at=T0 + timedelta(seconds=1), parent=a)
    a2 = create_invocation(target=f"A/{tag}/hop", status="pending", created_at=T0 + timedelta(seconds=2), parent=b)
    b2 = b  # a's callee is b itself: it got B/k's lock at once
    build_edge(a, b2, created_at=T0 + timedelta(seconds=1)).save()
    build_edge(b, a2, created_at=T0 + timedelta(seconds=2)).save()
    ObjectLock.objects.create(service_name="A", service_key=tag, invocation_id=a.id)
    ObjectLock.objects.create(service_name="B", service_key=tag, invocation_id=b.id)
    QueuedInvocation.objects.create(
        invocation_id=a2.id, service_name="A", service_key=tag, sequence_number=1, created_at=T0 + timedelta(seconds=3)
    )
    return {"a": a, "b": b, "a2": a2}


@pytest.fixture
def told(monkeypatch: pytest.MonkeyPatch) -> list[set[str]]:
    calls: list[set[str]] = []
    monkeypatch.setattr(events, "deadlocks_changed", lambda *, roots: calls.append(set(roots)))
    return calls


def test_a_cycle_is_opened_with_its_members_keys_suggestion_and_since(db: None, told: list[set[str]]) -> None:
    inv = _cross_deadlock("k1")
    # A chain that waits without a cycle, beside it.
    x = create_invocation(target="Svc/x", status="suspended")
    y = create_invocation(target="Svc/y", status="running", parent=x)
    build_edge(x, y).save()

    report = deadlocks_refresh(now=T0 + timedelta(minutes=1))

    assert report.cycles == 1 and len(report.opened) == 1 and report.waiting == 4
    (cycle,) = deadlocks_current()
    members = [m.invocation_id for m in cycle.members.all()]
    assert set(members) == {inv["a"].id, inv["b"].id, inv["a2"].id}
    assert members[0] == min(members), "wait order from the smallest id"
    for i, m in enumerate(members):  # each waits on the next: a -> b -> a2 -> a
        following = members[(i + 1) % 3]
        assert (m, following) in {(inv["a"].id, inv["b"].id), (inv["b"].id, inv["a2"].id), (inv["a2"].id, inv["a"].id)}
    assert cycle.suggested_id == inv["a2"].id, "the youngest"
    assert sorted(map(tuple, cycle.keys)) == [("A", "k1"), ("B", "k1")]
    assert cycle.since == T0 + timedelta(seconds=3), "when the last wait began: a2 entered the inbox"
    assert cycle.detected_at == T0 + timedelta(minutes=1) and not cycle.from_truncated
    assert told == [{inv["a"].id}], "the member's tree is told once"

    # Found again: nothing new, nobody told.
    again = deadlocks_refresh()
    assert again.opened == [] and again.resolved == [] and len(told) == 1


def test_a_cycle_is_marked_broken_when_a_member_completes_and_kept_a_while(db: None, told: list[set[str]]) -> None:
    inv = _cross_deadlock("k2")
    deadlocks_refresh(now=T0)
    (cycle,) = deadlocks_current()
    # The suggested member was cancelled: it leaves the inbox and completes.
    QueuedInvocation.objects.filter(invocation_id=inv["a2"].id).delete()
    Invocation.objects.filter(id=inv["a2"].id).update(status="completed")

    report = deadlocks_refresh(now=T0 + timedelta(minutes=2))

    assert report.resolved == [cycle.id] and deadlocks_current() == []
    assert Deadlock.objects.get(id=cycle.id).resolved_at == T0 + timedelta(minutes=2)
    assert len(told) == 2
    # Kept as "recently broken" for a week, then deleted with its members.
    deadlocks_refresh(now=T0 + detection.RESOLVED_KEPT + timedelta(minutes=3))
    assert not Deadlock.objects.filter(id=cycle.id).exists()


def test_a_cycle_found_while_a_snapshot_was_truncated_says_so(db: None, told: list[set[str]]) -> None:
    _cross_deadlock("k3")
    SyncState.objects.update_or_create(id=1, defaults={"queues_truncated": True})
    deadlocks_refresh()
    (cycle,) = deadlocks_current()
    assert cycle.from_truncated


def test_the_detector_runs_after_changes_spaced_by_its_cost_and_at_least_every_max(
    db: None, told: list[set[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(detection.time, "monotonic", lambda: clock[0])
    runs: list[float] = []
    real = detection.deadlocks_refresh

    def counted(**kwargs: Any) -> detection.RefreshReport:
        runs.append(clock[0])
        report = real(**kwargs)
        report.read_s = 0.5  # as if a pass cost 0.5 s: the next waits 4 x that
        return report

    monkeypatch.setattr(detection, "deadlocks_refresh", counted)
    with override_settings(DEADLOCK_REFRESH_MIN_S=0.5, DEADLOCK_REFRESH_MAX_S=30.0):
        detector = DeadlockDetector()
        assert detector.after_step(changed=False) is not None, "a fresh process looks once"
        clock[0] += 1
        assert detector.after_step(changed=True) is None, "too soon after a 0.5 s pass"
        clock[0] += 1.5
        assert detector.after_step(changed=False) is not None, "the change seen earlier is still pending"
        clock[0] += 5
        assert detector.after_step(changed=False) is None, "nothing changed"
        clock[0] += 30
        assert detector.after_step(changed=False) is not None, "at least every DEADLOCK_REFRESH_MAX_S"
    assert len(runs) == 3


def test_the_sync_loop_calls_after_step_with_whether_the_step_changed_something(transactional_db: None) -> None:
    restate = FakeRestate()
    engine = SyncEngine(restate, reconcile_every=timedelta(days=1), slow_every=timedelta(0))  # type: ignore[arg-type]
    seen: list[bool] = []
    loop = SyncLoop(engine, rng=random.Random(1), after_step=lambda *, changed: seen.append(changed))
    restate.add(1)
    loop.step()
    loop.step()
    assert seen == [True, False]


def test_the_page_says_when_it_was_built_from_a_truncated_snapshot(db: None, told: list[set[str]], client: Any) -> None:
    _cross_deadlock("k4")
    deadlocks_refresh()
    html = client.get("/deadlocks/").content.decode()
    assert "1</strong> deadlock now" in html and "Incomplete" not in html
    SyncState.objects.filter(id=1).update(locks_truncated=True)
    html = client.get("/deadlocks/").content.decode()
    assert "Incomplete: Restate's locks snapshot was cut at the row cap" in html


def test_since_falls_back_to_inboxed_at_when_the_inbox_row_has_no_time(db: None, told: list[set[str]]) -> None:
    inv = _cross_deadlock("k5")
    # Restate 1.7's sys_inbox leaves created_at empty; the invocation says when it was queued.
    QueuedInvocation.objects.filter(invocation_id=inv["a2"].id).update(created_at=None)
    Invocation.objects.filter(id=inv["a2"].id).update(inboxed_at=T0 + timedelta(seconds=4))
    deadlocks_refresh()
    (cycle,) = deadlocks_current()
    assert cycle.since == T0 + timedelta(seconds=4)
