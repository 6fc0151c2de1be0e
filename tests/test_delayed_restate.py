"""/delayed/ against real Restate and the demo services: delayed sends of minutes, hours
and days (Orchestrator.schedule, and one through the ingress) are listed with Restate's
own fire times to the second; one that fires (Orchestrator.later, a few seconds) leaves
the agenda and runs in its sender's tree; cancelling one from the page, or every message
of a filter through a bulk job, makes Restate drop it (it answers 200 and keeps no trace)
and our copy marks it gone, so the page no longer lists it."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from django.test import Client

from invocations.mirror.actions import Action
from invocations.mirror.models import Invocation
from invocations.mirror.sync.engine import SyncEngine
from invocations.operations import bulk
from invocations.operations.roles import Role, user_set_role
from invocations.reads.delayed_filters import DelayedFilters
from invocations.reads.selectors.jobs import bulk_targets
from invocations.records.models import AuditEntry, BulkJob, BulkJobItem, ItemState
from invocations.restate import RestateClient, sql_list, sql_literal
from tests.conftest import sync_until, wait_completed, wait_for_restate

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def restate_settings(settings: Any, demo_stack: Any) -> None:
    """Actions go to the demo's Restate."""
    settings.RESTATE_ADMIN_URL = demo_stack.admin_url
    settings.RESTATE_INGRESS_URL = demo_stack.ingress_url


def restate_ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def children(restate: RestateClient, root: str, n: int) -> list[dict[str, Any]]:
    # scheduled_start_at is null unless scheduled_at is selected too (DESIGN.md, gotcha 1).
    return wait_for_restate(
        restate,
        "SELECT id, target, status, scheduled_at, scheduled_start_at FROM sys_invocation "
        f"WHERE invoked_by_id = {sql_literal(root)}",
        lambda rows: len(rows) == n,
    )


def listed(client: Client, query: str) -> dict[str, str]:
    """The messages /delayed/ lists under `query`: id -> the fire time it prints (UTC, to the second)."""
    body = client.get(f"/delayed/?{query}").content.decode()
    return dict(
        re.findall(
            r'<tr id="delayed-(inv_\w+)".*?<time class="abs fire-at" datetime="[^"]+">([^<]+) UTC</time>', body, re.S
        )
    )


def cancel_in_restate(restate: RestateClient, ids: list[str]) -> None:
    for invocation_id in ids:
        restate.kill(invocation_id)  # gone or completed already: nothing to do


def test_delayed_sends_of_minutes_hours_and_days_show_restates_fire_times(
    restate: RestateClient, engine: SyncEngine, client: Client
) -> None:
    root = restate.send("Orchestrator", "schedule", payload="agenda")
    from_ingress = restate.send("Greeter", "greet", payload="agenda (ingress)", delay=timedelta(minutes=10))
    wait_completed(restate, root)
    sent = children(restate, root, 5)
    ids = [r["id"] for r in sent]
    try:
        sync_until(
            engine,
            lambda: (
                Invocation.objects.filter(id__in=[*ids, from_ingress], status="scheduled").count() == 6
                and Invocation.objects.filter(id=root, journal_synced_size__gt=5).exists()
            ),
            what="the five delayed sends, the ingress one and the sender's journal in our copy",
        )
        (ingress_row,) = restate.query(
            f"SELECT scheduled_at, scheduled_start_at FROM sys_invocation WHERE id = {sql_literal(from_ingress)}"
        )
        fires = {r["id"]: restate_ts(r["scheduled_start_at"]) for r in sent}
        fires[from_ingress] = restate_ts(ingress_row["scheduled_start_at"])
        # Minutes, hours and days away, as the handler sent them.
        delays = sorted(round((at - restate_ts(sent[0]["scheduled_at"])).total_seconds() / 60) for at in fires.values())
        assert delays[:1] + delays[2:] == [5, 30, 180, 2880, 2881] and 9 <= delays[1] <= 10

        # Other tests' delayed sends may be pending too: the window holds these six.
        window = urlencode(
            {
                "fires_after": (min(fires.values()) - timedelta(milliseconds=1)).isoformat(),
                "fires_before": (max(fires.values()) + timedelta(milliseconds=1)).isoformat(),
            }
        )
        shown = listed(client, f"sender_service=Orchestrator&sender_handler=schedule&{window}")
        shown |= listed(client, f"service=Greeter&{window}")
        for invocation_id, at in fires.items():
            assert shown.get(invocation_id) == at.strftime("%Y-%m-%d %H:%M:%S"), (invocation_id, at)

        page = client.get(f"/delayed/?sender_service=Orchestrator&sender_handler=schedule&{window}")
        rows = {r.id: r for r in page.context["rows"]}
        for row in sent:
            mine = rows[row["id"]]
            # The exact instant, not only the second: the page's <time> carries Restate's milliseconds.
            assert mine.fire_at == fires[row["id"]]
            assert mine.sender_id == root and mine.sender_target == "Orchestrator/schedule"
            assert mine.journal_index is not None and mine.payload_source == "sent"
        # In fire order: greet in 5 and 30 minutes, Counter.add in 3 hours, the workflow in 2 days.
        in_order = sorted((r["id"] for r in sent), key=fires.__getitem__)
        assert [rows[i].payload.text for i in in_order[:3]] == [
            '"agenda (in 5 minutes)"',
            '"agenda (in 30 minutes)"',
            "10",
        ]
        assert [rows[i].inv.target for i in in_order[3:]] == [
            f"Signup/{rows[in_order[3]].inv.service_key}/run",
            f"Signup/{rows[in_order[4]].inv.service_key}/confirm",
        ]
        # The ingress one: no sender, its own Input as payload.
        ingress = client.get(f"/delayed/?service=Greeter&{window}").context["rows"]
        (mine,) = [r for r in ingress if r.id == from_ingress]
        assert mine.sender_id is None and mine.payload is not None and mine.payload.text == '"agenda (ingress)"'
        # The chart of the week counts all six in their buckets.
        week = client.get("/delayed/?chart=week").context
        assert week["counts"].total >= 6
    finally:
        cancel_in_restate(restate, [*ids, from_ingress])


def test_a_message_that_fires_leaves_the_agenda_and_runs_in_its_senders_tree(
    restate: RestateClient, engine: SyncEngine, client: Client
) -> None:
    root = restate.send("Orchestrator", "later", payload={"seconds": [6], "nap_minutes": 0.5})
    wait_completed(restate, root)
    (child,) = children(restate, root, 1)
    try:
        sync_until(
            engine,
            lambda: Invocation.objects.filter(id=child["id"], status="scheduled").exists(),
            what="the delayed message in our copy",
        )
        assert child["id"] in listed(client, "sender_service=Orchestrator&sender_handler=later")
        tree = client.get(f"/invocations/{root}/").content.decode()
        assert f'id="node-{child["id"]}"' in tree
        wait_for_restate(
            restate,
            f"SELECT status FROM sys_invocation WHERE id = {sql_literal(child['id'])}",
            lambda rows: bool(rows) and rows[0]["status"] == "running",
            timeout=30,
        )
        sync_until(
            engine,
            lambda: Invocation.objects.filter(id=child["id"], status="running").exists(),
            what="it running in our copy",
        )
        assert child["id"] not in listed(client, "sender_service=Orchestrator&sender_handler=later")
        page = client.get(f"/invocations/{root}/").content.decode()
        row = page[page.index(f'id="node-{child["id"]}"') :].split("\n")[0]
        assert '<span class="status">running</span>' in row, row
    finally:
        cancel_in_restate(restate, [child["id"]])


def test_cancelling_one_from_the_page_removes_it_and_restate_reports_it_cancelled(
    restate: RestateClient, engine: SyncEngine, client: Client
) -> None:
    user_set_role(username="op", role=Role.OPERATOR)
    root = restate.send("Orchestrator", "later", payload={"seconds": [3600, 3605]})
    wait_completed(restate, root)
    kids = children(restate, root, 2)
    ids = sorted((r["id"] for r in kids), key=lambda i: next(r["scheduled_start_at"] for r in kids if r["id"] == i))
    target, other = ids
    try:
        sync_until(
            engine,
            lambda: Invocation.objects.filter(id__in=ids, status="scheduled").count() == 2,
            what="both messages in our copy",
        )
        page = client.get("/delayed/?sender_handler=later").content.decode()
        assert f'href="/invocations/{target}/actions/cancel/"' in page
        confirm = client.get(f"/invocations/{target}/actions/cancel/")
        assert confirm.status_code == 200 and confirm.context["allowed"]
        result = client.post(f"/invocations/{target}/actions/cancel/", {"request_key": confirm.context["request_key"]})
        assert result.status_code == 200
        answer = result.context["result"]
        assert answer.ok and answer.http_status == 200 and answer.words == "accepted"
        body = result.content.decode()
        assert "Restate answered 200: Cancelled at once: it had not started yet" in body
        # Restate dropped it: no row, no result, and a second cancel is answered "unknown".
        assert not restate.query(f"SELECT id FROM sys_invocation WHERE id = {sql_literal(target)}")
        assert httpx.get(f"{restate.ingress_url}/restate/invocation/{target}/output").status_code == 404
        # The action's hint makes the sync look it up at once: gone from Restate, so off the page.
        engine.sync_hinted()
        assert Invocation.objects.get(id=target).gone_from_restate_at is not None
        shown = listed(client, "sender_handler=later")
        assert target not in shown and other in shown
        assert AuditEntry.objects.filter(targets=[target], action="cancel", outcome="done").exists()
    finally:
        cancel_in_restate(restate, ids)


def test_cancelling_every_message_of_a_filter_through_a_bulk_job(
    restate: RestateClient, engine: SyncEngine, client: Client
) -> None:
    from django.contrib.auth.models import User

    user_set_role(username="op", role=Role.OPERATOR)
    # Fire times no other test uses: the window below holds these three and nothing else.
    root = restate.send("Orchestrator", "later", payload={"seconds": [86400 * 3 + 17, 86400 * 3 + 18, 86400 * 3 + 19]})
    wait_completed(restate, root)
    ids = [r["id"] for r in children(restate, root, 3)]
    try:
        sync_until(
            engine,
            lambda: Invocation.objects.filter(id__in=ids, status="scheduled").count() == 3,
            what="the three messages in our copy",
        )
        fires = sorted(Invocation.objects.filter(id__in=ids).values_list("scheduled_start_at", flat=True))
        window = {
            "sender_service": "Orchestrator",
            "sender_handler": "later",
            "fires_after": (fires[0] - timedelta(milliseconds=1)).isoformat(),
            "fires_before": (fires[-1] + timedelta(milliseconds=1)).isoformat(),
        }
        page = client.get("/delayed/", window)
        assert {r.id for r in page.context["rows"]} == set(ids)
        list_query = page.context["list_query"]
        preview = client.get("/jobs/new/", {"action": "cancel", "filter": list_query})
        assert preview.context["preview"].count == 3

        filters = DelayedFilters(
            sender_service="Orchestrator",
            sender_handler="later",
            fires_after=fires[0] - timedelta(milliseconds=1),
            fires_before=fires[-1] + timedelta(milliseconds=1),
        ).invocation_filters()
        job = bulk.bulk_start(
            user=User.objects.get(username="op"),
            action=Action.CANCEL,
            targets=bulk_targets(filters=filters, action=Action.CANCEL),
            filter_query=filters.query_string(),
            filter_description=filters.describe(),
        )
        assert set(BulkJobItem.objects.filter(job=job).values_list("invocation_id", flat=True)) == set(ids)
        bulk.job_run(job_id=job.id, client=restate)  # what the bulk worker runs
        job = BulkJob.objects.get(id=job.id)
        assert (job.succeeded, job.failed, job.skipped) == (3, 0, 0)
        assert set(BulkJobItem.objects.filter(job=job).values_list("state", flat=True)) == {ItemState.SUCCEEDED}
        assert not restate.query(f"SELECT id FROM sys_invocation WHERE id IN {sql_list(ids)}")
        engine.sync_hinted()
        assert client.get("/delayed/", window).context["matching"] == 0
    finally:
        cancel_in_restate(restate, ids)
