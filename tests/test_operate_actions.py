"""Single actions against a real restate-server with the demo services: what Restate
accepts in each status (the table in invocations/mirror/actions.py), each action
through the page's POST with Restate's answer in words, the refused cases, and a
saga whose cancellation runs its compensations, seen in our copy after a sync."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client

from invocations.mirror.actions import Action, action_allowed
from invocations.mirror.models import Invocation, InvocationEdge
from invocations.mirror.sync.engine import SyncEngine
from invocations.operations.roles import Role, user_create
from invocations.records.models import AuditEntry
from invocations.restate import RestateClient, sql_literal
from tests.conftest import sync_until, wait_completed

pytestmark = pytest.mark.integration


def statuses(restate: RestateClient, ids: list[str]) -> dict[str, str]:
    rows = restate.query(f"SELECT id, status FROM sys_invocation WHERE id IN ({', '.join(map(sql_literal, ids))})")
    return {r["id"]: r["status"] for r in rows}


def wait_status(restate: RestateClient, want: dict[str, str], *, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        now = statuses(restate, list(want))
        if all(now.get(i) == s for i, s in want.items()):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"never reached {want}; now {now}")
        time.sleep(0.2)


@pytest.fixture
def operator(demo_stack: Any, settings: Any, transactional_db: None) -> Client:
    settings.RESTATE_ADMIN_URL = demo_stack.admin_url
    settings.RESTATE_INGRESS_URL = demo_stack.ingress_url
    c = Client()
    c.force_login(user_create(username="operator", password="pw-for-tests-only", role=Role.OPERATOR))
    return c


def act(c: Client, invocation_id: str, action: Action, *, key: str | None = None) -> str:
    response = c.post(
        f"/invocations/{invocation_id}/actions/{action.value}/",
        {"request_key": key or f"{action.value}-{invocation_id}"},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200, response.content.decode()[:500]
    return response.content.decode()


def test_restate_accepts_each_action_where_the_table_says(restate: RestateClient) -> None:
    """Every (status, action) pair we can produce quickly, against Restate itself. Suspended is
    not here: the Python SDK stays `running` for about a minute before it suspends."""
    send = restate.send
    running = [send("Sleeper", "nap", payload=10.0) for _ in range(4)]
    backing = [send("Flaky", "fail", payload="matrix") for _ in range(3)]
    scheduled = [send("Greeter", "greet", payload="later", delay=timedelta(minutes=30)) for _ in range(2)]
    completed = [send("Greeter", "greet", payload="done") for _ in range(2)]
    wait_status(restate, {i: "running" for i in running} | {i: "completed" for i in completed})
    restate.pause(running[3])
    wait_status(restate, {i: "backing-off" for i in backing} | {running[3]: "paused"})
    answers: dict[tuple[str, Action], int] = {}

    def check(inv_id: str, status: str, action: Action) -> None:
        # Each op is tried where the status is the one Restate reports right now.
        assert statuses(restate, [inv_id])[inv_id] == status, (inv_id, status)
        answers[(status, action)] = restate.operate(action.operation, inv_id).http_status

    # Refusals change nothing: try them all on one invocation per status first.
    for inv_id, status in ((running[0], "running"), (backing[0], "backing-off"), (scheduled[0], "scheduled")):
        for action in (Action.RESTART_AS_NEW, Action.PURGE, Action.PURGE_JOURNAL):
            check(inv_id, status, action)
    for action in (Action.PAUSE, Action.RESUME):
        check(scheduled[0], "scheduled", action)
    for action in (Action.CANCEL, Action.KILL, Action.PAUSE, Action.RESUME):
        check(completed[0], "completed", action)
    for action in (Action.RESTART_AS_NEW, Action.PURGE, Action.PURGE_JOURNAL):
        check(running[3], "paused", action)
    # Then the ones that act, each on an invocation of its own.
    check(running[0], "running", Action.PAUSE)
    check(running[1], "running", Action.CANCEL)
    check(running[2], "running", Action.KILL)
    check(backing[0], "backing-off", Action.PAUSE)
    check(backing[1], "backing-off", Action.RETRY_NOW)
    check(backing[2], "backing-off", Action.KILL)
    check(scheduled[0], "scheduled", Action.CANCEL)
    check(scheduled[1], "scheduled", Action.KILL)
    check(running[3], "paused", Action.RESUME)
    check(completed[0], "completed", Action.RESTART_AS_NEW)
    check(completed[0], "completed", Action.PURGE_JOURNAL)
    check(completed[1], "completed", Action.PURGE)
    for (status, action), http_status in answers.items():
        accepted = http_status < 300
        assert accepted is action_allowed(action, status=status), (status, action, http_status)


def test_cancel_a_running_tree_and_the_refusals(restate: RestateClient, engine: SyncEngine, operator: Client) -> None:
    root = restate.send("Orchestrator", "long", payload=10.0)
    done = restate.send("Greeter", "greet", payload="x")
    wait_completed(restate, done)

    def nap_synced() -> bool:
        return InvocationEdge.objects.filter(caller_id=root, kind="call", callee_id__isnull=False).exists()

    sync_until(engine, nap_synced, what="the nap call of Orchestrator/long")
    nap = InvocationEdge.objects.get(caller_id=root).callee_id
    assert nap is not None
    confirm = operator.get(f"/invocations/{root}/actions/cancel/").content.decode()
    assert nap in confirm and "Sleeper/nap" in confirm and "Compensations run" in confirm

    page = act(operator, root, Action.CANCEL)
    assert "accepted" in page and "Restate answered 202" in page
    assert f"restate invocations cancel --yes {root}" in page

    def cancelled() -> bool:
        rows = dict(Invocation.objects.filter(id__in=[root, nap]).values_list("id", "completion_failure"))
        return all(rows.get(i) and "[409] cancelled" in rows[i] for i in (root, nap))

    sync_until(engine, cancelled, what="root and nap completed as cancelled")
    # Refused: cancel a completed one; purge a running one; resume a scheduled one.
    assert "already completed" in act(operator, root, Action.CANCEL, key="again")
    running = restate.send("Sleeper", "nap", payload=5.0)
    scheduled = restate.send("Greeter", "greet", payload="later", delay=timedelta(minutes=30))
    wait_status(restate, {running: "running"})
    assert "not allowed in this state" in act(operator, running, Action.PURGE)
    assert "not allowed in this state" in act(operator, scheduled, Action.RESUME)
    # A well-formed id Restate does not hold (purged): Restate's 404.
    assert restate.purge(done).ok
    assert "unknown id" in act(operator, done, Action.CANCEL)
    outcomes = dict(AuditEntry.objects.values_list("targets__0", "outcome").filter(action__in=["purge", "resume"]))
    assert outcomes == {running: "conflict", scheduled: "not_ready"}
    restate.kill(running)
    restate.kill(scheduled)


def test_kill_pause_resume_retry_restart_purge(restate: RestateClient, operator: Client) -> None:
    to_kill, to_pause = (restate.send("Sleeper", "nap", payload=10.0) for _ in range(2))
    flaky = restate.send("Flaky", "fail", payload="retry-now")
    greet = restate.send("Greeter", "greet", payload="restart me")
    wait_status(restate, {to_kill: "running", to_pause: "running", greet: "completed"})

    assert "accepted" in act(operator, to_kill, Action.KILL)
    assert "accepted" in act(operator, to_pause, Action.PAUSE)
    wait_status(restate, {to_kill: "completed", to_pause: "paused"})
    assert "accepted" in act(operator, to_pause, Action.RESUME)
    wait_status(restate, {to_pause: "running"})

    wait_status(restate, {flaky: "backing-off"})
    before = restate.query(f"SELECT retry_count FROM sys_invocation WHERE id = '{flaky}'")[0]["retry_count"]
    assert "accepted" in act(operator, flaky, Action.RETRY_NOW)
    deadline = time.monotonic() + 5  # its next retry was at least a second away: this one is ours
    while restate.query(f"SELECT retry_count FROM sys_invocation WHERE id = '{flaky}'")[0]["retry_count"] <= before:
        assert time.monotonic() < deadline, "retry now did not start an attempt"
        time.sleep(0.1)

    restarted = act(operator, greet, Action.RESTART_AS_NEW)
    assert "accepted" in restarted and 'class="new-invocation"' in restarted
    new_id = restarted.split('class="new-invocation" href="/invocations/')[1].split("/")[0]
    assert new_id != greet and new_id.startswith("inv_")
    wait_completed(restate, new_id)
    assert "accepted" in act(operator, greet, Action.PURGE_JOURNAL)
    assert "accepted" in act(operator, new_id, Action.PURGE)
    assert restate.query(f"SELECT id FROM sys_invocation WHERE id = '{new_id}'") == []
    # A workflow cannot be restarted as new.
    wf = f"wf-restart-{time.time_ns()}"
    restate.send("Signup", "confirm", key=wf, payload="c")
    run = restate.send("Signup", "run", key=wf, payload="a@example.com")
    wait_completed(restate, run)
    assert "not allowed for this invocation" in act(operator, run, Action.RESTART_AS_NEW)
    for leftover in (to_pause, flaky):
        restate.kill(leftover)


def test_a_double_submit_reaches_restate_once(restate: RestateClient, operator: Client) -> None:
    nap = restate.send("Sleeper", "nap", payload=10.0)
    first = act(operator, nap, Action.KILL, key="one-form")
    second = act(operator, nap, Action.KILL, key="one-form")
    assert "accepted" in first and "already submitted" in second and "accepted" in second
    assert AuditEntry.objects.filter(targets__contains=[nap]).count() == 1


def test_cancelling_a_saga_runs_its_compensations(restate: RestateClient, engine: SyncEngine, operator: Client) -> None:
    book = restate.send("Trip", "book", payload=10.0)

    def napping() -> bool:
        return Invocation.objects.filter(parent_id=book, target="Sleeper/nap").exists()

    sync_until(engine, napping, what="the saga reserved seat and room and waits in its nap")
    assert "accepted" in act(operator, book, Action.CANCEL)

    def compensated() -> bool:
        inv = Invocation.objects.filter(id=book).first()
        return bool(inv and inv.status == "completed") and (
            Invocation.objects.filter(parent_id=book, handler_name="release", status="completed").count() == 2
        )

    sync_until(engine, compensated, what="the saga's two releases ran after the cancel")
    children = list(Invocation.objects.filter(parent_id=book).order_by("created_at").values_list("target", "status"))
    assert [t for t, _ in children] == [
        "Inventory/seat/reserve",
        "Inventory/room/reserve",
        "Sleeper/nap",
        "Inventory/room/release",
        "Inventory/seat/release",
    ]
    assert "[409] cancelled" in (Invocation.objects.get(id=book).completion_failure or "")
    # The detail page's tree shows them.
    tree = operator.get(f"/invocations/{book}/").content.decode()
    assert tree.count("release") >= 2
