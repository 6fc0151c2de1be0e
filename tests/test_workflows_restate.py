"""Workflow pages against real Restate and the demo services: a Signup workflow whose run
waits on its durable promise shows the promise pending, then resolved with its value once
the test resolves it (or rejected with its failure); Orchestrator.workflow's interactions
in Restate's time order; the retention end Restate's own columns give; attach by workflow
id; bad input. Every workflow id is new; whatever a test starts it kills."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from demo import traffic
from invocations import events
from invocations.mirror.models import Invocation, WorkflowPromise
from invocations.mirror.sync.engine import SyncEngine
from invocations.mirror.sync.mapping import parse_timestamp
from invocations.restate import RestateClient, sql_literal
from tests.conftest import sync_until, wait_completed, wait_for_restate

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def restate_settings(settings: Any, demo_stack: Any) -> None:
    """The pages read the workflow's state, and attach, through the demo's Restate."""
    settings.RESTATE_ADMIN_URL = demo_stack.admin_url
    settings.RESTATE_INGRESS_URL = demo_stack.ingress_url


def part(body: str, section: str) -> str:
    """A section of the page, up to the next top-level one (the run's holds the stuck and attach sections)."""
    start = body.index(f'<section id="{section}"')
    if section == "workflow-run":
        return body[start : body.index('<section id="workflow-promises"')]
    return body[start:].split("</section>")[0]


def page(client: Client, workflow_id: str) -> str:
    response = client.get(reverse("invocations:workflow", args=["Signup", workflow_id]))
    assert response.status_code == 200, response.content.decode()[:2000]
    return response.content.decode()


def promise_row(body: str, name: str) -> str:
    promises = part(body, "workflow-promises")
    return promises[promises.index(f'data-promise="{name}"') :].split("</tr>")[0]


def awaiting_its_promise(restate: RestateClient, run: str) -> None:
    """The run has reached `await ctx.promise("confirmed")`: its journal has the GetPromise."""
    wait_for_restate(
        restate,
        f"SELECT entry_type FROM sys_journal WHERE id = {sql_literal(run)}",
        lambda rows: any(r["entry_type"] == "Command: GetPromise" for r in rows),
    )


def kill_unfinished(restate: RestateClient, workflow_id: str) -> None:
    for row in restate.query(
        f"SELECT id FROM sys_invocation WHERE target_service_key = {sql_literal(workflow_id)} AND status != 'completed'"
    ):
        restate.kill(row["id"])


def test_a_waiting_workflow_shows_its_promise_pending_then_resolved_with_its_value(
    restate: RestateClient, engine: SyncEngine, client: Client
) -> None:
    wf = traffic.new_key("wfpage")
    t0 = time.monotonic()
    run = restate.send("Signup", "run", key=wf, payload=f"{wf}@example.com")
    try:
        awaiting_its_promise(restate, run)
        assert restate.call("Signup", "status", key=wf) == "waiting for confirmation"
        sync_until(
            engine,
            lambda: (
                WorkflowPromise.objects.filter(service_key=wf, key="confirmed", completed=False).exists()
                and Invocation.objects.filter(id=run, journal_synced_size__gte=3).exists()
                and Invocation.objects.filter(service_key=wf, handler_name="status", status="completed").exists()
            ),
            what="the run, its pending promise and the status call in our copy",
        )
        waiting = page(client, wf)
        pending = promise_row(waiting, "confirmed")
        assert 'data-state="pending"' in pending and "not resolved yet" in pending
        run_part = part(waiting, "workflow-run")
        assert run in run_part and "succeeded" not in run_part
        assert 'Waiting for workflow promise <q class="promise">confirmed</q>' in run_part
        assert "for its completion retention after it completes (1 day for this run)" in run_part
        assert "workflow id (Signup/" in part(waiting, "inv-attach")
        assert 'data-handler="status"' in part(waiting, "workflow-interactions")
        state = part(waiting, "object-state")
        assert "read from Restate's <code>state</code> table at" in state and "Could not read" not in state
        assert "<code>status</code>" in state and "waiting for confirmation" in state
        status = Invocation.objects.get(id=run).status
        listed = client.get(f"/workflows/?service=Signup&status={status}")
        assert run in [r.inv.id for r in listed.context["rows"]]
        t_pending = time.monotonic()

        # The test resolves the promise through the workflow's other handler.
        confirm = restate.send("Signup", "confirm", key=wf, payload=f"code-{wf}")
        wait_completed(restate, run)
        sync_until(
            engine,
            lambda: (
                WorkflowPromise.objects.filter(service_key=wf, key="confirmed", completed=True).exists()
                and Invocation.objects.filter(id=run, status="completed").exists()
                and Invocation.objects.filter(id=confirm, status="completed").exists()
            ),
            what="the promise resolved and the run completed in our copy",
        )
        done = page(client, wf)
        resolved = promise_row(done, "confirmed")
        assert 'data-state="resolved"' in resolved and f"&quot;code-{wf}&quot;" in resolved
        run_part = part(done, "workflow-run")
        assert "succeeded" in run_part and 'id="inv-stuck"' not in run_part
        # When Restate forgets it: its own completed_at plus its own completion_retention.
        (row,) = restate.query(
            f"SELECT completed_at, completion_retention FROM sys_invocation WHERE id = {sql_literal(run)}"
        )
        assert row["completion_retention"] == "PT86400S"
        ends = parse_timestamp(row["completed_at"]) + timedelta(days=1)
        assert f'datetime="{ends.isoformat()}"' in run_part and "completion retention of 1 day" in run_part
        interactions = part(done, "workflow-interactions")
        assert interactions.index('data-handler="status"') < interactions.index(f'id="interaction-{confirm}"')
        assert "confirmed" in part(done, "object-state")
        # Attach by workflow id: the run's result, fetched at once now that it completed.
        attached = client.post(reverse("invocations:attach", args=[run]), headers={"HX-Request": "true"})
        assert attached.status_code == 200
        assert "Succeeded" in attached.content.decode() and f"{wf}@example.com confirmed with code-{wf}" in (
            attached.content.decode()
        )
        print(
            f"\npending shown {t_pending - t0:.1f} s after the send, resolved {time.monotonic() - t_pending:.1f} s later"
        )
    finally:
        kill_unfinished(restate, wf)


def test_a_rejected_promise_shows_its_failure_and_the_run_fails(
    restate: RestateClient, engine: SyncEngine, client: Client
) -> None:
    wf = traffic.new_key("wfreject")
    run = restate.send("Signup", "run", key=wf, payload=f"{wf}@example.com")
    try:
        awaiting_its_promise(restate, run)
        restate.call("Signup", "reject", key=wf, payload="address bounced")
        wait_completed(restate, run)
        (promise,) = restate.query(
            f"SELECT completed, completion_failure FROM sys_promise WHERE service_key = {sql_literal(wf)}"
        )
        assert promise["completed"] is True
        sync_until(
            engine,
            lambda: (
                WorkflowPromise.objects.filter(service_key=wf, completed=True).exists()
                and Invocation.objects.filter(id=run, status="completed").exists()
            ),
            what="the rejected promise and the failed run in our copy",
        )
        body = page(client, wf)
        rejected = promise_row(body, "confirmed")
        assert 'data-state="rejected"' in rejected and promise["completion_failure"] in rejected
        assert "address bounced" in promise["completion_failure"]
        failed = part(body, "workflow-run")
        assert 'class="failure"' in failed and "address bounced" in failed
    finally:
        kill_unfinished(restate, wf)


def test_orchestrated_workflow_interactions_in_restates_time_order(
    restate: RestateClient, engine: SyncEngine, client: Client
) -> None:
    # Orchestrator.workflow: a delayed send of confirm (3 s), a call to run, then a call to status.
    wf = traffic.new_key("wforch")
    root = restate.send("Orchestrator", "workflow", payload=wf)
    try:
        wait_completed(restate, root)
        theirs = restate.query(
            "SELECT id, target_handler_name, invoked_by_id FROM sys_invocation "
            f"WHERE target_service_key = {sql_literal(wf)} ORDER BY created_at, id"
        )
        assert sorted(r["target_handler_name"] for r in theirs) == ["confirm", "run", "status"]
        sync_until(
            engine,
            lambda: Invocation.objects.filter(service_key=wf, status="completed").count() == 3,
            what="the run and both interactions completed in our copy",
        )
        response = client.get(reverse("invocations:workflow", args=["Signup", wf]))
        body = response.content.decode()
        interactions = [r["id"] for r in theirs if r["target_handler_name"] != "run"]
        assert [i.id for i in response.context["interactions"]] == interactions
        section = part(body, "workflow-interactions")
        assert section.index(interactions[0]) < section.index(interactions[1])
        assert all(r["invoked_by_id"] == root for r in theirs), "all three came from the orchestrator"
        assert section.count(">Orchestrator/workflow</a>") == 2
        assert ">Orchestrator/workflow</a>" in part(body, "workflow-run")
        assert 'data-state="resolved"' in promise_row(body, "confirmed")
    finally:
        kill_unfinished(restate, wf)


def test_bad_input_is_refused(restate: RestateClient, engine: SyncEngine, client: Client) -> None:
    engine.sync_once()  # the catalog: which services are workflows
    assert client.get("/workflows/?service=Signup").status_code == 200
    assert client.get("/workflows/NoSuchWorkflow/x/").status_code == 404
    assert client.get("/workflows/Counter/x/").status_code == 404, "a virtual object is no workflow"
    assert client.get("/workflows/Signup/never-started-here/").status_code == 404
    assert client.get("/workflows/?service=Counter").status_code == 400
    assert client.get("/workflows/?service=NoSuchWorkflow").status_code == 400
    assert client.get("/workflows/?status=done").status_code == 400
    assert client.get("/workflows/?before=not-a-cursor").status_code == 400


def test_a_promise_resolved_reaches_our_copy_in_the_next_step_not_with_the_slow_tables(
    restate: RestateClient, transactional_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole promise table is read only every `slow_every` (an hour here): the step that
    sees the confirm call re-reads that workflow's promises, and tells its page."""
    engine = SyncEngine(restate, reconcile_every=timedelta(days=1), slow_every=timedelta(hours=1))
    wf = traffic.new_key("wfstep")
    run = restate.send("Signup", "run", key=wf, payload=f"{wf}@example.com")
    try:
        awaiting_its_promise(restate, run)
        sync_until(
            engine,
            lambda: WorkflowPromise.objects.filter(service_key=wf, key="confirmed", completed=False).exists(),
            what="the pending promise (read by the run's own change)",
        )
        told: list[set[tuple[str, str]]] = []
        monkeypatch.setattr(events, "promises_changed", lambda *, keys: told.append(set(keys)))
        restate.call("Signup", "confirm", key=wf, payload="code-42")
        sync_until(
            engine,
            lambda: WorkflowPromise.objects.filter(service_key=wf, key="confirmed", completed=True).exists(),
            timeout=10,
            what="the resolved promise, within steps that never read the whole promise table",
        )
        assert WorkflowPromise.objects.get(service_key=wf, key="confirmed").success_value == '"code-42"'
        assert ("Signup", wf) in set().union(*told)
    finally:
        restate.kill(run)
