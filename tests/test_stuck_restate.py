""" "Why is this stuck?" against real Restate and the demo services: one test per reason
(retrying, queued, scheduled, sleeping, promise-waiting, paused, deadlocked), each
checking the reason the presenter computes, the sentence on the detail page, and the
group on /stuck/ with its count and the filtered list its count links to. Other tests
share the Restate server, so a group's count is compared with our copy at that moment,
not assumed to hold only what this test started."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from django.test import Client

from demo import traffic
from invocations.analysis.deadlocks import deadlocks_refresh
from invocations.mirror.actions import Action
from invocations.mirror.models import Invocation, QueuedInvocation, WorkflowPromise
from invocations.mirror.sync.engine import SyncEngine
from invocations.operations.roles import Role, user_create
from invocations.operations.services import invocation_act
from invocations.reads.presenters.stuck import Explanation, invocation_stuck
from invocations.reads.selectors.stuck import ReasonKind, waiting_q
from invocations.restate import RestateClient, sql_literal
from tests.conftest import sync_until, wait_for_restate

pytestmark = pytest.mark.integration


class _Groups(HTMLParser):
    """The rows of /stuck/ (tr.stuck-group data attributes) and the link of each count."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self._row: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and "stuck-group" in (a.get("class") or ""):
            self._row = {k.removeprefix("data-"): v for k, v in a.items() if k.startswith("data-")}
            self.rows.append(self._row)
        elif tag == "a" and self._row is not None and "count" in (a.get("class") or "").split():
            self._row["href"] = a.get("href")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None


def stuck_page_group(client: Client, **match: str) -> dict[str, Any]:
    """The one /stuck/ group whose data attributes are `match`."""
    page = client.get("/stuck/")
    assert page.status_code == 200
    parser = _Groups()
    parser.feed(page.content.decode())
    found = [r for r in parser.rows if all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"groups matching {match}: {found} (all: {parser.rows})"
    return found[0]


def listed_ids(client: Client, href: str) -> set[str]:
    """The invocation ids the filtered list at `href` shows (its rows are #row-<id>)."""
    page = client.get(href)
    assert page.status_code == 200, page.content[:500]
    text = page.content.decode()
    return {part.split('"', 1)[0] for part in text.split('id="row-')[1:]}


def stuck(inv_id: str) -> Explanation:
    explanation = invocation_stuck(Invocation.objects.get(id=inv_id))
    assert explanation is not None, f"{inv_id} has no stuck reason (completed?)"
    return explanation


def detail_panel(client: Client, inv_id: str) -> str:
    page = client.get(f"/invocations/{inv_id}/")
    assert page.status_code == 200
    text = page.content.decode()
    assert 'id="inv-stuck"' in text, "the detail page has no “Why is this stuck?” panel"
    start = text.index('id="inv-stuck"')
    return text[start : text.index("</section>", start)]


def in_restate(restate: RestateClient, inv_id: str, predicate: Any, what: str = "") -> dict[str, Any]:
    rows = wait_for_restate(
        restate,
        "SELECT status, retry_count, next_retry_at, last_failure_error_code FROM sys_invocation "
        f"WHERE id = {sql_literal(inv_id)}",
        lambda rows: bool(rows) and predicate(rows[0]),
    )
    return rows[0]


def test_retrying_says_attempts_error_code_and_next_retry(
    restate: RestateClient, engine: SyncEngine, client: Client
) -> None:
    (inv_id,) = traffic.fire_failing(restate)
    try:
        in_restate(restate, inv_id, lambda r: r["status"] == "backing-off" and (r.get("retry_count") or 0) >= 2)
        sync_until(
            engine,
            lambda: Invocation.objects.filter(id=inv_id, status="backing-off", retry_count__gte=2).exists(),
            what="the retrying invocation backing off in our copy",
        )
        inv = Invocation.objects.get(id=inv_id)
        explanation = stuck(inv_id)
        assert explanation.reason.kind == ReasonKind.BACKING_OFF
        assert explanation.reason.attempts == inv.retry_count and explanation.reason.retries == inv.retry_count - 1
        assert inv.last_failure_error_code == "RT0007", "Restate's code for a handler's non-terminal failure"
        assert inv.next_retry_at is not None and explanation.chain == []

        panel = detail_panel(client, inv_id)
        assert f"Backing off after {inv.retry_count} failed attempts" in panel
        assert '<span class="code">RT0007</span>' in panel and "upstream unavailable" in panel
        assert "Next retry" in panel and inv.next_retry_at.strftime("%Y-%m-%d %H:%M:%S") in panel

        group = stuck_page_group(
            client, reason="backing-off", service="Flaky", handler="fail", **{"error-code": "RT0007"}
        )
        expected = Invocation.objects.filter(
            status="backing-off", service_name="Flaky", handler_name="fail", last_failure_error_code="RT0007"
        ).count()
        assert int(group["count"]) == expected >= 1
        assert group["href"].startswith("/invocations/?") and "error_code=RT0007" in group["href"]
        listed = listed_ids(client, group["href"])
        assert inv_id in listed and len(listed) == expected
    finally:
        restate.kill(inv_id)


def test_queued_says_holder_key_and_position_and_the_caller_follows_the_chain(
    restate: RestateClient, engine: SyncEngine, client: Client
) -> None:
    key = traffic.new_key("stuckq")
    callers = traffic.fire_queue(restate, key=key, n=3, seconds=60)
    try:
        wait_for_restate(
            restate,
            f"SELECT id FROM sys_inbox WHERE service_name = 'Worker' AND service_key = {sql_literal(key)}",
            lambda rows: len(rows) == 2,
        )
        sync_until(
            engine,
            lambda: (
                QueuedInvocation.objects.filter(service_key=key).count() == 2
                and Invocation.objects.filter(parent_id__in=callers).count() == 3
                and Invocation.objects.filter(id__in=callers, journal_synced_size__gte=2).count() == 3
            ),
            what="the key's queue and every caller's call in our copy",
        )
        holder = next(
            i.id
            for i in Invocation.objects.filter(service_name="Worker", service_key=key)
            if i.status in ("running", "suspended")
        )
        queued = list(QueuedInvocation.objects.filter(service_key=key).order_by("sequence_number"))
        last = queued[-1].invocation_id

        explanation = stuck(last)
        reason = explanation.reason
        assert reason.kind == ReasonKind.QUEUED and reason.place is not None
        assert (reason.place.position, reason.place.length, reason.place.holder_id) == (2, 2, holder)
        assert [step.kind for step in explanation.chain] == [ReasonKind.WAIT_SLEEP], "then: the holder sleeps"
        assert explanation.chain[0].inv.id == holder

        panel = detail_panel(client, last)
        assert "Queued behind holder" in panel and f'href="/invocations/{holder}/"' in panel
        assert f"<code>Worker/{key}</code>" in panel and "(position 2 of 2)" in panel
        assert "Sleeping until" in panel, "the holder's own reason, in the chain"

        # The caller of the queued call: waiting for a callee, itself queued, behind a sleeping holder.
        caller = Invocation.objects.get(id=last).parent_id
        assert caller is not None
        chain = stuck(caller)
        assert chain.reason.kind == ReasonKind.WAIT_CALL and chain.reason.next_id == last
        assert [s.kind for s in chain.chain] == [ReasonKind.QUEUED, ReasonKind.WAIT_SLEEP]
        assert f"Worker/{key}/work" in detail_panel(client, caller)

        group = stuck_page_group(client, reason="queued", service="Worker", key=key)
        assert int(group["count"]) == 2
        assert f"key={key}" in group["href"] and "status=pending" in group["href"]
        assert listed_ids(client, group["href"]) == {q.invocation_id for q in queued}
    finally:
        for caller_id in callers:
            restate.kill(caller_id)  # a kill reaches the callee: the key's lock and queue are freed


def test_scheduled_says_when_the_delayed_send_fires(restate: RestateClient, engine: SyncEngine, client: Client) -> None:
    # Orchestrator.schedule: five delayed sends from a handler, the first a Greeter/greet in 5 minutes.
    sender = restate.send("Orchestrator", "schedule", payload=traffic.new_key("stucks"))
    children: list[str] = []
    try:
        rows = wait_for_restate(
            restate,
            f"SELECT id, target FROM sys_invocation WHERE invoked_by_id = {sql_literal(sender)}",
            lambda rows: len(rows) == 5,
        )
        children = [r["id"] for r in rows]
        # The 5-minute greeting: "Greeter/greet", fired by the Orchestrator's handler.
        greet = next(
            r["id"]
            for r in restate.query(
                "SELECT id, scheduled_at, scheduled_start_at FROM sys_invocation "
                f"WHERE invoked_by_id = {sql_literal(sender)} AND target = 'Greeter/greet' ORDER BY scheduled_start_at"
            )
        )
        sync_until(
            engine,
            lambda: Invocation.objects.filter(id=greet, status="scheduled", scheduled_start_at__isnull=False).exists(),
            what="the delayed send in our copy",
        )
        inv = Invocation.objects.get(id=greet)
        explanation = stuck(greet)
        assert explanation.reason.kind == ReasonKind.SCHEDULED
        assert inv.scheduled_start_at is not None
        assert timedelta(minutes=4) < inv.scheduled_start_at - inv.created_at < timedelta(minutes=6)

        panel = detail_panel(client, greet)
        assert "Scheduled to start" in panel and inv.scheduled_start_at.strftime("%Y-%m-%d %H:%M:%S") in panel
        assert f'a delayed send from <a href="/invocations/{sender}/">' in panel

        group = stuck_page_group(client, reason="scheduled", service="Greeter", handler="greet")
        expected = Invocation.objects.filter(status="scheduled", service_name="Greeter", handler_name="greet").count()
        assert int(group["count"]) == expected >= 1
        listed = listed_ids(client, group["href"])
        assert greet in listed and len(listed) == min(expected, 50)
    finally:
        for child in children:
            restate.kill(child)


def test_sleeping_says_until_when(restate: RestateClient, engine: SyncEngine, client: Client) -> None:
    inv_id = restate.send("Sleeper", "nap", payload=5)
    try:
        wait_for_restate(
            restate,
            f"SELECT entry_type FROM sys_journal WHERE id = {sql_literal(inv_id)}",
            lambda rows: any(r["entry_type"] == "Command: Sleep" for r in rows),
        )
        sync_until(
            engine,
            lambda: Invocation.objects.filter(id=inv_id, journal_synced_size__gte=2).exists(),
            what="the nap's Sleep in our copy",
        )
        explanation = stuck(inv_id)
        reason = explanation.reason
        assert reason.kind == ReasonKind.WAIT_SLEEP and reason.wait is not None and reason.wake_at is not None
        assert reason.wait.appended_at is not None
        assert abs((reason.wake_at - reason.wait.appended_at) - timedelta(minutes=5)) < timedelta(seconds=2)

        panel = detail_panel(client, inv_id)
        assert "Sleeping until" in panel and reason.wake_at.strftime("%Y-%m-%d %H:%M:%S") in panel

        status = Invocation.objects.get(id=inv_id).status  # running, or suspended after a minute
        group = stuck_page_group(client, reason="wait-sleep", service="Sleeper", handler="nap", status=status)
        expected = (
            Invocation.objects.filter(status=status, service_name="Sleeper", handler_name="nap")
            .filter(waiting_q("sleep"))
            .count()
        )
        assert int(group["count"]) == expected >= 1
        assert "waiting=sleep" in group["href"] and f"status={status}" in group["href"]
        assert inv_id in listed_ids(client, group["href"])
    finally:
        restate.kill(inv_id)


def test_promise_waiting_names_the_promise_and_leaves_once_resolved(
    restate: RestateClient, engine: SyncEngine, client: Client
) -> None:
    wf = traffic.new_key("stuckp")
    inv_id = restate.send("Signup", "run", key=wf, payload=f"{wf}@example.com")
    try:
        wait_for_restate(
            restate,
            f"SELECT entry_type FROM sys_journal WHERE id = {sql_literal(inv_id)}",
            lambda rows: any(r["entry_type"] == "Command: GetPromise" for r in rows),
        )
        sync_until(
            engine,
            lambda: (
                Invocation.objects.filter(id=inv_id, journal_synced_size__gte=3).exists()
                and WorkflowPromise.objects.filter(service_key=wf).exists()
            ),
            what="the workflow's GetPromise and its promise in our copy",
        )
        reason = stuck(inv_id).reason
        assert reason.kind == ReasonKind.WAIT_PROMISE and reason.promise == "confirmed"
        assert reason.promise_row is not None and not reason.promise_row.completed

        panel = detail_panel(client, inv_id)
        assert 'Waiting for workflow promise <q class="promise">confirmed</q>' in panel
        assert f"<code>Signup/{wf}</code>" in panel and "not resolved yet" in panel

        status = Invocation.objects.get(id=inv_id).status
        group = stuck_page_group(client, reason="wait-promise", service="Signup", handler="run", status=status)
        expected = (
            Invocation.objects.filter(status=status, service_name="Signup", handler_name="run")
            .filter(waiting_q("promise"))
            .count()
        )
        assert int(group["count"]) == expected >= 1
        assert "waiting=promise" in group["href"] and inv_id in listed_ids(client, group["href"])

        # Resolved through the workflow's other handler: no longer stuck, and no longer on /stuck/.
        restate.send("Signup", "confirm", key=wf, payload="code-1")
        sync_until(
            engine,
            lambda: Invocation.objects.filter(id=inv_id, status="completed").exists(),
            what="the run completing once its promise is resolved",
        )
        assert invocation_stuck(Invocation.objects.get(id=inv_id)) is None
        assert 'id="inv-stuck"' not in client.get(f"/invocations/{inv_id}/").content.decode()
    finally:
        restate.kill(inv_id)


def test_paused_says_since_and_by_whom_through_us(restate: RestateClient, engine: SyncEngine, client: Client) -> None:
    ours, theirs = traffic.fire_failing(restate)[0], traffic.fire_failing(restate)[0]
    try:
        for inv_id in (ours, theirs):
            in_restate(restate, inv_id, lambda r: r["status"] == "backing-off")
        operator = user_create(username="pauser", password="pw-for-tests-only", role=Role.OPERATOR)
        result = invocation_act(user=operator, action=Action.PAUSE, invocation_id=ours, client=restate)
        assert result.ok, result
        restate.pause(theirs)  # not through us
        for inv_id in (ours, theirs):
            in_restate(restate, inv_id, lambda r: r["status"] == "paused")
        sync_until(
            engine,
            lambda: Invocation.objects.filter(id__in=[ours, theirs], status="paused").count() == 2,
            what="both paused in our copy",
        )
        mine, other = stuck(ours).reason, stuck(theirs).reason
        assert mine.kind == other.kind == ReasonKind.PAUSED
        assert mine.pause is not None and mine.pause.username == "pauser" and other.pause is None

        assert "by <strong>pauser</strong> through this dashboard" in detail_panel(client, ours)
        assert "not through this dashboard" in detail_panel(client, theirs)

        group = stuck_page_group(client, reason="paused", service="Flaky", handler="fail")
        expected = Invocation.objects.filter(status="paused", service_name="Flaky", handler_name="fail").count()
        assert int(group["count"]) == expected >= 2
        assert {ours, theirs} <= listed_ids(client, group["href"])
    finally:
        for inv_id in (ours, theirs):
            restate.kill(inv_id)


def test_deadlock_members_say_which_deadlock_and_stuck_groups_them(
    restate: RestateClient, engine: SyncEngine, client: Client
) -> None:
    key = f"stuckdl-{uuid.uuid4().hex[:8]}"
    (root,) = traffic.fire_cross_deadlock(restate, key=key)
    try:
        wait_for_restate(
            restate,
            f"SELECT id FROM sys_inbox WHERE service_name = 'Alpha' AND service_key = {sql_literal(key)}",
            lambda rows: len(rows) == 1,
        )
        members = {
            r["id"]
            for r in restate.query(f"SELECT id FROM sys_invocation WHERE target_service_key = {sql_literal(key)}")
        }
        deadline = time.monotonic() + 60
        while True:
            engine.sync_once()
            deadlocks_refresh()
            reasons = {inv.id: invocation_stuck(inv) for inv in Invocation.objects.filter(id__in=members)}
            kinds = {r.reason.kind if r is not None else None for r in reasons.values()}
            if len(reasons) == 3 and kinds == {ReasonKind.DEADLOCK}:
                break
            assert time.monotonic() < deadline, f"no deadlock reason for every member: {reasons}"
            time.sleep(0.3)
        deadlock = next(iter(reasons.values()))
        assert deadlock is not None and deadlock.reason.deadlock is not None
        deadlock_id = deadlock.reason.deadlock.id
        assert deadlock.reason.deadlock_size == 3

        panel = detail_panel(client, root)
        assert f'href="/deadlocks/#deadlock-{deadlock_id}"' in panel and "3 invocations" in panel

        group = stuck_page_group(client, reason="deadlock", deadlock=deadlock_id)
        assert int(group["count"]) == 3 and group["href"] == f"/deadlocks/#deadlock-{deadlock_id}"
        # Listed under their deadlock only: not again as queued or waiting on a call.
        page = _Groups()
        page.feed(client.get("/stuck/").content.decode())
        assert not [r for r in page.rows if r.get("key") == key]
    finally:
        restate.kill(root)
