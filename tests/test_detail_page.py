"""The invocation detail page against real PostgreSQL (and, for the last tests, real Restate)."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from demo import traffic
from invocations.mirror.sync.engine import SyncEngine
from invocations.models import Deployment, Invocation, InvocationEdge, JournalEntry
from invocations.reads.presenters.detail import detail_context
from invocations.reads.presenters.payloads import format_payload
from invocations.restate import RestateClient, sql_literal
from tests.conftest import sync_until, wait_for_restate

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ROOT = "inv_1rootAAAAAAAAAAAAAAAAAAAAAAAAAA"


def iid(name: str) -> str:
    return f"inv_1{name}".ljust(36, "A")


def inv(inv_id: str, *, parent: str | None = None, root: str | None = ROOT, at: float = 0, **kw: Any) -> Invocation:
    created = T0 + timedelta(seconds=at)
    fields: dict[str, Any] = {
        "id": inv_id,
        "target": "Greeter/greet",
        "service_name": "Greeter",
        "handler_name": "greet",
        "service_type": "service",
        "status": "completed",
        "completion_result": "success",
        "invoked_by": "service" if parent else "ingress",
        "parent_id": parent,
        "root_id": root,
        "created_at": created,
        "modified_at": created,
        "running_at": created,
        "completed_at": created + timedelta(milliseconds=250),
        "first_seen_at": created,
        "synced_at": created,
    }
    fields.update(kw)
    return Invocation(**fields)


def payload(value: Any) -> list[int]:
    return list(json.dumps(value).encode())


@pytest.fixture
def client(db: None) -> Client:
    c = Client()
    c.force_login(User.objects.create_user("op", password="pw-for-tests-only"))
    return c


# ------------------------------------------------------------------ errors


def test_requires_login(db: None) -> None:
    response = Client().get(f"/invocations/{ROOT}/")
    assert response.status_code == 302 and "/login/" in response["Location"]


@pytest.mark.parametrize("bad", ["nonsense", "inv_", "inv_abc!def0123456", "xyz_1abcdefghijkl"])
def test_malformed_id_is_a_clear_400(client: Client, bad: str) -> None:
    for url in (f"/invocations/{bad}/", f"/invocations/{bad}/children/"):
        response = client.get(url)
        assert response.status_code == 400
        assert "is not a Restate invocation id" in response.content.decode()


def test_unknown_id_is_a_clear_404(client: Client) -> None:
    response = client.get(f"/invocations/{iid('unknown')}/")
    assert response.status_code == 404
    body = response.content.decode()
    assert "not in our copy" in body and "purged" in body and "sync has not caught up" in body
    assert client.get(f"/invocations/{iid('unknown')}/children/").status_code == 404


def test_bad_offset_on_children_endpoint_is_a_400(client: Client) -> None:
    inv(ROOT).save()
    assert client.get(f"/invocations/{ROOT}/children/?offset=x").status_code == 400


# ------------------------------------------------------------------ header and payloads


def test_header_shows_every_fact(client: Client) -> None:
    Deployment.objects.create(id="dp_1test", deployment_type="http", endpoint="http://svc:9080/")
    inv(ROOT, target="Checkout/order", service_name="Checkout", handler_name="order").save()
    child = iid("child")
    inv(
        child,
        parent=ROOT,
        at=1,
        target="Counter/ann/add",
        service_name="Counter",
        service_key="ann",
        handler_name="add",
        service_type="virtual_object",
        status="backing-off",
        completion_result=None,
        completed_at=None,
        retry_count=7,
        next_retry_at=T0 + timedelta(days=3650),
        last_failure="RuntimeError('upstream unavailable')\nTraceback ...",
        last_failure_error_code="RT0007",
        idempotency_key="order-42",
        pinned_deployment_id="dp_1test",
    ).save()
    body = client.get(f"/invocations/{child}/").content.decode()
    assert "Counter/ann/add" in body and "Virtual Object" in body
    assert '<code class="id">ann</code>' in body
    assert 'class="status">backing-off' in body
    assert "2026-11-22 12:00:01 UTC" in body  # created, absolute UTC
    assert "so far" in body  # duration while still going
    assert "<dd>7" in body and "next attempt" in body
    assert "RT0007" in body and "upstream unavailable" in body
    assert "order-42" in body and "set by the caller" in body
    assert "dp_1test" in body and "http://svc:9080/" in body
    assert f'href="/invocations/{ROOT}/"' in body and "Checkout/order" in body  # parent and root links


def test_ingress_ulid_key_is_called_auto_generated(client: Client) -> None:
    inv(ROOT, idempotency_key="01M80AQD7KGH2MN07X6ASP562P").save()
    body = client.get(f"/invocations/{ROOT}/").content.decode()
    assert "auto-generated by the ingress" in body and "this invocation is the root" in body


def test_payloads_pretty_printed_and_escaped(client: Client) -> None:
    inv(ROOT).save()
    JournalEntry.objects.bulk_create(
        [
            JournalEntry(
                invocation_id=ROOT,
                index=0,
                entry_type="Command: Input",
                entry={"Command": {"Input": {"name": "", "headers": [], "payload": payload({"sku": "<b>", "qty": 1})}}},
                entry_lite={"Command": {"Input": {}}},
            ),
            JournalEntry(
                invocation_id=ROOT,
                index=1,
                entry_type="Command: Output",
                entry={"Command": {"Output": {"name": "", "result": {"Success": list(b"plain <text>")}}}},
                entry_lite={"Command": {"Output": {"result": "Success"}}},
            ),
        ]
    )
    body = client.get(f"/invocations/{ROOT}/").content.decode()
    assert "{\n  &quot;sku&quot;: &quot;&lt;b&gt;&quot;,\n  &quot;qty&quot;: 1\n}" in body
    assert "plain &lt;text&gt;" in body and "<b>" not in body


def test_failed_output_and_payload_formats() -> None:
    assert format_payload([]).kind == "empty"
    assert format_payload(list(b"\xff\x00\x01")).text == "ff 00 01"
    big = format_payload(list(b"x" * 70_000))
    assert big.truncated and len(big.text) == 64 * 1024 and big.size == 70_000
    assert format_payload({"not": "bytes"}) is None


def test_failure_output_is_shown(client: Client) -> None:
    inv(ROOT, completion_result="failure", completion_failure="[409] cancelled").save()
    JournalEntry.objects.create(
        invocation_id=ROOT,
        index=1,
        entry_type="Command: Output",
        entry={"Command": {"Output": {"result": {"Failure": {"code": 409, "message": "cancelled"}}}}},
    )
    body = client.get(f"/invocations/{ROOT}/").content.decode()
    assert "Failed: [409] cancelled" in body


def test_journal_in_index_order_with_summaries(client: Client) -> None:
    inv(ROOT).save()
    callee = iid("callee")
    wake = int((T0 + timedelta(hours=2)).timestamp() * 1000)
    JournalEntry.objects.bulk_create(
        [
            JournalEntry(
                invocation_id=ROOT,
                index=3,
                entry_type="Command: Sleep",
                entry_lite={"Command": {"Sleep": {"wake_up_time": wake}}},
            ),
            JournalEntry(
                invocation_id=ROOT, index=0, entry_type="Command: Input", entry_lite={"Command": {"Input": {}}}
            ),
            JournalEntry(
                invocation_id=ROOT,
                index=1,
                entry_type="Command: Call",
                entry_lite={
                    "Command": {
                        "Call": {
                            "invocation_id": callee,
                            "invocation_target": {"VirtualObject": {"name": "Counter", "key": "ann", "handler": "add"}},
                        }
                    }
                },
            ),
            JournalEntry(
                invocation_id=ROOT,
                index=2,
                entry_type="Command: SetState",
                entry_lite={"Command": {"SetState": {"key": "total"}}},
            ),
        ]
    )
    response = client.get(f"/invocations/{ROOT}/")
    body = response.content.decode()
    journal = body[body.index('id="inv-journal"') :]
    positions = [journal.index(t) for t in ("Command: Input", "Command: Call", "Command: SetState", "Command: Sleep")]
    assert positions == sorted(positions)
    assert "Counter/ann/add" in journal and f'href="/invocations/{callee}/"' in journal
    assert "key &#x27;total&#x27;" in journal and "wakes up" in journal and "2026-11-22 14:00:00 UTC" in journal


# ------------------------------------------------------------------ the tree


def build_family() -> dict[str, str]:
    """root -> call A -> send A1; root -> delayed send D (scheduled); root -> call B (B's journal not synced)."""
    ids = {k: iid(k) for k in ("a", "a1", "d", "b")}
    fire = T0 + timedelta(days=3650)
    Invocation.objects.bulk_create(
        [
            inv(ROOT, target="Orchestrator/run", service_name="Orchestrator", handler_name="run"),
            inv(ids["a"], parent=ROOT, at=0.01, target="Shipping/quote"),
            inv(ids["a1"], parent=ids["a"], at=0.02, target="Inventory/book/reserve", service_type="virtual_object"),
            inv(
                ids["d"],
                parent=ROOT,
                at=0.03,
                status="scheduled",
                completed_at=None,
                running_at=None,
                scheduled_start_at=fire,
            ),
            inv(ids["b"], parent=ROOT, at=0.04, target="Counter/ann/add", status="running", completed_at=None),
        ]
    )
    InvocationEdge.objects.bulk_create(
        [
            InvocationEdge(
                caller_id=ROOT,
                journal_index=1,
                callee_id=ids["a"],
                kind="call",
                target_service="Shipping",
                target_handler="quote",
            ),
            InvocationEdge(
                caller_id=ROOT,
                journal_index=3,
                callee_id=ids["d"],
                kind="delayed_send",
                target_service="Greeter",
                target_handler="greet",
                fire_at=fire,
            ),
            InvocationEdge(
                caller_id=ROOT,
                journal_index=5,
                callee_id=ids["b"],
                kind="call",
                target_service="Counter",
                target_key="ann",
                target_handler="add",
            ),
            InvocationEdge(
                caller_id=ids["a"],
                journal_index=2,
                callee_id=ids["a1"],
                kind="send",
                target_service="Inventory",
                target_key="book",
                target_handler="reserve",
            ),
            # An edge whose callee the sync has not seen yet.
            InvocationEdge(
                caller_id=ids["a"],
                journal_index=4,
                callee_id=iid("unseen"),
                kind="call",
                target_service="Ghost",
                target_handler="boo",
            ),
        ]
    )
    return ids


def row_html(body: str, inv_id: str) -> str:
    """One waterfall row (rows sit on one line; a row ends where the next begins)."""
    m = re.search(
        rf'id="node-{inv_id}"(?:><summary)? class="(?P<cls>[^"]*)" style="--d:(?P<d>\d+)"'
        r'(?P<rest>[^\n]*?)(?=<details |<div id="node-|<div class="wf-row more-row|\n|$)',
        body,
    )
    assert m, f"no row for {inv_id}"
    return f"class={m['cls']} depth={m['d']} {m['rest']}"


def test_tree_shows_kinds_fire_time_depths_and_highlight(client: Client) -> None:
    ids = build_family()
    body = client.get(f"/invocations/{ids['a1']}/").content.decode()
    tree = body[body.index('id="inv-tree"') : body.index('id="inv-journal"')]
    assert "k-call" in row_html(tree, ids["a"]) and "depth=1" in row_html(tree, ids["a"])
    a1 = row_html(tree, ids["a1"])
    assert "k-send" in a1 and "depth=2" in a1 and " current" in a1 and "on-path" in a1
    d = row_html(tree, ids["d"])
    assert "k-delayed_send" in d and "fires" in d and "2036-11-1" in d and 'class="countdown"' in d
    assert " current" not in row_html(tree, ROOT) and "on-path" in row_html(tree, ROOT)
    assert "phantom" in row_html(tree, iid("unseen")) and "not in our copy yet" in tree
    # Children in journal order: a (1), d (3), b (5).
    assert tree.index(f"node-{ids['a']}") < tree.index(f"node-{ids['d']}") < tree.index(f"node-{ids['b']}")
    # Breadcrumb: root > a > a1 (current, not a link).
    crumb = tree[tree.index('class="breadcrumb"') : tree.index("</nav>")]
    assert (
        crumb.index("Orchestrator/run")
        < crumb.index("Shipping/quote")
        < crumb.index("<strong>Inventory/book/reserve</strong>")
    )
    assert "6 invocations" in tree


def test_missing_root_falls_back_to_topmost_known_ancestor(client: Client) -> None:
    top, mid, leaf = iid("top"), iid("mid"), iid("leaf")
    Invocation.objects.bulk_create(
        [
            inv(top, parent=iid("purged"), root=None, target="Top/run"),
            inv(mid, parent=top, root=None, at=1),
            inv(leaf, parent=mid, root=None, at=2),
        ]
    )
    body = client.get(f"/invocations/{mid}/").content.decode()
    assert iid("purged") in body and "not in our copy" in body
    assert f"node-{top}" in body and f"node-{leaf}" in body and "3 invocations" in body


def test_show_more_when_children_exceed_the_cap_and_the_children_endpoint(client: Client) -> None:
    rows = [inv(ROOT)] + [inv(iid(f"k{i:04d}"), parent=ROOT, at=i) for i in range(130)]
    Invocation.objects.bulk_create(rows)
    body = client.get(f"/invocations/{ROOT}/").content.decode()
    assert body.count('class="wf-row status-') == 51
    assert "show 80 more" in body
    url = f"/invocations/{ROOT}/children/?offset=50"
    assert f'href="{url}"' in body and f'hx-get="{url}"' in body
    partial = client.get(url, headers={"HX-Request": "true"}).content.decode()
    assert "<html" not in partial
    assert partial.count('class="wf-row status-') == 50 and "show 30 more" in partial
    assert f"node-{iid('k0050')}" in partial and f"node-{iid('k0049')}" not in partial
    full = client.get(url).content.decode()  # without JavaScript: a page of its own
    assert "<html" in full and "Children of" in full and f"node-{iid('k0050')}" in full


def test_htmx_partials_and_detail_context(client: Client) -> None:
    ids = build_family()
    for name, element in (("header", "inv-header"), ("tree", "inv-tree"), ("journal", "inv-journal")):
        html = client.get(f"/invocations/{ids['a']}/?partial={name}", headers={"HX-Request": "true"}).content.decode()
        assert "<html" not in html and f'id="{element}"' in html
    ctx = detail_context(ids["a"])
    assert ctx["inv"].id == ids["a"] and ctx["tree"].total == 6 and ctx["tree"].path[0].id == ROOT


def test_ten_thousand_nodes_render_bounded(client: Client, capsys: pytest.CaptureFixture[str]) -> None:
    """Measures (prints) the page time for 10,000 nodes; asserts only the bounds, never the time."""
    rows = [inv(ROOT)]
    for i in range(100):
        parent = iid(f"p{i:03d}")
        rows.append(inv(parent, parent=ROOT, at=i))
        rows += [
            inv(iid(f"p{i:03d}c{j:02d}"), parent=parent, at=i + j / 100, status="running" if j % 7 else "completed")
            for j in range(99)
        ]
    Invocation.objects.bulk_create(rows, batch_size=2000)
    InvocationEdge.objects.bulk_create(
        [
            InvocationEdge(
                caller_id=r.parent_id,
                journal_index=n,
                callee_id=r.id,
                kind=("call", "send", "delayed_send")[n % 3],
                target_service="Greeter",
                target_handler="greet",
            )
            for n, r in enumerate(rows[1:])
        ],
        batch_size=2000,
    )
    client.get(f"/invocations/{ROOT}/")  # warm up templates and connections
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        response = client.get(f"/invocations/{ROOT}/")
        timings.append(time.perf_counter() - start)
    body = response.content.decode()
    assert response.status_code == 200 and "10001 invocations" in body
    rendered = body.count('class="wf-row status-')
    assert 1000 < rendered <= 2001
    with capsys.disabled():
        print(f"\n10,001-node tree: page {min(timings):.3f}s best of 3 ({rendered} rows, {len(body) // 1024} KiB)")


# ------------------------------------------------------------------ real Restate


def _login_client() -> Client:
    c = Client()
    c.force_login(User.objects.create_user(f"op-{time.monotonic_ns()}", password="pw-for-tests-only"))
    return c


@pytest.mark.integration
def test_delayed_sends_and_cross_language_tree_from_real_restate(engine: SyncEngine, restate: RestateClient) -> None:
    root = traffic.fire_delayed_sends(restate)[0]
    children = wait_for_restate(
        restate,
        f"SELECT id FROM sys_invocation WHERE invoked_by_id = {sql_literal(root)}",
        lambda r: len(r) >= 3,
    )
    sync_until(
        engine,
        lambda: (
            InvocationEdge.objects.filter(caller_id=root, kind="delayed_send").count() >= 3
            and Invocation.objects.filter(root_id=root).count() >= len(children) + 1
        ),
        what="the delayed sends and their edges",
    )
    client = _login_client()
    body = client.get(f"/invocations/{root}/").content.decode()
    tree = body[body.index('id="inv-tree"') : body.index('id="inv-journal"')]
    for edge in InvocationEdge.objects.filter(caller_id=root, kind="delayed_send"):
        row = row_html(tree, edge.callee_id)
        assert "k-delayed_send" in row and "status-scheduled" in row
        fires = Invocation.objects.get(id=edge.callee_id).scheduled_start_at or edge.fire_at
        assert (
            f'fires <time class="countdown" datetime="{fires.isoformat()}' in row
            or fires.strftime("%Y-%m-%d %H:%M") in row
        )

    checkout = traffic.fire_cross_language(restate)[0]
    wait_for_restate(
        restate,
        f"SELECT status FROM sys_invocation WHERE id = {sql_literal(checkout)}",
        lambda r: bool(r) and r[0]["status"] == "completed",
    )
    sync_until(
        engine,
        lambda: (
            Invocation.objects.filter(root_id=checkout, target__startswith="Inventory/").exists()
            and InvocationEdge.objects.filter(caller_id=checkout).exists()
        ),
        what="Checkout -> Shipping -> Inventory in our copy",
    )
    body = client.get(f"/invocations/{checkout}/").content.decode()
    tree = body[body.index('id="inv-tree"') : body.index('id="inv-journal"')]
    shipping = Invocation.objects.get(root_id=checkout, target__startswith="Shipping/")
    inventory = Invocation.objects.get(root_id=checkout, target__startswith="Inventory/")
    assert shipping.parent_id == checkout and inventory.parent_id == shipping.id
    assert "depth=0" in row_html(tree, checkout)
    assert "depth=1" in row_html(tree, shipping.id) and "k-call" in row_html(tree, shipping.id)
    assert "depth=2" in row_html(tree, inventory.id) and "k-call" in row_html(tree, inventory.id)
    assert tree.index("Checkout/order") < tree.index("Shipping/quote") < tree.index("Inventory/")
