"""The service map (/services/): aggregate queries on real PostgreSQL, the pure
layout, the page, and the map of the real demo's traffic."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from html import unescape
from itertools import pairwise
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.utils import timezone

from invocations.graph.layout import LABEL_H, Box, Layout, LayoutEdge, LayoutNode, layout
from invocations.models import Invocation, InvocationEdge
from invocations.reads.selectors.service_map import INGRESS, ServiceMap, service_map_get

X = "\N{MULTIPLICATION SIGN}"
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
_seq = iter(range(1_000_000))


def inv(
    target: str,
    *,
    created: datetime | None = None,
    ms: float | None = None,
    failed: bool = False,
    parent: Invocation | None = None,
    invoked_by: str | None = None,
) -> Invocation:
    """An invocation of `Service/handler`; `ms` given = completed after that many milliseconds."""
    service, handler = target.split("/")
    created = created or NOW - timedelta(minutes=10)
    inv_id = f"inv_1map{next(_seq):08d}AAAAAAAAAAAAAAAAAA"
    done = ms is not None
    return Invocation(
        id=inv_id,
        target=target,
        service_name=service,
        handler_name=handler,
        service_type="service",
        status="completed" if done else "running",
        completion_result=("failure" if failed else "success") if done else None,
        completion_failure="[500] boom" if failed else None,
        invoked_by=invoked_by or ("service" if parent else "ingress"),
        parent_id=parent.id if parent else None,
        root_id=parent.root_id if parent else inv_id,
        created_at=created,
        modified_at=created,
        completed_at=created + timedelta(milliseconds=ms) if done else None,
        first_seen_at=created,
        synced_at=created,
    )


def edge(
    caller: Invocation, callee: Invocation | None, kind: str, target: str, at: datetime | None = None
) -> InvocationEdge:
    service, handler = target.split("/")
    return InvocationEdge(
        caller_id=caller.id,
        journal_index=next(_seq),
        callee_id=callee.id if callee else None,
        kind=kind,
        target_service=service,
        target_handler=handler,
        created_at=at or caller.created_at + timedelta(milliseconds=5),
    )


def save(*rows: Invocation | InvocationEdge | Iterable[Invocation | InvocationEdge]) -> None:
    flat: list[Invocation | InvocationEdge] = []
    for r in rows:
        flat.extend(r if isinstance(r, list | tuple) else [r])  # type: ignore[arg-type]
    Invocation.objects.bulk_create([r for r in flat if isinstance(r, Invocation)])
    InvocationEdge.objects.bulk_create([r for r in flat if isinstance(r, InvocationEdge)])


def edge_counts(smap: ServiceMap) -> dict[tuple[str, str, str], int]:
    return {(e.source, e.target, e.kind): e.count for e in smap.edges}


def overlaps(a: Box, b: Box) -> bool:
    return a.x < b.x + b.width and b.x < a.x + a.width and a.y < b.y + b.height and b.y < a.y + a.height


def assert_readable(result: Layout) -> None:
    """No two boxes overlap, no two edge labels overlap, everything inside the canvas."""
    boxes = list(result.boxes.values())
    for a, b in pairwise(sorted(boxes, key=lambda b: (b.x, b.y))):
        assert not overlaps(a, b), (a, b)
    for i, a in enumerate(boxes):
        assert a.x >= 0 and a.x + a.width <= result.width and a.y >= 0 and a.y + a.height <= result.height
        for b in boxes[:i]:
            assert not overlaps(a, b), (a, b)
    labels = [
        Box(r.label_x - r.label_width / 2, r.label_y - LABEL_H / 2, r.label_width, LABEL_H, 0) for r in result.routes
    ]
    for i, a in enumerate(labels):
        assert a.y >= 0 and a.y + a.height <= result.height
        for b in labels[:i]:
            assert not overlaps(a, b), (a, b)


# ---------------------------------------------------------------- selector, real PostgreSQL


def test_stats_count_errors_and_match_percentile_cont(db: None) -> None:
    durations = [100, 200, 300, 400, 1000, 35]
    rows = [inv("Greeter/greet", ms=ms, failed=(ms == 1000)) for ms in durations]
    rows.append(inv("Greeter/greet"))  # still running: counted, but has no duration or outcome
    save(rows)

    node = {n.id: n for n in service_map_get(window=HOUR, now=NOW).nodes}["Greeter/greet"]
    assert (node.stats.invocations, node.stats.completed, node.stats.failed) == (7, 6, 1)
    assert node.stats.error_rate == pytest.approx(1 / 6)
    assert node.stats.error_label == "17%"

    # What PostgreSQL itself says for these durations (interpolated percentiles).
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), percentile_cont(0.95) WITHIN GROUP (ORDER BY d)"
            " FROM unnest(%s::interval[]) AS d",
            [[timedelta(milliseconds=ms) for ms in durations]],
        )
        p50, p95 = cursor.fetchone()
    assert (node.stats.p50, node.stats.p95) == (p50, p95)
    # Sorted 35,100,200,300,400,1000: p50 between 200 and 300; p95 at 4.75 -> 400 + 0.75 * 600.
    assert node.stats.p50 == timedelta(milliseconds=250)
    assert node.stats.p95 == timedelta(milliseconds=850)


def test_edges_are_aggregated_by_caller_callee_and_kind(db: None) -> None:
    a, b = inv("Orchestrator/call_all", ms=50), inv("Orchestrator/call_all", ms=60)
    kids = [inv("Greeter/greet", ms=5, parent=p) for p in (a, a, b)]
    sent = [inv("Greeter/greet", ms=5, parent=b) for _ in range(2)]
    later = inv("Counter/add", parent=a)
    save(
        a,
        b,
        kids,
        sent,
        later,
        [edge(a if k.parent_id == a.id else b, k, "call", "Greeter/greet") for k in kids],
        [edge(b, s, "send", "Greeter/greet") for s in sent],
        edge(a, later, "delayed_send", "Counter/add"),
        edge(b, None, "call", "Signup/status"),  # callee not synced yet: the edge still counts
    )
    smap = service_map_get(window=HOUR, now=NOW)
    assert edge_counts(smap) == {
        ("Orchestrator/call_all", "Greeter/greet", "call"): 3,
        ("Orchestrator/call_all", "Greeter/greet", "send"): 2,
        ("Orchestrator/call_all", "Counter/add", "delayed_send"): 1,
        ("Orchestrator/call_all", "Signup/status", "call"): 1,
        (INGRESS, "Orchestrator/call_all", INGRESS): 2,
    }
    labels = {e.label for e in smap.edges}
    assert {f"call {X}3", f"send {X}2", f"delayed {X}1", f"{X}2"} <= labels
    nodes = {n.id: n for n in smap.nodes}
    assert nodes["Signup/status"].stats.invocations == 0  # known only from the edge


def test_ingress_node_counts_roots_from_the_ingress_only(db: None) -> None:
    roots = [inv("Greeter/greet", ms=3) for _ in range(3)]
    child = inv("Greeter/greet", ms=3, parent=roots[0])
    from_subscription = inv("Greeter/greet", ms=3, invoked_by="subscription")
    save(roots, child, from_subscription, edge(roots[0], child, "call", "Greeter/greet"))
    smap = service_map_get(window=HOUR, now=NOW)
    nodes = {n.id: n for n in smap.nodes}
    assert smap.nodes[0].id == INGRESS and nodes[INGRESS].stats.invocations == 3
    assert edge_counts(smap)[(INGRESS, "Greeter/greet", INGRESS)] == 3
    assert nodes["Greeter/greet"].stats.invocations == 5


def test_no_ingress_node_without_ingress_invocations(db: None) -> None:
    save(inv("Greeter/greet", ms=3, invoked_by="subscription"))
    assert [n.id for n in service_map_get(window=HOUR, now=NOW).nodes] == ["Greeter/greet"]


def test_window_excludes_older_invocations_and_edges(db: None) -> None:
    old_a = inv("Alpha/hop", ms=10, created=NOW - timedelta(hours=2))
    old_b = inv("Beta/hop", ms=5, created=NOW - timedelta(hours=2), parent=old_a)
    new = inv("Greeter/greet", ms=7, created=NOW - timedelta(minutes=59))
    save(old_a, old_b, new, edge(old_a, old_b, "call", "Beta/hop"))

    hour = service_map_get(window=HOUR, now=NOW)
    assert {n.id for n in hour.nodes} == {INGRESS, "Greeter/greet"}
    assert hour.since == NOW - HOUR
    day = service_map_get(window=timedelta(days=1), now=NOW)
    assert {n.id for n in day.nodes} == {INGRESS, "Greeter/greet", "Alpha/hop", "Beta/hop"}
    assert edge_counts(day)[("Alpha/hop", "Beta/hop", "call")] == 1


def test_cross_calls_form_a_cycle_with_both_edges_drawn(db: None) -> None:
    a = inv("Alpha/hop")
    b = inv("Beta/hop", parent=a)
    a2 = inv("Alpha/hop", parent=b)
    save(a, b, a2, edge(a, b, "call", "Beta/hop"), edge(b, a2, "call", "Alpha/hop"))
    smap = service_map_get(window=HOUR, now=NOW)
    assert edge_counts(smap) == {
        ("Alpha/hop", "Beta/hop", "call"): 1,
        ("Beta/hop", "Alpha/hop", "call"): 1,
        (INGRESS, "Alpha/hop", INGRESS): 1,
    }
    nodes = [LayoutNode(n.id, 230, 64) for n in smap.nodes]
    result = layout(nodes, [LayoutEdge(e.source, e.target, e.label) for e in smap.edges], root=INGRESS)
    assert_readable(result)
    boxes = result.boxes
    assert boxes[INGRESS].x < boxes["Alpha/hop"].x < boxes["Beta/hop"].x, "left to right from the ingress"
    by_pair = {(e.source, e.target): r for e, r in zip(smap.edges, result.routes, strict=True)}
    there, back = by_pair[("Alpha/hop", "Beta/hop")], by_pair[("Beta/hop", "Alpha/hop")]
    assert not there.back and back.back, "the edge that closes the cycle is the one drawn backwards"
    assert there.d != back.d
    # One arc bends above, the other below: their labels are clearly apart.
    assert abs(there.label_y - back.label_y) >= LABEL_H


# ---------------------------------------------------------------- layout alone


def test_three_cycle_self_loop_and_fan_out_stay_readable() -> None:
    names = ["ingress", "A", "B", "C", "D", "E", "F", "G"]
    edges = [
        LayoutEdge("ingress", "A", f"{X}4"),
        LayoutEdge("A", "B", f"call {X}1"),
        LayoutEdge("B", "C", f"call {X}1"),
        LayoutEdge("C", "A", f"call {X}1"),  # A -> B -> C -> A
        LayoutEdge("A", "A", f"send {X}2"),  # self-loop
        LayoutEdge("A", "A", f"call {X}1"),
        *(LayoutEdge("B", t, f"send {X}{i}") for i, t in enumerate("DEFG")),
        LayoutEdge("A", "D", f"delayed {X}1"),  # spans two columns: goes through a dummy slot
        LayoutEdge("A", "B", f"send {X}9"),  # parallel to A -> B call
    ]
    result = layout([LayoutNode(n, 230, 64) for n in names], edges, root="ingress")
    assert_readable(result)
    assert len(result.routes) == len(edges)
    assert [r.back for r in result.routes[:4]] == [False, False, False, True]
    assert result.routes[4].loop and result.routes[5].loop and result.routes[4].d != result.routes[5].d
    layers = {n: b.layer for n, b in result.boxes.items()}
    assert layers["ingress"] == 0 and layers["A"] == 1 and layers["B"] == 2 and layers["C"] == 3
    # Every path starts at its source's box side and is made of moves, curves and lines only.
    for r in result.routes:
        assert re.fullmatch(r"M [-\d. ]+( [CL] [-\d. ]+)+", r.d), r.d


def test_layout_of_nothing_and_of_isolated_nodes() -> None:
    assert layout([], []).boxes == {}
    result = layout([LayoutNode("X/a", 200, 60), LayoutNode("Y/b", 200, 60)], [])
    assert_readable(result)


def test_layout_refuses_edges_to_unknown_nodes() -> None:
    with pytest.raises(ValueError, match="not in the layout"):
        layout([LayoutNode("A", 10, 10)], [LayoutEdge("A", "B")])


# ---------------------------------------------------------------- the page


@pytest.fixture
def client(db: None) -> Client:
    c = Client()
    c.force_login(User.objects.create_user("op", password="pw-for-tests-only"))
    return c


def recent_tree() -> tuple[Invocation, Invocation]:
    now = timezone.now()
    root = inv("Orchestrator/call_all", ms=40, created=now - timedelta(minutes=5))
    child = inv("Greeter/greet", ms=4, failed=True, parent=root, created=now - timedelta(minutes=5))
    save(root, child, edge(root, child, "call", "Greeter/greet"))
    return root, child


def svg_links(body: str) -> list[dict[str, list[str]]]:
    hrefs = re.findall(r'<a href="([^"]+)" class="(?:edge|node)', body)
    return [parse_qs(urlsplit(unescape(h)).query) for h in hrefs if urlsplit(unescape(h)).path == "/invocations/"]


def test_requires_login(db: None) -> None:
    response = Client().get("/services/")
    assert response.status_code == 302 and "/login/" in response["Location"]


@pytest.mark.parametrize("window", ["2h", "", "1H", "7d; drop"])
def test_bad_window_is_a_clear_400(client: Client, window: str) -> None:
    response = client.get("/services/", {"window": window})
    assert response.status_code == 400
    body = response.content.decode()
    assert "Unknown window" in body and "1h, 1d, 7d" in body


def test_page_draws_nodes_and_edges_with_filter_links(client: Client) -> None:
    recent_tree()
    response = client.get("/services/", {"window": "1d"})
    assert response.status_code == 200
    body = response.content.decode()
    assert "<svg" in body and "Orchestrator/call_all" in body and "Greeter/greet" in body
    assert f"call {X}1" in body and "100% errors" in body
    assert 'marker-end="url(#arrow-call)"' in body
    since = response.context["smap"].since
    links = svg_links(body)
    node_link = {"service": ["Greeter"], "handler": ["greet"], "created_after": [since.isoformat()]}
    edge_link = {
        "service": ["Greeter"],
        "handler": ["greet"],
        "caller_service": ["Orchestrator"],
        "caller_handler": ["call_all"],
        "kind": ["call"],
        "created_after": [since.isoformat()],
    }
    assert node_link in links
    assert edge_link in links
    assert datetime.fromisoformat(links[0]["created_after"][0]) == since
    # The window chooser: plain links that htmx upgrades.
    assert 'href="?window=7d" hx-get="?window=7d"' in body


def test_links_lead_to_a_list_that_accepts_them(client: Client) -> None:
    recent_tree()
    body = client.get("/services/").content.decode()
    for href in re.findall(r'<a href="(/invocations/\?[^"]+)" class="(?:edge|node)', body):
        assert client.get(unescape(href)).status_code == 200, href


def test_htmx_gets_the_map_alone(client: Client) -> None:
    recent_tree()
    partial = client.get("/services/", {"window": "7d"}, headers={"HX-Request": "true"}).content.decode()
    assert "<html" not in partial
    assert partial.lstrip().startswith('<div id="service-map">') and "<svg" in partial


def test_empty_window_suggests_a_longer_one(client: Client) -> None:
    save(inv("Greeter/greet", ms=3, created=timezone.now() - timedelta(hours=3)))
    body = client.get("/services/").content.decode()
    assert "No invocations were created in the last hour" in body
    assert 'href="?window=1d"' in body and "<svg" not in body
    assert "Greeter/greet" in client.get("/services/?window=1d").content.decode()


# ---------------------------------------------------------------- the real demo


@pytest.mark.integration
def test_map_of_the_demo_shows_calls_and_the_cross_deadlock_cycle(engine: object, restate: object) -> None:
    from demo import traffic
    from tests.conftest import sync_until

    traffic.fire_call_service(restate)[0]  # type: ignore[arg-type]
    traffic.fire_cross_deadlock(restate)  # type: ignore[arg-type]

    def edges_now() -> dict[tuple[str, str, str], int]:
        return edge_counts(service_map_get(window=HOUR, now=timezone.now()))

    wanted = {
        ("Orchestrator/call_all", "Greeter/greet", "call"),
        ("Alpha/hop", "Beta/hop", "call"),
        ("Beta/hop", "Alpha/hop", "call"),
        (INGRESS, "Orchestrator/call_all", INGRESS),
        (INGRESS, "Alpha/hop", INGRESS),
    }
    sync_until(engine, lambda: wanted <= edges_now().keys(), what=f"map edges {wanted}")  # type: ignore[arg-type]
    smap = service_map_get(window=HOUR, now=timezone.now())
    from invocations.reads.presenters.service_map import draw

    drawing = draw(smap)
    boxes = [n.box for n in drawing.nodes]
    for i, a in enumerate(boxes):
        for b in boxes[:i]:
            assert not overlaps(a, b)
    routes = {(e.edge.source, e.edge.target): e.route for e in drawing.edges if e.edge.kind == "call"}
    assert routes[("Alpha/hop", "Beta/hop")].back != routes[("Beta/hop", "Alpha/hop")].back
