"""Stuck reasons on rows made by the factories (no Restate): which journal commands are
open waits, how a chain ends, how /stuck/ groups, caps and samples, the list filters it
links to, who paused an invocation through us, and the /stuck/ socket's coalescing.
The same reasons against real Restate are in test_stuck_restate.py."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from invocations import events
from invocations.live.routing import websocket_urlpatterns
from invocations.mirror.models import (
    Deadlock,
    DeadlockMember,
    Invocation,
    JournalEntry,
    ObjectLock,
    QueuedInvocation,
)
from invocations.reads.presenters import stuck as presenter
from invocations.reads.selectors import stuck as selectors
from invocations.reads.selectors.stuck import ReasonKind, WaitKind
from invocations.records.models import AuditEntry, AuditKind, BulkJob, BulkJobItem, ItemState
from tests.factories import T0, build_journal_entry, create_invocation, invocation_id


def journal(inv: Invocation, *entries: tuple[str, dict[str, Any]]) -> None:
    """Entries 0.. of `inv`'s journal; a notification's dict is its entry_lite body."""
    rows = [build_journal_entry(inv, 0, "Command: Input")]
    for index, (entry_type, body) in enumerate(entries, start=1):
        entry = build_journal_entry(inv, index, entry_type, **body)
        if entry_type.startswith("Notification"):
            entry.entry_lite = {"Notification": body}
        rows.append(entry)
    JournalEntry.objects.bulk_create(rows)
    Invocation.objects.filter(id=inv.id).update(journal_size=len(rows), journal_synced_size=len(rows))
    inv.refresh_from_db()


def done(completion_id: int, kind: str = "Sleep") -> tuple[str, dict[str, Any]]:
    return f"Notification: {kind}", {"ty": {"Completion": kind}, "id": {"CompletionId": completion_id}}


def call(callee: Invocation | str, result_id: int = 2) -> tuple[str, dict[str, Any]]:
    callee_id = callee.id if isinstance(callee, Invocation) else callee
    target = {"Service": {"name": "Greeter", "handler": "greet", "scope": None}}
    return "Command: Call", {
        "invocation_id": callee_id,
        "invocation_target": target,
        "invocation_id_completion_id": result_id - 1,
        "result_completion_id": result_id,
    }


SLEEP = ("Command: Sleep", {"wake_up_time": 1_900_000_000_000, "completion_id": 1})


# ---------------------------------------------------------------- open waits


@pytest.mark.django_db
def test_a_command_is_an_open_wait_until_a_notification_carries_its_completion_id() -> None:
    sleeping = create_invocation(target="Sleeper/nap", status="suspended")
    journal(sleeping, SLEEP)
    woke = create_invocation(target="Sleeper/nap", status="running")
    journal(woke, SLEEP, done(1))
    callee = create_invocation(status="running")
    caller = create_invocation(target="Orchestrator/long", status="suspended")
    # The callee's id arrived (completion 1); the result (completion 2) did not.
    journal(caller, call(callee), done(1, "CallInvocationId"))
    waits = selectors.open_waits(invocation_ids=[sleeping.id, woke.id, caller.id])
    assert [w.kind for w in waits[sleeping.id]] == [WaitKind.SLEEP]
    assert woke.id not in waits
    (wait,) = waits[caller.id]
    assert wait.kind == WaitKind.CALL and wait.callee_id == callee.id and wait.index == 1
    # The list filter reads the same: one definition in SQL, one through the ORM.
    assert set(Invocation.objects.filter(selectors.waiting_q("sleep")).values_list("id", flat=True)) == {sleeping.id}
    assert set(Invocation.objects.filter(selectors.waiting_q("call")).values_list("id", flat=True)) == {caller.id}
    assert woke.id in set(Invocation.objects.filter(selectors.waiting_q("none")).values_list("id", flat=True))


@pytest.mark.django_db
def test_several_open_waits_name_the_first_kind_and_list_the_others() -> None:
    # A promise raced against a sleep (a timeout): the promise is the reason.
    inv = create_invocation(target="Signup/wf-1/run", status="suspended", service_type="workflow")
    journal(inv, SLEEP, ("Command: GetPromise", {"key": "confirmed", "completion_id": 2}))
    explanation = presenter.invocation_stuck(inv)
    assert explanation is not None
    reason = explanation.reason
    assert reason.kind == ReasonKind.WAIT_PROMISE and reason.promise == "confirmed"
    assert [w.kind for w in reason.other_waits] == [WaitKind.SLEEP]


@pytest.mark.django_db
def test_nothing_open_is_an_awakeable_when_suspended_running_when_running_unknown_when_not_copied() -> None:
    suspended = create_invocation(status="suspended")
    journal(suspended)
    running = create_invocation(status="running")
    journal(running)
    behind = create_invocation(status="suspended")
    journal(behind)
    Invocation.objects.filter(id=behind.id).update(journal_size=5)
    kinds = {
        i.id: presenter.invocation_stuck(i).reason.kind  # type: ignore[union-attr]
        for i in Invocation.objects.filter(id__in=[suspended.id, running.id, behind.id])
    }
    assert kinds == {
        suspended.id: ReasonKind.WAIT_SIGNAL,
        running.id: ReasonKind.RUNNING,
        behind.id: ReasonKind.UNKNOWN,
    }
    assert presenter.invocation_stuck(create_invocation(status="completed")) is None


# ---------------------------------------------------------------- chains


@pytest.mark.django_db
def test_a_chain_follows_calls_and_lock_holders_to_its_end() -> None:
    holder = create_invocation(target="Worker/k/work", status="suspended")
    journal(holder, SLEEP)
    ObjectLock.objects.create(service_name="Worker", service_key="k", invocation_id=holder.id)
    queued = create_invocation(target="Worker/k/work", status="pending", inboxed_at=T0)
    QueuedInvocation.objects.create(invocation_id=queued.id, service_name="Worker", service_key="k", sequence_number=4)
    caller = create_invocation(target="Orchestrator/wait_worker", status="suspended")
    journal(caller, call(queued))
    explanation = presenter.invocation_stuck(caller)
    assert explanation is not None and explanation.end == ""
    assert [(r.kind, r.inv.id) for r in explanation.chain] == [
        (ReasonKind.QUEUED, queued.id),
        (ReasonKind.WAIT_SLEEP, holder.id),
    ]
    place = explanation.chain[0].place
    assert place is not None and (place.position, place.length, place.holder_id) == (1, 1, holder.id)


@pytest.mark.django_db
def test_a_chain_says_how_it_ends_when_it_loops_leaves_our_copy_completes_or_runs_long() -> None:
    a, b = create_invocation(status="suspended"), create_invocation(status="suspended")
    journal(a, call(b))
    journal(b, call(a))
    looped = presenter.invocation_stuck(a)
    assert looped is not None and (looped.end, looped.end_id) == ("loop", a.id)

    lost, gone = create_invocation(status="suspended"), invocation_id("gone")
    journal(lost, call(gone))
    ended = presenter.invocation_stuck(lost)
    assert ended is not None and (ended.end, ended.end_id) == ("missing", gone)

    finished = create_invocation(status="completed")
    waiting = create_invocation(status="suspended")
    journal(waiting, call(finished))
    ended = presenter.invocation_stuck(waiting)
    assert ended is not None and (ended.end, ended.end_id) == ("completed", finished.id)

    links = [create_invocation(status="suspended") for _ in range(presenter.CHAIN_MAX + 3)]
    for caller, callee in itertools.pairwise(links):
        journal(caller, call(callee))
    journal(links[-1], SLEEP)
    long = presenter.invocation_stuck(links[0])
    assert long is not None and long.end == "long" and len(long.chain) == presenter.CHAIN_MAX


@pytest.mark.django_db
def test_deadlock_membership_comes_first_and_links_to_its_deadlock(client: Client) -> None:
    a = create_invocation(target="Alpha/k/hop", status="suspended")
    journal(a, call(invocation_id("b")))
    Deadlock.objects.create(id="d1", keys=[["Alpha", "k"]], suggested_id=a.id, since=T0, detected_at=T0)
    DeadlockMember.objects.create(deadlock_id="d1", position=0, invocation_id=a.id)
    explanation = presenter.invocation_stuck(a)
    assert explanation is not None and explanation.reason.kind == ReasonKind.DEADLOCK and explanation.chain == []
    page = client.get(f"/invocations/{a.id}/").content.decode()
    # /deadlocks/ is another page family's: until it is routed the link is its fixed path.
    assert 'Part of <a href="/deadlocks/#deadlock-d1">deadlock d1</a>: 1 invocation holding' in page


# ---------------------------------------------------------------- who paused


@pytest.mark.django_db
def test_a_pause_through_us_is_named_until_a_later_resume() -> None:
    inv = create_invocation(status="paused")

    def audit(action: str, **fields: Any) -> AuditEntry:
        fields.setdefault("kind", AuditKind.SINGLE)
        fields.setdefault("outcome", "done")
        return AuditEntry.objects.create(username="ann", action=action, targets=[inv.id], **fields)

    assert selectors.pause_record(invocation_id=inv.id) is None
    audit("pause", outcome="conflict")
    assert selectors.pause_record(invocation_id=inv.id) is None, "Restate refused that one"
    entry = audit("pause")
    record = selectors.pause_record(invocation_id=inv.id)
    assert record is not None and (record.username, record.at, record.bulk_job_id) == ("ann", entry.at, None)
    audit("resume")
    assert selectors.pause_record(invocation_id=inv.id) is None, "paused again since, not by us"
    job = BulkJob.objects.create(action="pause", created_by="bob")
    BulkJobItem.objects.create(job=job, invocation_id=inv.id, state=ItemState.SUCCEEDED)
    AuditEntry.objects.create(
        username="bob", action="pause", targets=[inv.id, invocation_id()], kind=AuditKind.BULK_BATCH, job=job
    )
    record = selectors.pause_record(invocation_id=inv.id)
    assert record is not None and (record.username, record.bulk_job_id) == ("bob", job.id)


# ---------------------------------------------------------------- /stuck/


def rows_of(overview: selectors.StuckOverview, reason: ReasonKind) -> list[selectors.StuckGroup]:
    return overview.groups.get(reason, [])


@pytest.mark.django_db
def test_stuck_groups_every_reason_oldest_first_and_leaves_nothing_counted_twice() -> None:
    for n in range(3):
        create_invocation(
            target="Flaky/fail",
            status="backing-off",
            created_at=T0 + timedelta(minutes=n),
            last_failure_error_code="RT0007" if n else "500",
            next_retry_at=T0 + timedelta(hours=1, minutes=n),
        )
    member = create_invocation(target="Alpha/k/hop", status="pending")
    Deadlock.objects.create(id="d1", keys=[], suggested_id=member.id, since=T0, detected_at=T0)
    DeadlockMember.objects.create(deadlock_id="d1", position=0, invocation_id=member.id)
    create_invocation(target="Worker/k/work", status="pending", inboxed_at=T0)
    create_invocation(target="Greeter/greet", status="scheduled", scheduled_start_at=T0 + timedelta(days=1))
    create_invocation(target="Greeter/greet", status="running", gone_from_restate_at=T0)
    overview = selectors.stuck_overview()
    backing = rows_of(overview, ReasonKind.BACKING_OFF)
    assert [(g.error_code, g.count) for g in backing] == [("500", 1), ("RT0007", 2)], "oldest first, per code"
    assert backing[1].next_at == T0 + timedelta(hours=1, minutes=1)
    assert overview.totals[ReasonKind.BACKING_OFF].count == 3 and overview.totals[ReasonKind.BACKING_OFF].groups == 2
    # The deadlock member is listed under its deadlock only, not also as queued.
    (queued,) = rows_of(overview, ReasonKind.QUEUED)
    assert (queued.service, queued.key, queued.count) == ("Worker", "k", 1)
    assert [g.member_pairs for g in rows_of(overview, ReasonKind.DEADLOCK)] == [[(member.id, "Alpha/k/hop")]]
    assert overview.deadlocked == 1
    assert ReasonKind.RUNNING not in overview.totals, "a row gone from Restate is not stuck in it"


@pytest.mark.django_db
def test_stuck_shows_twenty_groups_per_reason_and_counts_the_rest(client: Client) -> None:
    for n in range(25):
        create_invocation(target=f"Svc/h{n:02d}", status="paused", modified_at=T0 + timedelta(seconds=n))
    overview = selectors.stuck_overview()
    shown = rows_of(overview, ReasonKind.PAUSED)
    assert len(shown) == selectors.GROUPS_SHOWN and shown[0].handler == "h00"
    assert overview.totals[ReasonKind.PAUSED].count == 25 and overview.totals[ReasonKind.PAUSED].groups == 25
    page = client.get("/stuck/").content.decode()
    assert "5 more groups not shown" in page


@pytest.mark.django_db
def test_stuck_reads_the_journals_of_a_sample_and_says_what_it_did_not_read(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    naps = [
        create_invocation(target="Sleeper/nap", status="suspended", created_at=T0 + timedelta(seconds=n))
        for n in range(5)
    ]
    for inv in naps:
        journal(inv, SLEEP)
    overview = selectors.stuck_overview(sample=3)
    (sleeping,) = rows_of(overview, ReasonKind.WAIT_SLEEP)
    (rest,) = rows_of(overview, ReasonKind.UNKNOWN)
    assert sleeping.count == 3 and rest.count == 2 and rest.beyond_sample
    assert (overview.waiting_total, overview.waiting_classified) == (5, 3)
    assert overview.sampled_until == naps[2].created_at

    def listed(url: str) -> set[str]:
        return {part.split('"', 1)[0] for part in client.get(url).content.decode().split('id="row-')[1:]}

    # Each link shows what its group counted: the sample's members, bounded by creation time
    # (so the list reads no more journals than the page did), and the rest, not classified.
    sampled_url = presenter.group_list_url(sleeping, sampled_until=overview.sampled_until)
    rest_url = presenter.group_list_url(rest, sampled_until=overview.sampled_until)
    assert "waiting=sleep" in sampled_url and "created_before=" in sampled_url
    assert "waiting=" not in rest_url and "created_after=" in rest_url
    assert listed(sampled_url) == {i.id for i in naps[:3]} and listed(rest_url) == {i.id for i in naps[3:]}
    monkeypatch.setattr(selectors, "WAIT_SAMPLE", 3)
    page = client.get("/stuck/").content.decode()
    assert "the journals of the 3 oldest were read" in page and "the other 2 are counted" in page


@pytest.mark.django_db
def test_stuck_page_empty_partial_and_login(client: Client) -> None:
    page = client.get("/stuck/")
    assert page.status_code == 200 and "Nothing is stuck" in page.content.decode()
    assert 'href="/stuck/"' in page.content.decode(), "the header links to it"
    partial = client.get("/stuck/", headers={"HX-Request": "true"}).content.decode()
    assert partial.lstrip().startswith('<section id="stuck-groups"')
    assert Client().get("/stuck/").status_code == 302


# ---------------------------------------------------------------- list filters


@pytest.mark.django_db
def test_the_list_filters_stuck_links_to_and_refuses_bad_values(client: Client) -> None:
    sleeping = create_invocation(target="Sleeper/nap", status="suspended")
    journal(sleeping, SLEEP)
    failing = create_invocation(target="Flaky/fail", status="backing-off", last_failure_error_code="RT0007")
    other = create_invocation(target="Flaky/fail", status="backing-off", last_failure_error_code="500")

    def ids(query: str) -> set[str]:
        text = client.get(f"/invocations/?{query}").content.decode()
        return {part.split('"', 1)[0] for part in text.split('id="row-')[1:]}

    assert ids("waiting=sleep") == {sleeping.id}
    page = client.get("/invocations/?waiting=sleep").content.decode()
    assert '<input type="hidden" name="waiting" value="sleep">' in page, "the filter form keeps it"
    assert "waiting on a timer (sleep), by the journal we hold" in page
    assert ids("status=backing-off&error_code=RT0007") == {failing.id}
    assert other.id in ids("error_code=500")
    assert client.get("/invocations/?waiting=forever").status_code == 400
    assert client.get("/invocations/?error_code=" + "x" * 40).status_code == 400


# ---------------------------------------------------------------- the socket


async def _socket(user: Any, sends: int) -> tuple[int | None, str, list[str]]:
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/stuck/")
    communicator.scope["user"] = user
    connected, code = await communicator.connect(timeout=5)
    if not connected:
        return code, "", []
    first = await communicator.receive_from(timeout=10)
    layer = get_channel_layer()
    for n in range(sends):
        group = events.STUCK_GROUP if n % 2 else events.LIST_GROUP
        kind = "stuck.changed" if n % 2 else "invocations.changed"
        await layer.group_send(group, {"type": kind, "ids": [], "count": 0})
    later = []
    while not await communicator.receive_nothing(timeout=1.5):
        later.append(await communicator.receive_from(timeout=5))
    await communicator.disconnect()
    return None, first, later


def test_stuck_socket_sends_the_groups_then_one_render_per_burst(transactional_db: None) -> None:
    cache.clear()
    assert async_to_sync(_socket)(AnonymousUser(), 0)[0] == 4401
    user = User.objects.create_user("watcher")
    create_invocation(
        target="Flaky/fail", status="backing-off", last_failure_error_code="RT0007", created_at=timezone.now()
    )
    closed, first, later = async_to_sync(_socket)(user, 20)
    assert closed is None
    assert (
        first.lstrip().startswith('<section id="stuck-groups" class="stuck" hx-swap-oob="outerHTML"')
        and "Flaky/fail" in first
    )
    assert 1 <= len(later) <= 2, f"20 changes in a burst: {len(later)} renders"
