"""The detail page's "Attempts" section and the waterfall's attempt segments, from spans
stored in our tables (as the OTLP receiver stores them) for mirrored invocations."""

from __future__ import annotations

import re
import time
from datetime import timedelta

from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from invocations.mirror.models import Invocation, InvocationSpan
from invocations.reads.presenters.waterfall import tree_view
from tests.factories import T0, build_invocation, build_span, create_invocation, invocation_id

SPANS_TABLE = InvocationSpan._meta.db_table
DEP = "dp_14ebMt9tPSDh9vwDbanWEkL"


def flaky_tree() -> tuple[Invocation, Invocation, Invocation]:
    """A root that failed twice, suspended once and completed (8.1 s); a child with one
    attempt; a child whose spans Restate's retention already dropped."""
    root = create_invocation(target="Flaky/run", ran_ms=8100, retry_count=0)
    InvocationSpan.objects.bulk_create(
        [
            build_span(root, 0, 0, kind="start"),
            build_span(root, 5, 100, error="transient failure"),
            build_span(root, 1100, 1200, error="transient failure", deployment_id="dp_second"),
            build_span(root, 3200, 3500),  # suspended on the child's call
            build_span(root, 8000, 8100),
            build_span(root, 8100, 8100, kind="end", result="success"),
        ]
    )
    child = create_invocation(target="Greeter/greet", parent=root, created_at=T0 + timedelta(seconds=3.4), ran_ms=600)
    InvocationSpan.objects.bulk_create([build_span(child, 10, 600)])
    old = create_invocation(target="Greeter/old", parent=root, created_at=T0 + timedelta(seconds=3.5), ran_ms=100)
    return root, child, old


def row_html(body: str, inv_id: str) -> str:
    m = re.search(rf'id="node-{inv_id}"[^\n]*', body)
    assert m, f"no row for {inv_id}"
    return m.group(0)


def section(body: str) -> str:
    return body[body.index('id="inv-attempts"') : body.index('id="inv-tree"')]


def test_attempts_table_and_strip_show_every_retry_suspension_and_deployment(client: Client) -> None:
    root, _, _ = flaky_tree()
    body = client.get(f"/invocations/{root.id}/").content.decode()
    attempts = section(body)
    assert "4 attempt spans" in attempts
    rows = re.findall(r'<tr class="attempt outcome-(\w+)">(.*?)</tr>', attempts, re.S)
    assert [r[0] for r in rows] == ["failed", "failed", "suspended", "completed"]
    assert "failed: transient failure" in rows[0][1] and "backing off 1.0 s" in rows[0][1]
    assert "dp_second" in rows[1][1] and "backing off 2.0 s" in rows[1][1]
    assert "suspended 4.5 s" in rows[2][1] and DEP in rows[2][1] and "http://127.0.0.1:9080/" in rows[2][1]
    assert "completed" in rows[3][1] and "+8.0 s" in rows[3][1]
    # The strip: waiting, then each attempt and each gap in its own colour, with words for each.
    strip = attempts[attempts.index('class="attempt-strip"') : attempts.index("</table>")]
    kinds = re.findall(r'class="seg seg-([\w-]+)"', strip)
    expected = ["queued", "attempt-failed", "backing-off", "attempt-failed", "backing-off"]
    assert kinds == [*expected, "running", "suspended", "attempt-completed"]
    assert 'title="attempt 1: ran 95 ms, failed: transient failure, deployment dp_14eb' in strip
    assert 'title="suspended 4.5 s"' in strip
    assert "backing off after a failure" in attempts  # the legend


def test_waterfall_rows_split_by_attempts_when_spans_are_kept(client: Client) -> None:
    root, child, old = flaky_tree()
    body = client.get(f"/invocations/{root.id}/").content.decode()
    tree = body[body.index('id="inv-tree"') :]
    root_row = row_html(tree, root.id)
    assert root_row.count('class="seg seg-attempt-failed"') == 2 and "seg-backing-off" in root_row
    assert "seg-suspended" in root_row and 'class="bar"' not in root_row
    child_row = row_html(tree, child.id)
    assert "seg seg-attempt-completed" in child_row and "seg-queued" in child_row
    # The axis is the tree's: the child starts 3.41 s into the root's 8.1 s.
    left = float(re.search(r'seg seg-attempt-completed" style="left:([\d.]+)%', child_row).group(1))  # type: ignore[union-attr]
    assert abs(left - 3.41 / 8.1 * 100) < 0.01
    # No spans kept: drawn as before, wait and run.
    old_row = row_html(tree, old.id)
    assert "seg " not in old_row and 'class="bar"' in old_row


def test_an_invocation_that_failed_ends_on_a_red_attempt(client: Client) -> None:
    inv = create_invocation(
        target="Flaky/fail", ran_ms=300, completion_result="failure", completion_failure="[500] terminal"
    )
    build_span(inv, 0, 300).save()
    body = section(client.get(f"/invocations/{inv.id}/").content.decode())
    assert "completed: the invocation failed ([500] terminal)" in body
    assert "seg seg-attempt-failed" in body and "seg seg-attempt-completed" not in body


def test_no_spans_kept_is_said_not_left_blank(client: Client) -> None:
    done = create_invocation(target="Greeter/greet")
    body = section(client.get(f"/invocations/{done.id}/").content.decode())
    assert "No attempt spans kept for this invocation" in body and "7 d 0 h" in body
    scheduled = create_invocation(
        target="Greeter/later", status="scheduled", scheduled_start_at=timezone.now() + timedelta(hours=1)
    )
    body = section(client.get(f"/invocations/{scheduled.id}/").content.decode())
    assert "No attempts yet: the invocation is scheduled" in body


def test_a_running_first_attempt_has_no_span_until_it_ends(client: Client) -> None:
    now = timezone.now()
    running = create_invocation(target="Greeter/slow", status="running", created_at=now - timedelta(seconds=5))
    build_span(running, 0, 3, kind="start").save()
    body = section(client.get(f"/invocations/{running.id}/").content.decode())
    assert "attempt 1 is running, and Restate exports its span when it ends" in body
    assert "seg-in-progress" in body


def test_attempts_beyond_the_cap_are_counted_not_drawn(client: Client) -> None:
    inv = create_invocation(target="Flaky/run", ran_ms=60_000)
    InvocationSpan.objects.bulk_create(
        [build_span(inv, i * 1000, i * 1000 + 10, error="transient failure") for i in range(55)]
    )
    body = section(client.get(f"/invocations/{inv.id}/").content.decode())
    assert body.count('<tr class="attempt') == 50
    assert "+5 more not drawn" in body and "+5 more attempts not drawn" in body


def test_the_attempts_partial_and_the_live_refresh_carry_the_section(client: Client) -> None:
    inv = create_invocation(target="Flaky/run", status="backing-off", ran_ms=None, created_at=timezone.now())
    partial = client.get(f"/invocations/{inv.id}/?partial=attempts", headers={"HX-Request": "true"}).content.decode()
    assert "<html" not in partial and 'id="inv-attempts"' in partial and "No attempt spans kept" in partial
    # A span arrives (the receiver stores it, then the sync's re-read announces the change):
    # the refresh the page then fetches swaps the section in with its new attempt.
    build_span(inv, 0, 50, error="transient failure").save()
    time.sleep(0.01)
    live = client.get(f"/invocations/{inv.id}/live/?t={int(time.time() * 1000)}").content.decode()
    attempts = live[live.index('id="inv-attempts"') : live.index('id="inv-tree"')]
    assert 'hx-swap-oob="outerHTML"' in live[live.index('<section id="inv-attempts"') :][:80]
    assert "failed: transient failure" in attempts and "seg-backing-off" in attempts
    assert f"node-{inv.id}" in live and "seg-attempt-failed" in live[live.index('id="inv-tree"') :]


def test_the_waterfall_reads_the_spans_of_all_its_rows_in_one_query(db: None) -> None:
    root = create_invocation(target="Fan/out", ran_ms=5000, retry_count=0)
    children = [
        build_invocation(
            id=invocation_id("fan"), parent=root, created_at=T0 + timedelta(milliseconds=i), ran_ms=100, retry_count=0
        )
        for i in range(300)
    ]
    Invocation.objects.bulk_create(children)
    InvocationSpan.objects.bulk_create(
        [build_span(c, 0, 40, error="transient failure") for c in children] + [build_span(c, 60, 100) for c in children]
    )
    with CaptureQueriesContext(connection) as queries:
        view = tree_view(root, timezone.now())
    span_queries = [q["sql"] for q in queries.captured_queries if SPANS_TABLE in q["sql"]]
    assert len(span_queries) == 1
    assert len(queries.captured_queries) <= 6  # tree rows, edges, queue places, spans
    drawn = [r for r in view.rows if not r.more and r.segments]
    assert len(drawn) == 50  # the children shown under the cap, each split into its attempts
    assert [s.kind for s in drawn[0].segments] == ["attempt-failed", "backing-off", "attempt-completed"]
