"""Hints: an action's "re-read these now" reaches the sync engine through PostgreSQL
(a table plus NOTIFY), is served between steps by a by-id read, and keeps being
served until it expires. The fake Restate checks what is read; the last test runs
the real loop against real Restate, with a poll interval so long that only the
hint can explain how fast the cancel shows."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from invocations.mirror.models import Invocation, ObjectLock, QueuedInvocation, SyncHint
from invocations.mirror.sync import engine as engine_module
from invocations.mirror.sync import hints
from invocations.mirror.sync.engine import SyncEngine
from invocations.mirror.sync.loop import SyncLoop
from tests.sync_fake import FakeRestate, fake_id


def fake_engine(restate: FakeRestate) -> SyncEngine:
    return SyncEngine(restate, reconcile_every=timedelta(days=1), slow_every=timedelta(days=1))  # type: ignore[arg-type]


@contextmanager
def loop_running(engine: SyncEngine) -> Iterator[None]:
    """The sync loop with its hint thread, on a thread of its own, polling a minute apart: only
    a hint can explain a change arriving sooner."""
    loop = SyncLoop(engine)
    stop = threading.Event()

    def run() -> None:
        try:
            loop.run(wait=stop.wait, listener=hints.HintListener())
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    with override_settings(SYNC_MIN_INTERVAL_S=60, SYNC_MAX_INTERVAL_S=60):
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(10)


def arrives_within(inv_id: str, *, status: str, seconds: float, what: str) -> None:
    t0 = time.monotonic()
    while not Invocation.objects.filter(id=inv_id, status=status).exists():
        assert time.monotonic() - t0 < seconds, what
        time.sleep(0.02)


def test_a_hint_re_reads_only_its_ids_by_id(transactional_db: None) -> None:
    restate = FakeRestate()
    for n in range(1, 6):
        restate.add(n, status="running")
    engine = fake_engine(restate)
    engine.sync_once()
    restate.invocations[fake_id(2)]["status"] = "completed"
    restate.invocations[fake_id(3)]["status"] = "completed"
    restate.queries.clear()

    hints.hints_add([fake_id(2)])
    report = engine.sync_hinted()

    assert report is not None and (report.ids, report.changed) == (1, 1)
    assert Invocation.objects.get(id=fake_id(2)).status == "completed"
    assert Invocation.objects.get(id=fake_id(3)).status == "running", "not hinted: left to the next step"
    invocation_reads = [q for q in restate.queries if "FROM sys_invocation" in q]
    assert invocation_reads and all(f"id IN ('{fake_id(2)}')" in q for q in invocation_reads)


def test_a_hinted_id_restate_no_longer_holds_is_marked_gone_and_forgotten(transactional_db: None) -> None:
    restate = FakeRestate()
    restate.add(1)
    engine = fake_engine(restate)
    engine.sync_once()
    del restate.invocations[fake_id(1)]  # purged

    hints.hints_add([fake_id(1)])
    report = engine.sync_hinted()

    assert report is not None and report.gone == 1
    assert Invocation.objects.get(id=fake_id(1)).gone_from_restate_at is not None
    assert not SyncHint.objects.exists()
    assert engine.sync_hinted() is None


def test_hints_are_followed_until_they_expire_and_repeat_hints_extend_not_duplicate(transactional_db: None) -> None:
    hints.hints_add(["inv_1aaaaaaaaaaaaaaaaaaaa"], follow=timedelta(seconds=30))
    hints.hints_add(["inv_1aaaaaaaaaaaaaaaaaaaa", "inv_1bbbbbbbbbbbbbbbbbbbb"], follow=timedelta(seconds=-1))
    assert SyncHint.objects.count() == 2
    ids, taken_at = hints.hints_due()
    assert ids == ["inv_1aaaaaaaaaaaaaaaaaaaa", "inv_1bbbbbbbbbbbbbbbbbbbb"], "an expired hint is still read once"
    hints.hints_read(ids, taken_at=taken_at)
    assert hints.hints_due()[0] == ["inv_1aaaaaaaaaaaaaaaaaaaa"], "the later, shorter hint did not cut the first short"
    SyncHint.objects.update(until=timezone.now() - timedelta(seconds=1))
    assert hints.hints_due()[0] == [] and not SyncHint.objects.exists()


def test_a_hint_renewed_while_being_read_is_read_again(transactional_db: None) -> None:
    hints.hints_add(["inv_1aaaaaaaaaaaaaaaaaaaa"], follow=timedelta(0))
    ids, taken_at = hints.hints_due()
    hints.hints_add(["inv_1aaaaaaaaaaaaaaaaaaaa"], follow=timedelta(0))  # a newer span, while Restate is read
    hints.hints_read(ids, taken_at=taken_at)
    assert hints.hints_due()[0] == ["inv_1aaaaaaaaaaaaaaaaaaaa"]
    hints.hints_read(ids, taken_at=hints.hints_due()[1])
    assert hints.hints_due()[0] == []


def test_a_span_for_a_row_a_poll_already_saw_still_redraws_its_tree(
    transactional_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from invocations import events
    from tests.factories import build_span

    sent: list[str] = []
    monkeypatch.setattr(events, "_send", lambda group, message: sent.append(group))
    restate = FakeRestate()
    restate.add(1, status="completed")
    restate.add(2, status="completed")
    engine = fake_engine(restate)
    engine.sync_once()
    hints.hints_add([fake_id(2)])
    engine.sync_hinted()  # nothing changed, no span: a first pass only notes when it read
    sent.clear()

    span = build_span(fake_id(1), 0, 10)
    span.received_at = timezone.now()  # it arrives after the poll saw the invocation complete
    span.save()
    hints.hints_add([fake_id(1), fake_id(2)])
    report = engine.sync_hinted()
    assert report is not None and report.changed == 0
    assert sent == [events.tree_group(fake_id(1))], "only the tree with a new span redraws"


def test_the_listener_wakes_on_commit_not_before(transactional_db: None) -> None:
    from django.db import transaction

    listener = hints.HintListener()
    try:
        assert listener.wait(0.05) is False
        with transaction.atomic():
            hints.hints_add(["inv_1aaaaaaaaaaaaaaaaaaaa"])
            assert listener.wait(0.2) is False, "NOTIFY is delivered at commit"
        t0 = time.monotonic()
        assert listener.wait(5) is True
        assert time.monotonic() - t0 < 1
        assert listener.wait(0.05) is False, "one wake-up per burst"
    finally:
        listener.close()


@pytest.mark.integration
def test_a_cancel_reaches_our_copy_within_a_second_while_the_poll_waits_a_minute(
    restate: Any, engine: SyncEngine, transactional_db: None
) -> None:
    from django.contrib.auth.models import User

    from invocations.mirror.actions import Action
    from invocations.operations.roles import Role, user_set_role
    from invocations.operations.services import invocation_act

    invocation_id = restate.send("Sleeper", "nap", payload=5)
    engine.sync_once()
    operator = User.objects.create_user("hint-operator")
    user_set_role(username="hint-operator", role=Role.OPERATOR)

    stop = threading.Event()
    loop = SyncLoop(engine)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            loop.run(wait=stop.wait, listener=hints.HintListener())
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)
        finally:
            connection.close()

    with override_settings(SYNC_MIN_INTERVAL_S=60, SYNC_MAX_INTERVAL_S=60):
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            time.sleep(0.5)  # the first step runs, then the loop waits out its minute
            user = User.objects.get(id=operator.id)
            clicked = time.monotonic()
            result = invocation_act(user=user, action=Action.CANCEL, invocation_id=invocation_id, client=restate)
            assert result.ok, result
            while Invocation.objects.get(id=invocation_id).status != "completed":
                assert time.monotonic() - clicked < 5, "the hint did not bring the cancel into our copy"
                time.sleep(0.05)
            elapsed = time.monotonic() - clicked
        finally:
            stop.set()
            thread.join(10)
    assert not errors, errors
    assert Invocation.objects.get(id=invocation_id).completion_failure == "[409] cancelled"
    assert elapsed < 2.0, f"{elapsed:.2f}s"


def test_a_state_read_earlier_never_replaces_one_read_later(transactional_db: None) -> None:
    """The step's scan and the hint thread write side by side: whichever commits last, the
    newer state (Restate's modified_at) stays."""
    restate = FakeRestate()
    restate.add(1, status="running")
    engine = fake_engine(restate)
    scanned = dict(restate.invocations[fake_id(1)])  # what a slow scan read
    restate.invocations[fake_id(1)] |= {
        "status": "completed",
        "modified_at": scanned["modified_at"] + timedelta(seconds=1),
    }
    hints.hints_add([fake_id(1)])
    engine.sync_hinted()  # the hint read the newer state and wrote first
    assert engine._upsert_invocations(engine._mapped([scanned])) == [], "the older state was written"
    assert Invocation.objects.get(id=fake_id(1)).status == "completed"

    # At the same modified_at the later write wins (a retry does not move modified_at).
    retried = dict(restate.invocations[fake_id(1)]) | {"status": "backing-off", "retry_count": 2}
    assert engine._upsert_invocations(engine._mapped([retried])) != []
    assert Invocation.objects.get(id=fake_id(1)).status == "backing-off"


def test_a_hint_is_served_while_a_long_step_runs(transactional_db: None) -> None:
    """Hints have a thread of their own: a full scan (here one that lasts 3 s) does not delay them."""
    restate = FakeRestate()
    restate.add(1, status="running")
    engine = fake_engine(restate)
    original = engine.sync_once
    in_step = threading.Event()

    def long_step() -> Any:
        report = original()
        in_step.set()
        time.sleep(3)
        return report

    engine.sync_once = long_step  # type: ignore[method-assign]
    with loop_running(engine):
        assert in_step.wait(10)
        row = restate.invocations[fake_id(1)]
        row |= {"status": "completed", "modified_at": row["modified_at"] + timedelta(seconds=1)}
        hints.hints_add([fake_id(1)])
        arrives_within(fake_id(1), status="completed", seconds=1.5, what="the hint waited for the step")


def test_a_queue_re_read_asked_for_too_soon_is_owed_not_skipped(
    transactional_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call joins a key's queue just after a hint pass read that queue: the re-read it asks
    for waits for QUEUES_HINT_MIN_S but still happens, with no further span to prompt it (the
    holder's next span can be seconds away). Skipping it left the queue stale until the next
    full scan: CI caught that against a real Restate."""
    monkeypatch.setattr(engine_module, "QUEUES_HINT_MIN_S", 0.3)
    monkeypatch.setattr(engine_module, "HINT_TAIL_EVERY_S", 0.0)
    restate = FakeRestate()
    engine = fake_engine(restate)
    engine.sync_once()
    keyed = {"target_service_name": "Counter", "target_service_key": "k", "target_service_ty": "virtual_object"}
    holder = restate.add(1, status="running")
    restate.invocations[holder] |= keyed
    restate.locks.append({"service_name": "Counter", "service_key": "k", "invocation_id": holder})
    hints.hints_add([holder])
    assert engine.sync_hinted() is not None
    assert ObjectLock.objects.filter(invocation_id=holder).exists()

    queued = restate.add(2, status="inboxed", journal=0, journal_size=0)
    restate.invocations[queued] |= keyed
    restate.inbox.append({"service_name": "Counter", "service_key": "k", "id": queued, "sequence_number": 0})
    hints.hints_add([queued])
    assert engine.sync_hinted() is not None
    assert not QueuedInvocation.objects.exists(), "read again within QUEUES_HINT_MIN_S"
    assert engine.hints_tail_pending(), "the hint thread keeps calling while a re-read is owed"

    deadline = time.monotonic() + 2
    while not QueuedInvocation.objects.filter(invocation_id=queued).exists():
        assert time.monotonic() < deadline, "the owed queue re-read never came"
        engine.sync_hinted()
        time.sleep(0.02)
    assert not engine.hints_tail_pending()
    restate.queries.clear()
    time.sleep(0.35)
    engine.sync_hinted()
    assert not [q for q in restate.queries if "sys_inbox" in q], "paid once, then no more re-reads without a change"


def test_a_hint_is_served_while_the_tail_of_the_last_pass_runs(transactional_db: None) -> None:
    """What follows a pass (journals, callees, queues: here a tail that lasts 2 s) runs on the
    loop's thread, not the hint thread: a span arriving meanwhile is read at once."""
    restate = FakeRestate()
    restate.add(1, status="running")
    restate.add(2, status="running")
    engine = fake_engine(restate)
    original = engine._hint_tail_locked
    in_tail = threading.Event()

    def long_tail(report: Any) -> None:
        in_tail.set()
        time.sleep(2)
        original(report)

    engine._hint_tail_locked = long_tail  # type: ignore[method-assign]
    with loop_running(engine):
        hints.hints_add([fake_id(1)])
        assert in_tail.wait(10), "the first hint's tail never ran"
        row = restate.invocations[fake_id(2)]
        row |= {"status": "completed", "modified_at": row["modified_at"] + timedelta(seconds=1)}
        hints.hints_add([fake_id(2)])
        arrives_within(fake_id(2), status="completed", seconds=1.0, what="the hint waited for the tail")
