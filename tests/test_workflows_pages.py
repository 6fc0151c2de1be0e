"""The workflow pages from our copy (real PostgreSQL, rows made by the factories):
/workflows/ (runs only, newest first, by service and status, counted per status, keyset
pages, bad filters), a workflow id's page (its run, interactions in time order, promises
pending / resolved / rejected, retention end, attach by workflow id, ids of any shape,
404s), and both pages' sockets. Real Restate: test_workflows_restate.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import unquote

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.core.cache import cache
from django.test import Client
from django.urls import resolve, reverse
from django.utils import timezone
from django.utils.html import escape

from demo.stack import free_port
from invocations import events
from invocations.mirror.models import Invocation, Service, SyncState, WorkflowPromise
from invocations.reads.presenters.workflows import retention_end
from invocations.reads.selectors.workflows import workflow_runs_page
from tests.factories import T0, create_invocation, invocation_id
from tests.test_live_updates import run_session


@pytest.fixture(autouse=True)
def no_restate(settings: Any) -> Iterator[None]:
    """The state is read from Restate over HTTP: point it at a port nobody listens on;
    the state cache must not leak between tests."""
    settings.RESTATE_ADMIN_URL = f"http://127.0.0.1:{free_port()}"
    settings.RESTATE_INGRESS_URL = f"http://127.0.0.1:{free_port()}"
    cache.clear()
    yield
    cache.clear()


def catalog() -> None:
    Service.objects.update_or_create(name="Signup", defaults={"service_type": "workflow"})
    Service.objects.update_or_create(name="Onboarding", defaults={"service_type": "workflow"})
    Service.objects.update_or_create(name="Worker", defaults={"service_type": "virtual_object"})
    Service.objects.update_or_create(name="Greeter", defaults={"service_type": "service"})


def wf(
    workflow_id: str, handler: str = "run", *, n: int, service: str = "Signup", at_s: float = 0, **fields: Any
) -> Invocation:
    """An invocation of `handler` on workflow `workflow_id`, created `at_s` seconds after T0."""
    fields.setdefault("completion_retention", "PT86400S")
    fields.update(service_key=workflow_id, handler_name=handler, service_type="workflow")
    fields.setdefault("created_at", T0 + timedelta(seconds=at_s))
    return create_invocation(id=invocation_id("wf", n), target=f"{service}/{workflow_id}/{handler}", **fields)


def promise(workflow_id: str, name: str = "confirmed", *, service: str = "Signup", **fields: Any) -> WorkflowPromise:
    return WorkflowPromise.objects.create(service_name=service, service_key=workflow_id, key=name, **fields)


def text(response: Any) -> str:
    return response.content.decode()


def part(body: str, section: str) -> str:
    """A section of the page, up to the next top-level one (the run's holds the stuck and attach sections)."""
    start = body.index(f'<section id="{section}"')
    if section == "workflow-run":
        return body[start : body.index('<section id="workflow-promises"')]
    return body[start:].split("</section>")[0]


# ------------------------------------------------------------------ /workflows/


def test_workflows_lists_runs_only_newest_first_with_counts_by_status(client: Client) -> None:
    catalog()
    old = wf("a", n=1, at_s=0)
    running = wf("b", n=2, at_s=10, status="running", ran_ms=None)
    other = wf("c", n=3, at_s=20, service="Onboarding", status="suspended", ran_ms=None)
    wf("a", "status", n=4, at_s=30)  # an interaction, not a run
    create_invocation(id=invocation_id("gr", 5), target="Greeter/greet", created_at=T0 + timedelta(seconds=40))
    create_invocation(
        id=invocation_id("wk", 6), target="Worker/k/run", created_at=T0 + timedelta(seconds=50)
    )  # an object's handler named run is no workflow run

    response = client.get("/workflows/")
    assert response.status_code == 200
    assert [r.inv.id for r in response.context["rows"]] == [other.id, running.id, old.id]
    body = text(response)
    assert 'href="/workflows/Signup/a/"' in body and 'href="/workflows/Onboarding/c/"' in body
    chips = {c.status: c.count for c in response.context["chips"]}
    assert chips == {"completed": 1, "running": 1, "suspended": 1}
    assert "3 runs" in body
    # The completed run says when Restate forgets it: completed_at + its completion retention.
    row = body[body.index(f'id="run-{old.id}"') :].split("</tr>")[0]
    assert "succeeded" in row and (old.completed_at + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S") in row

    signup = client.get("/workflows/?service=Signup")
    assert [r.inv.id for r in signup.context["rows"]] == [running.id, old.id]
    assert {c.status: c.count for c in signup.context["chips"]} == {"completed": 1, "running": 1}
    assert 'ws-connect="/ws/workflows/?service=Signup"' in text(signup)

    runs = client.get("/workflows/?service=Signup&status=running")
    assert [r.inv.id for r in runs.context["rows"]] == [running.id]
    # The chips still count every status of the service; the chosen one is active.
    assert {(c.status, c.count, c.active) for c in runs.context["chips"]} == {
        ("completed", 1, False),
        ("running", 1, True),
    }
    empty = client.get("/workflows/?status=paused")
    assert empty.context["rows"] == [] and "No workflow run with status paused in our copy." in text(empty)


def test_workflows_pages_by_keyset(client: Client) -> None:
    catalog()
    made = [wf(f"id-{n:02d}", n=n, at_s=n) for n in range(55)]
    newest_first = [inv.id for inv in reversed(made)]
    first = client.get("/workflows/")
    assert [r.inv.id for r in first.context["rows"]] == newest_first[:50]
    next_query = first.context["next_query"]
    assert next_query.startswith("before=")
    second = client.get(f"/workflows/?{next_query}")
    assert [r.inv.id for r in second.context["rows"]] == newest_first[50:]
    assert second.context["next_query"] == "" and "← newest" in text(second)
    # Two runs created at the same moment are told apart by id, never skipped or repeated.
    same = [wf(f"tie-{n}", n=100 + n, at_s=1000) for n in range(3)]
    page = workflow_runs_page(limit=2)
    assert [r.id for r in page.rows] == sorted((s.id for s in same), reverse=True)[:2]
    assert page.next_cursor is not None
    rest = workflow_runs_page(limit=2, before=page.next_cursor)
    assert rest.rows[0].id == min(s.id for s in same)


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("service=Nope", "no service named &#x27;Nope&#x27; in our copy of Restate"),
        ("service=Worker", "Worker is a virtual_object, not a workflow"),
        ("status=exploded", "Select a valid choice"),
        ("before=yesterday", "is not of the form"),
        ("before=2026-13-01T00:00:00Z~inv_1", "is not an ISO-8601 time"),
    ],
)
def test_workflows_refuses_bad_filters(client: Client, query: str, reason: str) -> None:
    catalog()
    response = client.get(f"/workflows/?{query}")
    assert response.status_code == 400
    assert reason in text(response)


def test_workflows_htmx_gets_only_the_results(client: Client) -> None:
    catalog()
    body = text(client.get("/workflows/?service=Signup", headers={"HX-Request": "true"}))
    assert body.lstrip().startswith('<div id="workflows-results"') and "<html" not in body


def test_the_header_links_to_workflows(client: Client) -> None:
    assert 'href="/workflows/">Workflows</a>' in text(client.get("/invocations/"))


# ------------------------------------------------------------------ one workflow id


def test_a_workflow_page_shows_run_interactions_in_time_order_promises_and_retention(client: Client) -> None:
    catalog()
    run = wf("wf-1", n=1, at_s=0, status="completed", ran_ms=3000)
    # Created out of order on purpose: the page orders by creation time.
    confirm = wf("wf-1", "confirm", n=2, at_s=2, ran_ms=10)
    early_status = wf("wf-1", "status", n=3, at_s=1, ran_ms=5)
    caller = create_invocation(id=invocation_id("or", 4), target="Orchestrator/workflow", created_at=T0)
    late_status = wf(
        "wf-1", "status", n=5, at_s=4, ran_ms=5, parent_id=caller.id, invoked_by="service",
        invoked_by_target="Orchestrator/workflow",
    )  # fmt: skip
    wf("wf-2", "status", n=6, at_s=3)  # another id: not an interaction of wf-1
    promise("wf-1", "confirmed", completed=True, success_value='"code-7"')
    promise("wf-1", "address")
    promise("wf-1", "payment", completed=True, failure="[400] card declined")

    response = client.get(reverse("invocations:workflow", args=["Signup", "wf-1"]))
    assert response.status_code == 200
    body = text(response)
    assert response.context["run"] == run
    assert [i.id for i in response.context["interactions"]] == [early_status.id, confirm.id, late_status.id]
    interactions = part(body, "workflow-interactions")
    assert interactions.index(early_status.id) < interactions.index(confirm.id) < interactions.index(late_status.id)
    assert ">Orchestrator/workflow</a>" in interactions and "ingress" in interactions
    assert invocation_id("wf", 6) not in body

    promises = part(body, "workflow-promises")
    assert [(p.name, p.state) for p in response.context["promises"]] == [
        ("address", "pending"),
        ("confirmed", "resolved"),
        ("payment", "rejected"),
    ]
    assert 'data-promise="confirmed" data-state="resolved"' in promises and "&quot;code-7&quot;" in promises
    assert 'data-promise="address" data-state="pending"' in promises and "not resolved yet" in promises
    assert "[400] card declined" in promises

    run_part = part(body, "workflow-run")
    assert run.id in run_part and "succeeded" in run_part
    ends = run.completed_at + timedelta(days=1)
    assert retention_end(run) == ends
    assert f'datetime="{ends.isoformat()}"' in run_part and "completion retention of 1 day after" in run_part
    # Attach by workflow id, on the run.
    assert 'id="inv-attach"' in body and "workflow id (Signup/wf-1)" in body
    assert f'action="/invocations/{run.id}/attach/"' in body
    # The state is read from Restate (which is not there): said, not a failure of the page.
    assert "Could not read the state from Restate" in part(body, "object-state")
    assert 'ws-connect="/ws/workflow/?service=Signup&amp;id=wf-1"' in body


def test_an_invocation_on_a_workflow_links_to_the_workflows_page(client: Client) -> None:
    catalog()
    link = 'href="/workflows/Signup/a~sb/"'
    for inv in (wf("a/b", n=1), wf("a/b", "status", n=2)):
        assert link in text(client.get(f"/invocations/{inv.id}/"))
    obj = create_invocation(id=invocation_id("wk", 3), target="Worker/k/work")
    assert "/workflows/" not in part(text(client.get(f"/invocations/{obj.id}/")), "inv-header")


def test_a_running_run_says_its_retention_starts_at_completion_and_why_it_waits(client: Client) -> None:
    catalog()
    wf("wf-r", n=1, status="suspended", ran_ms=None, completion_retention="PT3600S")
    body = text(client.get("/workflows/Signup/wf-r/"))
    assert "for its completion retention after it completes (1 h for this run)" in body
    assert 'id="inv-stuck"' in body, "the run's 'Why is this stuck?' panel"


def test_a_workflow_past_its_retention_says_so(client: Client) -> None:
    catalog()
    ended = timezone.now() - timedelta(days=2)
    wf("wf-old", n=1, created_at=ended - timedelta(seconds=1), completed_at=ended)
    assert "Its retention ended" in text(client.get("/workflows/Signup/wf-old/"))
    wf("wf-gone", n=2, gone_from_restate_at=timezone.now())
    assert "Gone from Restate since" in text(client.get("/workflows/Signup/wf-gone/"))


def test_a_workflow_with_interactions_only_has_no_run(client: Client) -> None:
    catalog()
    only = wf("status-of-x", "status", n=1)
    response = client.get("/workflows/Signup/status-of-x/")
    assert response.status_code == 200 and response.context["run"] is None
    assert "No run of this workflow id in our copy" in text(response) and only.id in text(response)
    assert 'id="inv-attach"' not in text(response)


def test_a_workflow_known_from_its_promises_alone_has_a_page(client: Client) -> None:
    catalog()
    promise("early", completed=True, success_value='"early"')  # confirm ran, its row not synced yet
    assert client.get("/workflows/Signup/early/").status_code == 200


def test_truncated_promises_are_said(client: Client) -> None:
    catalog()
    wf("wf-t", n=1)
    SyncState.objects.update_or_create(id=1, defaults={"promises_truncated": True})
    assert "Our copy of Restate's promises is incomplete" in text(client.get("/workflows/Signup/wf-t/"))


@pytest.mark.parametrize("workflow_id", ["", "a/b", "..", "é/ü 雪", "~s", "a?b#c&d=e"])
def test_the_page_of_an_awkward_workflow_id_shows_that_id(client: Client, workflow_id: str) -> None:
    catalog()
    run = wf(workflow_id, n=1)
    url = reverse("invocations:workflow", args=["Signup", workflow_id])
    assert resolve(unquote(url)).kwargs == {"service": "Signup", "workflow_id": workflow_id}
    response = client.get(url)
    assert response.status_code == 200
    assert response.context["workflow_id"] == workflow_id and response.context["run"] == run
    listing = text(client.get("/workflows/"))
    assert f'href="{escape(url)}"' in listing


@pytest.mark.parametrize(
    ("url", "status", "says"),
    [
        ("/workflows/Nope/x/", 404, "no service named &#x27;Nope&#x27;"),
        ("/workflows/Worker/x/", 404, "Worker is a virtual object, not a workflow."),
        ("/workflows/Greeter/x/", 404, "Greeter is a service, not a workflow."),
        ("/workflows/Signup/never-seen/", 404, "Our copy holds no invocation or promise of Signup workflow id"),
        ("/workflows/Signup/a%00b/", 400, "cannot contain a NUL character"),
    ],
)
def test_a_workflow_page_refuses_what_is_not_a_workflow(client: Client, url: str, status: int, says: str) -> None:
    catalog()
    response = client.get(url)
    assert response.status_code == status
    assert says in text(response)


# ------------------------------------------------------------------ live


@pytest.fixture
def user(transactional_db: None) -> User:
    cache.clear()
    return User.objects.create_user("workflows-live")


def test_a_workflow_socket_redraws_when_its_promises_change_and_when_its_invocations_do(user: User) -> None:
    catalog()
    run = wf("wf-live", n=1, status="suspended", ran_ms=None)
    promise("wf-live")
    other = create_invocation(id=invocation_id("ot", 2), status="running", ran_ms=None)

    def a_promise_resolves() -> None:
        WorkflowPromise.objects.filter(service_key="wf-live").update(completed=True, success_value='"yes"')
        events.promises_changed(keys=[("Signup", "wf-live")])

    def another_workflows_promise() -> None:
        events.promises_changed(keys=[("Signup", "wf-other")])
        events.sync_step_committed(changed_ids=[other.id])

    def confirm_arrives_and_the_run_completes() -> None:
        confirm = wf("wf-live", "confirm", n=3, at_s=5)
        Invocation.objects.filter(id=run.id).update(status="completed", completed_at=T0 + timedelta(seconds=6))
        events.sync_step_committed(changed_ids=[confirm.id, run.id])

    s = run_session(
        "/ws/workflow/?service=Signup&id=wf-live",
        user,
        a_promise_resolves,
        another_workflows_promise,
        confirm_arrives_and_the_run_completes,
    )
    for section in ("workflow-run", "workflow-promises", "workflow-interactions", "object-state", "inv-attach"):
        assert f'id="{section}" hx-swap-oob="outerHTML"' in s.first or f'id="{section}"' in s.first
    assert 'data-state="pending"' in s.first
    assert 'data-state="resolved"' in s.updates[0] and "&quot;yes&quot;" in s.updates[0]
    assert "workflow-promises" not in s.updates[1], "another workflow's promises and invocations redraw nothing"
    assert invocation_id("wf", 3) in s.updates[2] and 'data-status="completed"' in s.updates[2]


def test_many_workflows_promises_changing_at_once_tell_every_workflow_page(user: User) -> None:
    catalog()
    wf("wf-many", n=1, status="suspended", ran_ms=None)
    keys = [("Signup", f"k-{n}") for n in range(events.MAX_TREE_MESSAGES + 1)]
    s = run_session("/ws/workflow/?service=Signup&id=wf-many", user, lambda: events.promises_changed(keys=keys))
    assert 'id="workflow-promises" hx-swap-oob="outerHTML"' in s.updates[0]


def test_the_workflows_socket_redraws_when_a_run_changes_or_a_new_one_starts(user: User) -> None:
    catalog()
    run = wf("wf-a", n=1, status="running", ran_ms=None)
    interaction = wf("wf-a", "status", n=2)

    def an_interaction_changes() -> None:
        events.sync_step_committed(changed_ids=[interaction.id])

    def the_run_completes() -> None:
        Invocation.objects.filter(id=run.id).update(status="completed", completed_at=T0 + timedelta(seconds=1))
        events.sync_step_committed(changed_ids=[run.id])

    def a_new_run() -> None:
        fresh = wf("wf-b", n=3, at_s=60, status="running", ran_ms=None)
        events.sync_step_committed(changed_ids=[fresh.id])

    s = run_session("/ws/workflows/?service=Signup", user, an_interaction_changes, the_run_completes, a_new_run)
    assert 'id="workflows-table" hx-swap-oob="outerHTML"' in s.first and f'id="run-{run.id}"' in s.first
    assert "workflows-table" not in s.updates[0], "only runs are drawn here"
    assert 'data-status="completed"' in s.updates[1]
    assert f'id="run-{invocation_id("wf", 3)}"' in s.updates[2]


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/ws/workflow/?service=Signup", 4400),
        ("/ws/workflow/?service=Worker&id=k", 4404),
        ("/ws/workflow/?service=Signup&id=unknown", 4404),
        ("/ws/workflows/?service=Worker", 4400),
        ("/ws/workflows/?status=exploded", 4400),
    ],
)
def test_workflow_sockets_refuse_bad_input(user: User, path: str, code: int) -> None:
    catalog()
    assert run_session(path, user).closed == code


def test_workflow_sockets_refuse_anonymous(transactional_db: None) -> None:
    assert run_session("/ws/workflows/", AnonymousUser()).closed == 4401
    assert run_session("/ws/workflow/?service=Signup&id=x", AnonymousUser()).closed == 4401
