"""The call tree as pure functions: building, ordering, bounded flattening, geometry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from invocations.graph import trees

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
NOW = T0 + timedelta(seconds=100)


def row(inv_id: str, parent: str | None = None, *, at: float = 0, done: float | None = None, **kw: Any) -> dict:
    base = {
        "id": inv_id,
        "parent_id": parent,
        "target": f"Svc/{inv_id}",
        "service_type": "service",
        "status": "completed" if done is not None else "running",
        "completion_result": None,
        "completion_failure": None,
        "created_at": T0 + timedelta(seconds=at),
        "running_at": None,
        "completed_at": T0 + timedelta(seconds=done) if done is not None else None,
        "scheduled_start_at": None,
        "retry_count": 0,
        "gone_from_restate_at": None,
    }
    return base | kw


def edge(caller: str, index: int, callee: str | None, kind: str = "call", **kw: Any) -> dict:
    return {
        "caller_id": caller,
        "journal_index": index,
        "callee_id": callee,
        "kind": kind,
        "fire_at": None,
        "created_at": T0,
        "target": f"Svc/{callee}",
    } | kw


def test_children_follow_journal_order_and_carry_edge_kinds() -> None:
    rows = [row("r", done=10), row("a", "r", at=3, done=4), row("b", "r", at=1, done=2), row("c", "r", at=2)]
    fire = T0 + timedelta(hours=1)
    edges = [
        edge("r", 5, "a", "send"),
        edge("r", 1, "b", "call"),
        edge("r", 9, "c", "delayed_send", fire_at=fire),
    ]
    tree = trees.build_tree(rows, edges, "r", now=NOW)
    root = tree.root
    assert root is not None and [c.id for c in root.children] == ["b", "a", "c"]
    assert [c.kind for c in root.children] == ["call", "send", "delayed_send"]
    assert root.children[2].fires_at == fire
    assert root.size == 4 and root.depth == 0 and root.children[0].depth == 1


def test_children_without_edges_come_after_by_creation_and_are_marked_unknown() -> None:
    rows = [row("r"), row("late", "r", at=5), row("early", "r", at=1), row("known", "r", at=9)]
    tree = trees.build_tree(rows, [edge("r", 2, "known")], "r", now=NOW)
    assert [(c.id, c.kind) for c in tree.root.children] == [
        ("known", "call"),
        ("early", "unknown"),
        ("late", "unknown"),
    ]


def test_edge_to_an_unsynced_callee_becomes_a_phantom_child() -> None:
    tree = trees.build_tree([row("r")], [edge("r", 1, "inv_notyet", "send", target="Greeter/greet")], "r", now=NOW)
    (child,) = tree.root.children
    assert child.phantom and child.id == "inv_notyet" and child.target == "Greeter/greet" and child.kind == "send"


def test_orphans_whose_parent_is_missing_are_kept_as_extra_roots() -> None:
    rows = [row("r"), row("x", "gone-parent", at=3)]
    tree = trees.build_tree(rows, [], "r", now=NOW)
    assert [n.id for n in tree.roots] == ["r", "x"]


def test_a_parent_cycle_in_bad_data_does_not_loop() -> None:
    rows = [row("r"), row("a", "b"), row("b", "a")]
    tree = trees.build_tree(rows, [], "r", now=NOW)
    assert {n.id for n in tree.roots} >= {"r"}
    assert len(trees.flatten(tree, now=NOW)) == 3


def test_deep_chain_has_no_recursion_limit() -> None:
    rows = [row("n0")] + [row(f"n{i}", f"n{i - 1}", at=i) for i in range(1, 5000)]
    tree = trees.build_tree(rows, [], "n0", now=NOW)
    assert tree.by_id["n4999"].depth == 4999
    assert len(tree.path_to("n4999")) == 5000
    flat = trees.flatten(tree, now=NOW, current_id="n4999")
    assert len(flat) == 5000 and flat[-1].current and flat[-1].closes == 4999


def test_geometry_spans_created_to_completed_or_now() -> None:
    rows = [row("r", done=100), row("a", "r", at=25, done=50), row("b", "r", at=50)]
    tree = trees.build_tree(rows, [], "r", now=NOW)
    assert tree.start == T0 and tree.end == NOW
    a = trees.geometry(tree.by_id["a"], tree.start, tree.end, NOW)
    assert (a.left, a.width, a.wait_width, a.run_left, a.run_width, a.beyond) == (25.0, 25.0, 0.0, 25.0, 25.0, False)
    b = trees.geometry(tree.by_id["b"], tree.start, tree.end, NOW)
    assert (b.run_left, b.run_width) == (50.0, 50.0)  # running: up to now
    instant = row("i", done=0)
    single = trees.build_tree([instant], [], "i", now=T0)
    only = trees.geometry(single.root, single.start, single.end, T0)  # type: ignore[arg-type]
    assert (only.left, only.width) == (0.0, 100.0)


MS = timedelta(milliseconds=1)
MIN5 = timedelta(minutes=5)


def ms_row(inv_id: str, parent: str | None = None, **kw: Any) -> dict:
    """A row with times given as datetimes (these trees are milliseconds long)."""
    return row(inv_id, parent) | kw


def test_a_pending_delayed_child_does_not_stretch_the_axis() -> None:
    # A 23 ms tree that scheduled a delayed send due in 5 minutes.
    now = T0 + timedelta(seconds=1)
    root = ms_row("r", status="completed", running_at=T0, completed_at=T0 + 23 * MS)
    child = ms_row("d", "r", status="scheduled", created_at=T0 + 5 * MS, scheduled_start_at=T0 + 5 * MS + MIN5)
    tree = trees.build_tree([root, child], [edge("r", 1, "d", kind="delayed_send")], "r", now=now)
    assert (tree.start, tree.end) == (T0, T0 + 23 * MS)  # ~23 ms, not 5 minutes
    r = trees.geometry(tree.by_id["r"], tree.start, tree.end, now)
    assert (r.run_left, r.run_width, r.beyond) == (0.0, 100.0, False), "the root fills the axis"
    d = trees.geometry(tree.by_id["d"], tree.start, tree.end, now)
    assert d.run_width == 0.0, "it has not run"
    assert d.wait_left == round(5 / 23 * 100, 3) and d.wait_left + d.wait_width == 100.0, "waits up to the edge"
    assert d.beyond and d.fires_in == MIN5 + 5 * MS - timedelta(seconds=1)
    rows = trees.flatten(tree, now=now)
    assert rows[1].beyond and rows[1].fires_in == d.fires_in and rows[1].wait_width == d.wait_width


def test_a_delayed_send_that_fired_later_waited_then_ran_briefly() -> None:
    # Fired after 5 minutes, ran 10 ms: a 5-minute wait and a 10 ms run, not a 5-minute run.
    now = T0 + timedelta(minutes=10)
    fired = T0 + 5 * MS + MIN5
    root = ms_row("r", status="completed", running_at=T0, completed_at=T0 + 23 * MS)
    child = ms_row(
        "d",
        "r",
        status="completed",
        created_at=T0 + 5 * MS,
        scheduled_start_at=fired,
        running_at=fired,
        completed_at=fired + 10 * MS,
    )
    tree = trees.build_tree([root, child], [edge("r", 1, "d", kind="delayed_send")], "r", now=now)
    assert (tree.start, tree.end) == (T0, fired + 10 * MS)
    span = (tree.end - tree.start).total_seconds()  # type: ignore[operator]
    d = trees.geometry(tree.by_id["d"], tree.start, tree.end, now)
    assert abs(d.wait_width / 100 * span - MIN5.total_seconds()) < 0.001, "waited 5 minutes"
    assert abs(d.run_left / 100 * span - (fired - T0).total_seconds()) < 0.001, "ran once it fired"
    assert d.run_width == trees.MIN_RUN and not d.beyond and d.fires_in is None, "10 ms: a sliver"
    # Zoomed to the 40 ms around the firing, the run is a quarter of the axis and the wait is cut at the left.
    zoom = trees.geometry(tree.by_id["d"], fired - 10 * MS, fired + 30 * MS, now)
    assert (zoom.wait_left, zoom.wait_width, zoom.run_left, zoom.run_width) == (0.0, 25.0, 25.0, 25.0)


def test_a_queued_call_waits_until_it_runs() -> None:
    now = T0 + timedelta(seconds=10)
    root = ms_row("r", status="running", running_at=T0)
    ran = ms_row(
        "q",
        "r",
        status="completed",
        created_at=T0 + timedelta(seconds=1),
        running_at=T0 + timedelta(seconds=4),
        completed_at=T0 + timedelta(seconds=5),
    )
    queued = ms_row("p", "r", status="pending", created_at=T0 + timedelta(seconds=6))
    tree = trees.build_tree([root, ran, queued], [], "r", now=now)
    assert (tree.start, tree.end) == (T0, now)
    q = trees.geometry(tree.by_id["q"], tree.start, tree.end, now)
    assert (q.wait_left, q.wait_width, q.run_left, q.run_width) == (10.0, 30.0, 40.0, 10.0)
    p = trees.geometry(tree.by_id["p"], tree.start, tree.end, now)
    assert (p.wait_left, p.wait_width, p.run_width, p.beyond) == (60.0, 40.0, 0.0, False), "queued until now"


def test_a_tree_where_nothing_ran_yet_spans_the_waiting() -> None:
    now = T0 + timedelta(seconds=30)
    root = ms_row("s", status="scheduled", scheduled_start_at=T0 + timedelta(hours=1))
    tree = trees.build_tree([root], [], "s", now=now)
    assert (tree.start, tree.end) == (T0, now)
    bar = trees.geometry(tree.by_id["s"], tree.start, tree.end, now)
    assert (bar.wait_left, bar.wait_width, bar.run_width) == (0.0, 100.0, 0.0)
    assert bar.beyond and bar.fires_in == timedelta(minutes=59, seconds=30)


def test_flatten_is_pre_order_with_nesting_closes() -> None:
    rows = [row("r"), row("a", "r", at=1), row("a1", "a", at=2), row("b", "r", at=3)]
    tree = trees.build_tree(rows, [], "r", now=NOW)
    flat = trees.flatten(tree, now=NOW, current_id="a1")
    assert [r.node.id for r in flat] == ["r", "a", "a1", "b"]
    assert [r.has_rendered_children for r in flat] == [True, True, False, False]
    # a1 ends a's subtree; b ends r's.
    assert [r.closes for r in flat] == [0, 0, 1, 1]
    assert [r.current for r in flat] == [False, False, True, False]
    assert [r.on_path for r in flat] == [True, True, True, False]


def wide(n: int) -> list[dict]:
    return [row("r")] + [row(f"c{i:05d}", "r", at=i / 1000) for i in range(n)]


def test_child_cap_leaves_a_show_more_row() -> None:
    tree = trees.build_tree(wide(120), [], "r", now=NOW)
    flat = trees.flatten(tree, now=NOW, child_cap=50)
    nodes = [r for r in flat if not r.is_more]
    more = [r for r in flat if r.is_more]
    assert len(nodes) == 51
    assert len(more) == 1 and more[0].parent_id == "r" and more[0].offset == 50 and more[0].more_children == 70
    assert flat[-1].is_more and flat[-1].closes == 1


def test_children_slice_continues_where_the_page_stopped() -> None:
    tree = trees.build_tree(wide(120), [], "r", now=NOW)
    page2 = trees.flatten_children(tree, "r", now=NOW, offset=50, child_cap=50)
    assert [r.node.id for r in page2 if not r.is_more] == [f"c{i:05d}" for i in range(50, 100)]
    (more,) = [r for r in page2 if r.is_more]
    assert more.offset == 100 and more.more_children == 20


def test_current_node_beyond_the_cap_is_still_rendered_and_excluded_from_more() -> None:
    rows = [*wide(120), row("deep", "c00100", at=5)]
    tree = trees.build_tree(rows, [], "r", now=NOW)
    flat = trees.flatten(tree, now=NOW, current_id="deep", child_cap=50)
    ids = [r.node.id for r in flat if not r.is_more]
    assert "c00100" in ids and "deep" in ids
    (more,) = [r for r in flat if r.is_more]
    assert more.exclude == "c00100" and more.more_children == 69 and more.offset == 50
    rest = trees.flatten_children(tree, "r", now=NOW, offset=more.offset, exclude=more.exclude, child_cap=200)
    shown = [r.node.id for r in rest if not r.is_more and r.depth == 1]
    assert len(shown) == 69 and "c00100" not in shown


def test_row_cap_bounds_the_whole_page() -> None:
    # 100 children with 99 grandchildren each: 10,000 nodes.
    rows = [row("r")]
    for i in range(100):
        rows.append(row(f"p{i:03d}", "r", at=i))
        rows += [row(f"p{i:03d}-{j:02d}", f"p{i:03d}", at=i + j / 100) for j in range(99)]
    tree = trees.build_tree(rows, [], "r", now=NOW)
    assert tree.root.size == 10_001
    flat = trees.flatten(tree, now=NOW, child_cap=50, row_cap=2000)
    nodes = [r for r in flat if not r.is_more]
    assert len(nodes) <= 2000 + 1
    # Everything left out is accounted for by "more" rows.
    assert len(nodes) + sum(r.more_nodes for r in flat if r.is_more) == 10_001
    # Nesting stays balanced: every opened subtree is closed.
    assert sum(r.has_rendered_children for r in flat) == sum(r.closes for r in flat)
