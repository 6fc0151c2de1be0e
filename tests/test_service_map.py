"""The service map (/services/): aggregate queries on real PostgreSQL, the
drawing by Graphviz, the cache, the page, and the map of the real demo's traffic."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html import escape, unescape
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.utils import timezone

from invocations.graph import layout
from invocations.graph.layout import DrawingError, GraphEdge, GraphNode, PlacedEdge, PlacedNode, draw
from invocations.mirror import rollups
from invocations.models import DrawingCache, Invocation, InvocationEdge, RollupDirtyHour
from invocations.reads.presenters import service_map as presenter
from invocations.reads.selectors import service_map as selector
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
        caller_service=caller.service_name,
        caller_handler=caller.handler_name,
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
    # As the sync engine does: the hours of what was written are marked, then counted again.
    rollups.mark_dirty(r.created_at for r in flat)
    rollups.refresh_dirty()


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    # The map is cached per window, its geometry per shape: each test starts from its own data.
    cache.clear()
    presenter._parsed.clear()
    yield
    cache.clear()
    presenter._parsed.clear()


def edge_counts(smap: ServiceMap) -> dict[tuple[str, str], dict[str, int]]:
    return {(e.source, e.target): dict(e.counts) for e in smap.edges}


def near_box(p: layout.Point, box: PlacedNode, tolerance: float = 2.0) -> bool:
    """On the box's outline (or just outside it, where dot clips): not inside, not far away."""
    dx = max(box.x - p.x, 0.0, p.x - (box.x + box.width))
    dy = max(box.y - p.y, 0.0, p.y - (box.y + box.height))
    outside = (dx * dx + dy * dy) ** 0.5
    inside = min(p.x - box.x, box.x + box.width - p.x, p.y - box.y, box.y + box.height - p.y)
    return outside <= tolerance and inside <= tolerance


def assert_drawn(nodes: list[GraphNode], edges: list[GraphEdge], result: layout.Drawing) -> None:
    """Every node and edge drawn in order, inside the canvas; edges from their source's box to their target's."""
    assert [p.node for p in result.nodes] == nodes and [p.edge for p in result.edges] == edges
    boxes = {p.node.id: p for p in result.nodes}
    for b in result.nodes:
        assert b.x >= 0 and b.y >= 0 and b.x + b.width <= result.width and b.y + b.height <= result.height
    for a in result.nodes:
        for b in result.nodes:
            if a is not b:
                assert not (
                    a.x < b.x + b.width and b.x < a.x + a.width and a.y < b.y + b.height and b.y < a.y + a.height
                )
    for e in result.edges:
        assert re.fullmatch(r"M [-\d. ]+( [CL] [-\d. ]+)+", e.d), e.d
        assert near_box(e.start, boxes[e.edge.source]), (e.edge, e.start, boxes[e.edge.source])
        assert near_box(e.end, boxes[e.edge.target]), (e.edge, e.end, boxes[e.edge.target])
        if e.edge.label:
            assert e.label_left >= 0 and e.label_left + e.label_width <= result.width
            assert e.label_top >= 0 and e.label_top + e.label_height <= result.height


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
    assert node.stats.sampled == 6 and not node.stats.percentiles_sampled

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


def test_percentiles_are_over_the_latest_completed_only(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selector, "PERCENTILE_SAMPLE", 3)
    old = [inv("Greeter/greet", ms=5000, created=NOW - timedelta(minutes=50 - i)) for i in range(4)]
    recent = [inv("Greeter/greet", ms=ms, created=NOW - timedelta(minutes=5 - i)) for i, ms in enumerate((10, 20, 30))]
    save(old, recent, inv("Greeter/greet", created=NOW - timedelta(minutes=1)))  # running: not a sample
    stats = {n.id: n.stats for n in service_map_get(window=HOUR, now=NOW).nodes}["Greeter/greet"]
    assert (stats.invocations, stats.completed, stats.sampled) == (8, 7, 3)
    assert stats.percentiles_sampled
    assert stats.p50 == timedelta(milliseconds=20)  # the 5-second ones are older than the sample


def test_edges_are_one_per_handler_pair_with_counts_per_kind(db: None) -> None:
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
        ("Orchestrator/call_all", "Greeter/greet"): {"call": 3, "send": 2},
        ("Orchestrator/call_all", "Counter/add"): {"delayed_send": 1},
        ("Orchestrator/call_all", "Signup/status"): {"call": 1},
        (INGRESS, "Orchestrator/call_all"): {INGRESS: 2},
    }
    by_pair = {(e.source, e.target): e for e in smap.edges}
    greet = by_pair[("Orchestrator/call_all", "Greeter/greet")]
    assert greet.kind == "call" and greet.total == 5 and greet.counts == (("call", 3), ("send", 2))
    nodes = {n.id: n for n in smap.nodes}
    assert nodes["Signup/status"].stats.invocations == 0  # known only from the edge

    view = presenter.map_view(window=HOUR, now=NOW)
    labels = {(e.edge.source, e.edge.target): e.label for e in view.edges}
    assert labels[("Orchestrator/call_all", "Greeter/greet")] == f"call {X}3 \N{MIDDLE DOT} send {X}2"
    assert labels[("Orchestrator/call_all", "Counter/add")] == f"delayed {X}1"
    assert labels[(INGRESS, "Orchestrator/call_all")] == f"{X}2"


def test_every_invocation_is_counted_once_and_the_ingress_is_not_a_handler(db: None) -> None:
    roots = [inv("Orchestrator/call_all", ms=9) for _ in range(3)]
    kids = [inv("Greeter/greet", ms=3, parent=r) for r in roots for _ in range(2)]
    from_subscription = inv("Greeter/greet", ms=3, invoked_by="subscription")
    save(roots, kids, from_subscription, [edge(r, k, "call", "Greeter/greet") for r in roots for k in kids[:2]])
    smap = service_map_get(window=HOUR, now=NOW)
    nodes = {n.id: n for n in smap.nodes}
    assert smap.nodes[0].id == INGRESS and nodes[INGRESS].stats.invocations == 3
    assert edge_counts(smap)[(INGRESS, "Orchestrator/call_all")] == {INGRESS: 3}
    assert [n.id for n in smap.handlers] == ["Greeter/greet", "Orchestrator/call_all"]
    # 3 roots + 6 children + 1 from a subscription, each once (the ingress's 3 are among them).
    assert smap.total_invocations == 10 == Invocation.objects.count()
    assert nodes["Greeter/greet"].stats.invocations == 7


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
    assert edge_counts(day)[("Alpha/hop", "Beta/hop")] == {"call": 1}


def test_windows_start_on_the_hour(db: None) -> None:
    now = NOW + timedelta(minutes=20)  # 12:20
    save(
        inv("Alpha/hop", ms=1, created=datetime(2026, 11, 22, 11, 0, tzinfo=UTC)),  # the first instant counted
        inv("Beta/hop", ms=1, created=datetime(2026, 11, 22, 10, 59, 59, 999999, tzinfo=UTC)),
    )
    hour = service_map_get(window=HOUR, now=now)
    assert hour.since == datetime(2026, 11, 22, 11, 0, tzinfo=UTC)
    assert [n.id for n in hour.handlers] == ["Alpha/hop"]
    assert selector.window_start(timedelta(days=7), now) == datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
    summary = replace(SUMMARY, since=hour.since, computed_at=now)
    assert summary.since_label == "11:00 UTC"
    assert replace(summary, since=datetime(2026, 11, 15, 12, 0, tzinfo=UTC)).since_label == "Nov 15, 12:00 UTC"
    # Rows written behind the engine's back show once their hour is counted again.
    Invocation.objects.bulk_create([inv("Gamma/hop", ms=1, created=now - timedelta(minutes=1))])
    assert "Gamma/hop" not in {n.id for n in service_map_get(window=HOUR, now=now).nodes}
    rollups.rebuild()
    assert "Gamma/hop" in {n.id for n in service_map_get(window=HOUR, now=now).nodes}


def test_cross_calls_are_two_edges_drawn_apart(db: None) -> None:
    a = inv("Alpha/hop")
    b = inv("Beta/hop", parent=a)
    a2 = inv("Alpha/hop", parent=b)
    save(a, b, a2, edge(a, b, "call", "Beta/hop"), edge(b, a2, "call", "Alpha/hop"))
    view = presenter.map_view(window=HOUR, now=NOW)
    assert view.drawn and not view.drawing_error
    routes = {(e.edge.source, e.edge.target): e.route for e in view.edges}
    assert set(routes) == {("Alpha/hop", "Beta/hop"), ("Beta/hop", "Alpha/hop"), (INGRESS, "Alpha/hop")}
    boxes = {n.node.id: n.box for n in view.nodes}
    assert all(b is not None for b in boxes.values())
    assert boxes[INGRESS].x < boxes["Alpha/hop"].x < boxes["Beta/hop"].x, "left to right from the ingress"  # type: ignore[union-attr]
    there, back = routes[("Alpha/hop", "Beta/hop")], routes[("Beta/hop", "Alpha/hop")]
    assert there is not None and back is not None and there.d != back.d
    assert abs(there.label_y - back.label_y) >= layout.LABEL_H, "labels apart"


# ---------------------------------------------------------------- the drawing alone (Graphviz)


def test_cycles_self_loops_and_fan_out_are_all_drawn_from_box_to_box() -> None:
    nodes = [GraphNode("ingress", 110, 44, first=True)] + [GraphNode(n, 230, 64) for n in "ABCDEFG"]
    edges = [
        GraphEdge("ingress", "A", f"{X}4"),
        GraphEdge("A", "B", f"call {X}1"),
        GraphEdge("B", "A", f"call {X}1"),  # A -> B -> A
        GraphEdge("B", "C", f"call {X}1"),
        GraphEdge("C", "A", f"send {X}1"),  # A -> B -> C -> A
        GraphEdge("A", "A", f"send {X}2"),  # self-loop
        *(GraphEdge("B", t, f"send {X}{i}") for i, t in enumerate("DEFG")),
        GraphEdge("A", "D", f"delayed {X}1"),  # spans columns
    ]
    result = draw(nodes, edges)
    assert_drawn(nodes, edges, result)
    boxes = {p.node.id: p for p in result.nodes}
    assert boxes["ingress"].x < min(b.x for n, b in boxes.items() if n != "ingress"), "the ingress comes first"
    by_pair = {(e.edge.source, e.edge.target): e for e in result.edges}
    assert by_pair[("A", "B")].d != by_pair[("B", "A")].d
    loop = by_pair[("A", "A")]
    assert loop.loop and not by_pair[("A", "B")].loop
    a = boxes["A"]
    # A loop leaves its box and comes back: some control point lies outside it.
    xy = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", loop.d)]
    outside = [
        (x, y)
        for x, y in zip(xy[::2], xy[1::2], strict=True)
        if not (a.x <= x <= a.x + a.width and a.y <= y <= a.y + a.height)
    ]
    assert outside


def test_labels_that_dot_reads_specially_are_escaped() -> None:
    tricky = 'say "hi" \\N \\l \\\\ {x} <b>'
    nodes = [GraphNode('a"b', 100, 40), GraphNode("c\\d", 100, 40)]
    edges = [GraphEdge('a"b', "c\\d", tricky)]
    source = layout.dot_source(nodes, edges)
    assert 'a"b' not in source and "c\\d" not in source  # nodes are named by position
    assert_drawn(nodes, edges, draw(nodes, edges))
    # What dot itself draws for the label: the text as given, nothing substituted.
    svg = subprocess.run(["dot", "-Tsvg"], input=source.encode(), capture_output=True, check=True).stdout.decode()
    assert escape(tricky, quote=False) in svg.replace("&quot;", '"').replace("&#34;", '"')


def test_a_dense_map_stays_bounded() -> None:
    """26 handlers that all call each other (1,225 caller/callee/kind combinations, as in the
    issue): one edge per pair, a drawing of bounded size, drawn in bounded time."""
    names = [f"Service{i:02d}/handler" for i in range(25)]
    nodes = [GraphNode("ingress", 110, 44, first=True)] + [GraphNode(n, 230, 64) for n in names]
    combos = [(s, t, k) for s in names for t in names for k in ("call", "send")][:1200]
    combos += [("ingress", t, "ingress") for t in names]
    assert len(combos) == 1225
    pairs: dict[tuple[str, str], list[str]] = {}
    for s, t, k in combos:
        pairs.setdefault((s, t), []).append(f"{k} {X}1234")
    edges = [GraphEdge(s, t, " \N{MIDDLE DOT} ".join(kinds)) for (s, t), kinds in pairs.items()]
    assert len(edges) == 625
    started = time.monotonic()
    result = draw(nodes, edges)
    assert time.monotonic() - started < layout.DOT_TIMEOUT_S
    assert_drawn(nodes, edges, result)
    # The hand-written layout drew 26 nodes and 1,225 edges on 8568 x 19901 px.
    assert result.width <= 8000 and result.height <= 5000, (result.width, result.height)


def test_drawing_of_nothing_and_refusals() -> None:
    empty = draw([], [])
    assert (empty.nodes, empty.edges, empty.width, empty.height) == ([], [], 0, 0)
    lone = [GraphNode("X/a", 200, 60), GraphNode("Y/b", 200, 60)]
    assert_drawn(lone, [], draw(lone, []))
    with pytest.raises(ValueError, match="not in the graph"):
        draw([GraphNode("A", 10, 10)], [GraphEdge("A", "B")])
    with pytest.raises(ValueError, match="share an id"):
        draw([GraphNode("A", 10, 10), GraphNode("A", 10, 10)], [])


def test_dot_missing_or_slow_is_a_drawing_error(monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = [GraphNode("A", 10, 10)]
    with pytest.raises(DrawingError, match="took longer"):
        layout.run_dot("digraph G { a -> b }", timeout=0.000001)
    monkeypatch.setattr(layout.shutil, "which", lambda name: None)
    with pytest.raises(DrawingError, match="not installed"):
        draw(nodes, [])


def test_placed_edge_label_box() -> None:
    e = PlacedEdge(GraphEdge("a", "a", "x"), "M 0 0", layout.Point(0, 0), layout.Point(0, 0), 50, 20, 30)
    assert (e.label_left, e.label_top, e.loop) == (35, 12, True)


# ---------------------------------------------------------------- the caches

SUMMARY = presenter.Summary(NOW - HOUR, NOW, invocations=0, handlers=0, ingress_roots=0, edges=0, compute_s=0.0)


def counting_compute(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = presenter.compute

    def compute(*, window: presenter.Window, now: datetime) -> presenter.Computed:
        calls.append(window.key)
        return original(window=window, now=now)

    monkeypatch.setattr(presenter, "compute", compute)
    return calls


def counting_dot(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    sources: list[str] = []
    original = presenter.run_dot

    def run_dot(source: str) -> dict:
        sources.append(source)
        return original(source)

    monkeypatch.setattr(presenter, "run_dot", run_dot)
    return sources


def test_a_map_is_reused_while_its_rollups_and_window_start_are_the_same(
    db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = counting_compute(monkeypatch)
    monkeypatch.setitem(presenter.WINDOWS, "1h", replace(presenter.WINDOWS["1h"], fresh_s=0.0))
    now = timezone.now()
    a = inv("Alpha/hop", ms=5, created=now - timedelta(minutes=1))
    save(a)
    first = presenter.cached(window_key="1h", now=now)
    assert presenter.cached(window_key="1h", now=now) is not None and calls == ["1h"], "same generation"
    assert first.summary.invocations == 1

    # The rollups change: the next request counts again, at once (fresh_s is 0 here).
    save(inv("Alpha/hop", ms=5, created=now - timedelta(minutes=1)))
    second = presenter.cached(window_key="1h", now=now)
    assert calls == ["1h", "1h"] and second.summary.invocations == 2
    # The window moves to the next hour: a map of its own.
    presenter.cached(window_key="1h", now=now + HOUR)
    assert len(calls) == 3
    # The other windows are their own entries.
    presenter.cached(window_key="1d", now=now)
    assert calls[-1] == "1d"


def test_concurrent_requests_for_a_window_compute_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def slow_compute(*, window: presenter.Window, now: datetime) -> presenter.Computed:
        calls.append(window.key)
        time.sleep(0.3)
        return presenter.Computed(SUMMARY, presenter.SafeString(""))

    monkeypatch.setattr(presenter, "compute", slow_compute)
    monkeypatch.setattr(presenter, "rollup_generation", lambda: 1)
    results: list[presenter.Computed] = []
    threads = [
        threading.Thread(target=lambda: results.append(presenter.cached(window_key="7d", now=NOW))) for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["7d"] and len(results) == 6
    presenter.cached(window_key="1d", now=NOW)  # the other windows are their own entries
    assert calls == ["7d", "1d"]


def test_when_a_map_is_recomputed() -> None:
    entry = presenter.Computed(SUMMARY, presenter.SafeString(""), generation=7)
    hour, week = presenter.WINDOWS["1h"], presenter.WINDOWS["7d"]
    now = time.time()

    def aged(generation: int, seconds: float) -> presenter.Computed:
        return replace(entry, generation=generation, stored=now - seconds)

    assert presenter._usable(aged(7, 10_000), 7, hour), "the rollups did not change: exact however old"
    assert presenter._usable(aged(6, 1), 7, hour), "changed a moment ago: reused a little longer"
    assert not presenter._usable(aged(6, hour.fresh_s + 1), 7, hour)
    assert presenter._usable(aged(6, hour.fresh_s + 1), 7, week), "a week's map lives longer"
    assert not presenter._usable(None, 7, hour)


def test_dot_lays_out_a_graph_shape_once_for_every_process(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    dot = counting_dot(monkeypatch)
    a, b = inv("Alpha/hop", ms=5), inv("Alpha/hop", ms=5)
    child = inv("Beta/hop", ms=5, parent=a)
    save(a, b, child, edge(a, child, "call", "Beta/hop"))
    first = presenter.map_view(window=HOUR, now=NOW)
    assert first.drawn and len(dot) == 1
    assert DrawingCache.objects.filter(key__startswith="layout:").count() == 1

    # Another process (nothing in this one's memory): the layout comes from the shared table.
    cache.clear()
    again = presenter.map_view(window=HOUR, now=NOW)
    assert len(dot) == 1 and [e.route for e in again.edges] == [e.route for e in first.edges]

    # Counts change but not their width: the same layout, the new counts in the labels.
    more = inv("Beta/hop", ms=5, parent=b)
    save(more, edge(b, more, "call", "Beta/hop"))
    changed = presenter.map_view(window=HOUR, now=NOW)
    assert len(dot) == 1
    assert {e.label for e in changed.edges} == {f"call {X}2", f"{X}2"}
    # A count that gains a digit, or a new pair, is a shape dot has not seen.
    kids = [inv("Beta/hop", ms=5, parent=a) for _ in range(8)]
    save(kids, [edge(a, k, "call", "Beta/hop") for k in kids])
    assert {e.label for e in presenter.map_view(window=HOUR, now=NOW).edges} == {f"call {X}10", f"{X}2"}
    assert len(dot) == 2
    assert all("10" not in line for line in dot[-1].splitlines() if "label" in line), "digits zeroed"


def test_a_drawing_rendered_once_is_shared_by_every_process(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    recent_tree()
    dot = counting_dot(monkeypatch)
    first = client.get("/services/").context["drawing_html"]
    assert "<svg" in first and len(dot) == 1 and DrawingCache.objects.filter(key__startswith="map:").count() == 1
    # Another process, same rollups: neither dot nor the template runs; the same drawing.
    cache.clear()
    rendered: list[object] = []
    original_view = presenter._view
    monkeypatch.setattr(presenter, "_view", lambda smap: rendered.append(smap) or original_view(smap))
    response = client.get("/services/")
    assert response.context["drawing_html"] == first and not rendered and len(dot) == 1
    assert not response.context["summary"].drawn_here
    # What it shows changes: drawn again (the layout still shared: same shape).
    root = inv("Orchestrator/call_all", ms=40, created=timezone.now() - timedelta(minutes=5))
    save(root)
    cache.clear()
    assert "3 invocations of 2 handlers" in client.get("/services/").content.decode()
    assert len(rendered) == 1 and len(dot) == 1


def test_the_shared_drawings_are_bounded(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(presenter.KEPT, "layout", 2)
    for n in range(1, 4):
        presenter.layout_of(f"digraph G {{ {' -> '.join(f'n{i}' for i in range(n + 1))} }}")
    assert DrawingCache.objects.filter(key__startswith="layout:").count() == 2


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
    svg = body[body.index("<svg") : body.index("</svg>")]
    hrefs = re.findall(r'<a href="([^"]+)"', svg)
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
    # Counted once: 2 invocations of 2 handlers (the ingress is where the root came from).
    assert "2 invocations of 2 handlers" in body and "1 of them sent from outside Restate" in body
    since = response.context["summary"].since
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
    ingress_link = {
        "service": ["Orchestrator"],
        "handler": ["call_all"],
        "roots": ["1"],
        "created_after": [since.isoformat()],
    }
    assert node_link in links and edge_link in links and ingress_link in links
    assert datetime.fromisoformat(links[0]["created_after"][0]) == since
    # The window chooser: plain links that htmx upgrades.
    assert 'href="?window=7d" hx-get="?window=7d"' in body


def test_the_list_counts_what_the_map_counted_through_every_link(client: Client) -> None:
    now = timezone.now()
    at = now - timedelta(minutes=5)
    a = inv("Orchestrator/call_all", ms=40, created=at)
    b = inv("Orchestrator/call_all", ms=40, failed=True, created=at)
    called = [inv("Greeter/greet", ms=4, parent=a, created=at) for _ in range(3)]
    sent = inv("Greeter/greet", parent=a, created=at)  # still running
    delayed = inv("Counter/add", parent=b, created=at)
    by_b = inv("Greeter/greet", ms=4, failed=True, parent=b, created=at)
    save(
        a,
        b,
        called,
        sent,
        delayed,
        by_b,
        [edge(a, c, "call", "Greeter/greet") for c in called],
        edge(a, sent, "send", "Greeter/greet"),
        edge(b, delayed, "delayed_send", "Counter/add"),
        edge(b, by_b, "call", "Greeter/greet"),
        inv("Greeter/greet", ms=4, created=now - timedelta(days=2)),  # outside every window but the week
    )
    for window in ("1h", "1d", "7d"):
        response = client.get("/services/", {"window": window})
        body = unescape(response.content.decode())
        summary = response.context["summary"]
        view = presenter.map_view(window=presenter.WINDOWS[window].span, now=summary.computed_at)
        assert view.smap.since == summary.since and summary.since.minute == 0
        assert f'datetime="{summary.since.isoformat()}">{summary.since_label}</time>' in body
        expected: list[tuple[str, int]] = [(n.href, n.node.stats.invocations) for n in view.nodes]
        expected += [(p.href, int(p.text.split(X)[1])) for e in view.edges for p in e.parts]
        expected += [(e.href, e.edge.total) for e in view.edges]
        assert len(expected) >= 10
        for href, count in expected:
            assert href in body, href
            listed = client.get(href)
            assert listed.status_code == 200 and listed.context["total"] == count, (window, href, count)
        assert summary.invocations == Invocation.objects.filter(created_at__gte=summary.since).count()


def test_hours_left_uncounted_are_said_on_the_page(client: Client) -> None:
    recent_tree()
    body = client.get("/services/").content.decode()
    assert "not been counted again yet" not in body
    now = timezone.now()
    rollups.mark_dirty([now])
    assert "not been counted again yet" not in client.get("/services/").content.decode(), "a moment is normal"
    RollupDirtyHour.objects.update(marked_at=now - timedelta(minutes=5))
    body = client.get("/services/").content.decode()
    assert "1 hour of this window changed since" in body and "manage.py refresh_rollups" in body
    rollups.refresh_dirty()
    assert "not been counted again yet" not in client.get("/services/").content.decode()


def test_svg_links_have_accessible_names(client: Client) -> None:
    recent_tree()
    body = client.get("/services/").content.decode()
    svg = body[body.index("<svg") : body.index("</svg>")]
    opening = svg[: svg.index(">")]
    assert 'role="img"' not in opening and 'role="group"' in opening and "aria-label=" in opening
    anchors = re.findall(r"<a ([^>]*)>\s*(<title>[^<]+</title>)?", svg)
    assert anchors
    for attrs, title in anchors:
        hidden = 'aria-hidden="true"' in attrs and 'tabindex="-1"' in attrs
        assert title or hidden, attrs  # a name of its own, or a mouse-only repeat of a named link
    names = re.findall(r"<title>([^<]+)</title>", svg)
    assert any(n.startswith(f"Orchestrator/call_all → Greeter/greet: call {X}1") for n in names)
    assert any(n.startswith("Greeter/greet (service): 1 invocations") for n in names)


def test_links_lead_to_a_list_that_accepts_them(client: Client) -> None:
    recent_tree()
    body = client.get("/services/").content.decode()
    hrefs = re.findall(r'<a href="(/invocations/\?[^"]+)"', body)
    assert len(hrefs) >= 5
    for href in hrefs:
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


def test_without_graphviz_the_page_lists_the_map_as_tables(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    recent_tree()
    monkeypatch.setattr(layout.shutil, "which", lambda name: None)
    response = client.get("/services/")
    body = response.content.decode()
    assert response.status_code == 200 and "<svg" not in body
    assert "could not be drawn: Graphviz is not installed" in body
    assert '<details class="map-table" open>' in body
    assert re.search(rf"Orchestrator/call_all</td><td>Greeter/greet</td><td><a href=\"[^\"]+\">call {X}1</a>", body)
    # Not shared: once dot is back, the next process draws the map.
    assert not DrawingCache.objects.filter(key__startswith="map:").exists()


def test_a_second_request_is_served_from_the_cache(client: Client, django_assert_max_num_queries: object) -> None:
    recent_tree()
    assert client.get("/services/").status_code == 200
    with django_assert_max_num_queries(9):  # type: ignore[operator]  # session, user, sync state, trace feed, data version
        response = client.get("/services/")
    assert "Greeter/greet" in response.content.decode()


# ---------------------------------------------------------------- the real demo


@pytest.mark.integration
def test_map_of_the_demo_shows_calls_and_the_cross_deadlock_cycle(engine: object, restate: object) -> None:
    from demo import traffic
    from tests.conftest import sync_until

    traffic.fire_call_service(restate)[0]  # type: ignore[arg-type]
    traffic.fire_cross_deadlock(restate)  # type: ignore[arg-type]

    def edges_now() -> dict[tuple[str, str], dict[str, int]]:
        rollups.refresh_dirty()  # what the rollup worker does after the sync's steps
        return edge_counts(service_map_get(window=HOUR, now=timezone.now()))

    wanted = {
        ("Orchestrator/call_all", "Greeter/greet"),
        ("Alpha/hop", "Beta/hop"),
        ("Beta/hop", "Alpha/hop"),
        (INGRESS, "Orchestrator/call_all"),
        (INGRESS, "Alpha/hop"),
    }
    sync_until(engine, lambda: wanted <= edges_now().keys(), what=f"map edges {wanted}")  # type: ignore[arg-type]
    view = presenter.map_view(window=HOUR, now=timezone.now())
    assert view.drawn
    boxes = [n.box for n in view.nodes if n.box is not None]
    routes_drawn = [e.route for e in view.edges if e.route is not None]
    result = layout.Drawing(boxes, routes_drawn, view.width, view.height)
    assert_drawn([b.node for b in boxes], [r.edge for r in routes_drawn], result)
    routes = {(e.edge.source, e.edge.target): e.route for e in view.edges}
    assert routes[("Alpha/hop", "Beta/hop")].d != routes[("Beta/hop", "Alpha/hop")].d  # type: ignore[union-attr]
