"""The call tree of one root invocation, as pure functions over plain rows.

No database and no Django here: selectors hand in the flat rows (one query on
`root_id`) and the edges, these functions build the tree, order children the
way the caller issued them, and flatten it into a bounded list of rows for the
waterfall. Keeping this pure makes the 10,000-node case cheap to test and to
measure.

Bounded rendering: a page shows at most `child_cap` children per node and
`row_cap` rows in all; what is left out becomes a "show K more" row that the
children endpoint fills in on demand. The path from the root to the current
invocation is always rendered, whatever the caps say, so a deep link never
lands on a hidden node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

CHILD_CAP = 50  # children shown per node before a "show K more" row
ROW_CAP = 2000  # rows per page or per "show more" answer: keeps render time bounded

# Edge kinds as the sync engine stores them; UNKNOWN when the parent's journal
# (which says how it reached the child) is not in our copy yet.
CALL = "call"
SEND = "send"
DELAYED_SEND = "delayed_send"
UNKNOWN = "unknown"
# Statuses of an invocation that has not run yet: a delayed send waiting to fire, a call
# queued behind a virtual object's lock, one waiting for a worker.
# Restate's status names (mirror.status.InvocationStatus; this pure layer imports no Django).
NOT_STARTED = frozenset({"scheduled", "pending", "ready"})

# Fields the tree needs from an invocation row (the selector asks for exactly these).
ROW_FIELDS = (
    "id",
    "parent_id",
    "target",
    "service_type",
    "status",
    "completion_result",
    "completion_failure",
    "created_at",
    "running_at",
    "completed_at",
    "scheduled_start_at",
    "inboxed_at",
    "retry_count",
    "gone_from_restate_at",
)
EDGE_FIELDS = ("caller_id", "journal_index", "callee_id", "kind", "fire_at", "created_at", "target")


@dataclass(slots=True, eq=False)
class Node:
    id: str
    parent_id: str | None
    target: str
    service_type: str
    status: str
    created_at: datetime
    completed_at: datetime | None = None
    running_at: datetime | None = None
    scheduled_start_at: datetime | None = None
    inboxed_at: datetime | None = None
    completion_result: str | None = None
    completion_failure: str | None = None
    retry_count: int = 0
    gone: bool = False
    # How the parent reached this node (from the parent's journal).
    kind: str = UNKNOWN
    journal_index: int | None = None
    fire_at: datetime | None = None
    # An edge whose callee we have not synced yet: drawn so the tree is honest about it.
    phantom: bool = False
    depth: int = 0
    children: list[Node] = field(default_factory=list)
    size: int = 1  # nodes in this subtree, itself included

    @property
    def fires_at(self) -> datetime | None:
        """When a delayed send fires: Restate's own scheduled start, else the journal's invoke time."""
        return self.scheduled_start_at or self.fire_at

    @property
    def duration(self) -> timedelta | None:
        """Created to completed; None while it has not completed."""
        return self.completed_at - self.created_at if self.completed_at else None

    @property
    def started(self) -> bool:
        return not self.phantom and (
            self.running_at is not None or self.completed_at is not None or self.status not in NOT_STARTED
        )

    @property
    def run_start(self) -> datetime | None:
        """When it began to run: until then it waited (scheduled, or queued). None if it has not."""
        if not self.started:
            return None
        return self.running_at or self.created_at


@dataclass(slots=True)
class Tree:
    roots: list[Node]  # the root first; then any orphans whose parent is missing from our copy
    by_id: dict[str, Node]
    # The waterfall's time axis: what ran, from the first start to the last completion (or now
    # while something runs). A delayed child due in 5 minutes does not stretch a 23 ms tree:
    # its wait is drawn up to the edge and marked as going beyond it.
    start: datetime | None
    end: datetime | None

    @property
    def span(self) -> timedelta | None:
        return self.end - self.start if self.start and self.end else None

    @property
    def root(self) -> Node | None:
        return self.roots[0] if self.roots else None

    def path_to(self, node_id: str) -> list[Node]:
        """Root .. node, following parents; empty when the node is not in the tree."""
        path: list[Node] = []
        node = self.by_id.get(node_id)
        seen: set[str] = set()
        while node is not None and node.id not in seen:
            seen.add(node.id)
            path.append(node)
            node = self.by_id.get(node.parent_id) if node.parent_id else None
        path.reverse()
        return path


def _get(row: Any, name: str) -> Any:
    return row[name] if isinstance(row, Mapping) else getattr(row, name)


def _has(row: Any, name: str) -> bool:
    return name in row if isinstance(row, Mapping) else hasattr(row, name)


def _child_order(node: Node) -> tuple[int, int, datetime, str]:
    # Journal order is the order the caller issued calls/sends; nodes without an
    # edge (journal not synced yet) come after, by creation time.
    if node.journal_index is not None:
        return (0, node.journal_index, node.created_at, node.id)
    return (1, 0, node.created_at, node.id)


def build_tree(
    rows: Iterable[Any],
    edges: Iterable[Any],
    root_id: str,
    *,
    now: datetime,
) -> Tree:
    """Link rows (dicts or objects with ROW_FIELDS) into a tree under `root_id`.

    `edges` (dicts or objects with EDGE_FIELDS) say how each child was reached.
    An edge whose callee is not among the rows becomes a phantom child. Rows
    whose parent is missing (not synced, or purged before we saw it) are kept as
    extra roots rather than dropped.
    """
    by_id: dict[str, Node] = {}
    for r in rows:
        by_id[_get(r, "id")] = Node(
            id=_get(r, "id"),
            parent_id=_get(r, "parent_id"),
            target=_get(r, "target"),
            service_type=_get(r, "service_type"),
            status=_get(r, "status"),
            created_at=_get(r, "created_at"),
            completed_at=_get(r, "completed_at"),
            running_at=_get(r, "running_at"),
            scheduled_start_at=_get(r, "scheduled_start_at"),
            inboxed_at=_get(r, "inboxed_at") if _has(r, "inboxed_at") else None,
            completion_result=_get(r, "completion_result"),
            completion_failure=_get(r, "completion_failure"),
            retry_count=_get(r, "retry_count") or 0,
            gone=_get(r, "gone_from_restate_at") is not None,
        )

    for e in edges:
        caller_id = _get(e, "caller_id")
        if caller_id not in by_id:
            continue
        callee_id = _get(e, "callee_id")
        node = by_id.get(callee_id) if callee_id else None
        if node is None:
            # The caller's journal names a callee our copy does not hold (yet).
            created = _get(e, "created_at") or by_id[caller_id].created_at
            node = Node(
                id=callee_id or f"{caller_id}#{_get(e, 'journal_index')}",
                parent_id=caller_id,
                target=_get(e, "target"),
                service_type="",
                status="unknown",
                created_at=created,
                phantom=True,
            )
            by_id[node.id] = node
        node.kind = _get(e, "kind")
        node.journal_index = _get(e, "journal_index")
        node.fire_at = _get(e, "fire_at")

    roots: list[Node] = []
    for node in by_id.values():
        parent = by_id.get(node.parent_id) if node.parent_id and node.id != root_id else None
        if parent is None or parent is node:
            roots.append(node)
        else:
            parent.children.append(node)
    # The real root first, orphans after it by creation time.
    roots.sort(key=lambda n: (n.id != root_id, n.created_at, n.id))

    start: datetime | None = None
    end: datetime | None = None
    # Iterative DFS: a 10,000-deep chain must not hit Python's recursion limit.
    order: list[Node] = []
    visited: set[str] = set()
    for top in roots:
        stack = [(top, 0)]
        while stack:
            node, depth = stack.pop()
            if node.id in visited:
                continue  # a parent cycle in bad data: draw each node once
            visited.add(node.id)
            node.depth = depth
            node.children.sort(key=_child_order)
            order.append(node)
            stack.extend((c, depth + 1) for c in reversed(node.children))
            began = node.run_start
            if began is not None:
                start = began if start is None else min(start, began)
                finish = node.completed_at or now
                end = finish if end is None else max(end, finish)
    # Nodes only reachable through a parent cycle (bad data) were never visited:
    # cut each cycle at its first node and show that node as a root.
    for node in list(by_id.values()):
        if node.id in visited:
            continue
        parent = by_id.get(node.parent_id) if node.parent_id else None
        if parent is not None and node in parent.children:
            parent.children.remove(node)
        roots.append(node)
        stack = [(node, 0)]
        while stack:
            n, depth = stack.pop()
            if n.id in visited:
                continue
            visited.add(n.id)
            n.depth = depth
            n.children = [c for c in n.children if c.id not in visited]
            order.append(n)
            stack.extend((c, depth + 1) for c in reversed(n.children))
    for node in reversed(order):
        node.size = 1 + sum(c.size for c in node.children)
    if start is None:
        # Nothing has run yet (a scheduled root): the axis is the waiting so far.
        created = [n.created_at for n in by_id.values() if not n.phantom]
        if created:
            start, end = min(created), max(now, max(created))
    return Tree(roots=roots, by_id=by_id, start=start, end=end)


# ------------------------------------------------------------------ flattening for the page


@dataclass(slots=True)
class Row:
    """One line of the waterfall: a node, or a "show K more" placeholder."""

    node: Node | None
    depth: int
    current: bool = False
    on_path: bool = False
    has_rendered_children: bool = False
    closes: int = 0  # how many enclosing subtrees end after this row (nested <details>)
    # Bar geometry in percent of the axis: the time it waited (scheduled until it fired, queued
    # until it ran), then the time it ran; left/width span both.
    left: float = 0.0
    width: float = 0.0
    wait_left: float = 0.0
    wait_width: float = 0.0
    run_left: float = 0.0
    run_width: float = 0.0
    beyond: bool = False  # it goes on past the axis's end (a delayed send not due yet, a queue)
    fires_in: timedelta | None = None  # from now until a delayed send fires, when it has not
    # "show more" rows only:
    parent_id: str | None = None
    offset: int = 0
    exclude: str | None = None
    more_children: int = 0
    more_nodes: int = 0

    @property
    def is_more(self) -> bool:
        return self.node is None

    @property
    def close_tags(self) -> str:
        """Closing tags for the nested <details> that end after this row (a constant string, safe)."""
        return "</details>" * self.closes


@dataclass(frozen=True, slots=True)
class Bar:
    wait_left: float = 0.0
    wait_width: float = 0.0
    run_left: float = 0.0
    run_width: float = 0.0
    beyond: bool = False
    fires_in: timedelta | None = None

    @property
    def left(self) -> float:
        return self.wait_left if self.wait_width else self.run_left

    @property
    def width(self) -> float:
        end = self.run_left + self.run_width if self.run_width else self.wait_left + self.wait_width
        return round(end - self.left, 3)


MIN_RUN = 0.25  # percent: sub-pixel bars vanish; every run keeps a sliver to see


def geometry(node: Node, start: datetime | None, end: datetime | None, now: datetime) -> Bar:
    """A node's wait and run segments in percent of the axis `start`..`end`.

    Waiting is created -> running_at (or until now, or until it fires, if it has not run);
    running is running_at -> completed_at (or now). Whatever lies past the axis is cut at its
    edge and marked `beyond`.
    """
    fires = node.fires_at
    fires_in = max(fires - now, timedelta(0)) if fires is not None and not node.started else None
    if node.phantom:
        return Bar()
    if start is None or end is None or end <= start:
        return Bar(run_width=100.0) if node.started else Bar(wait_width=100.0, beyond=True, fires_in=fires_in)
    span = (end - start).total_seconds()

    def pct(t: datetime) -> float:
        return min(max((t - start).total_seconds() / span * 100.0, 0.0), 100.0)

    began = node.run_start
    waited_until = began if began is not None else max(now, fires or now)
    wait_left, wait_right = pct(node.created_at), pct(waited_until)
    beyond = waited_until > end
    run_left = run_width = 0.0
    if began is not None:
        finish = node.completed_at or now
        beyond = beyond or finish > end
        run_left = pct(began)
        run_width = max(pct(finish) - run_left, MIN_RUN)
    return Bar(
        wait_left=round(wait_left, 3),
        wait_width=round(max(wait_right - wait_left, 0.0), 3),
        run_left=round(run_left, 3),
        run_width=round(run_width, 3),
        beyond=beyond,
        fires_in=fires_in,
    )


def flatten(
    tree: Tree,
    *,
    now: datetime,
    current_id: str | None = None,
    child_cap: int = CHILD_CAP,
    row_cap: int = ROW_CAP,
) -> list[Row]:
    """The whole tree, pre-order, bounded by the caps; the path to `current_id` always shown."""
    walk = _Walk(tree, now, {n.id for n in tree.path_to(current_id)} if current_id else set(), current_id)
    for top in tree.roots:
        walk.run(top, child_cap=child_cap, row_cap=row_cap)
    return walk.rows


def flatten_children(
    tree: Tree,
    parent_id: str,
    *,
    now: datetime,
    offset: int = 0,
    exclude: str | None = None,
    child_cap: int = CHILD_CAP,
    row_cap: int = ROW_CAP,
) -> list[Row]:
    """The rows a "show K more" placeholder stands for: children[offset:] of one node, bounded again."""
    parent = tree.by_id.get(parent_id)
    if parent is None:
        return []
    walk = _Walk(tree, now, set(), None)
    children = [c for c in parent.children[offset:] if c.id != exclude]
    walk.run(parent, child_cap=child_cap, row_cap=row_cap, children=children, offset=offset, exclude=exclude)
    return walk.rows


@dataclass(slots=True)
class _Frame:
    """A node whose children are being emitted (an explicit stack: trees can be thousands deep)."""

    parent: Node
    children: list[Node]
    offset: int  # where `children` starts in parent.children
    exclude: str | None  # a child left out of `children` (already drawn elsewhere)
    row: Row | None  # the parent's own row; None when only its children are drawn
    before: int  # len(rows) once the parent's row was added
    i: int = 0
    shown: int = 0
    skipped_from: int | None = None  # index in `children` of the first child left out
    path_child: Node | None = None
    path_done: bool = False


class _Walk:
    def __init__(self, tree: Tree, now: datetime, path_ids: set[str], current_id: str | None) -> None:
        self.tree = tree
        self.now = now
        self.path_ids = path_ids
        self.current_id = current_id
        self.rows: list[Row] = []

    def _row(self, node: Node) -> Row:
        bar = geometry(node, self.tree.start, self.tree.end, self.now)
        return Row(
            node=node,
            depth=node.depth,
            current=node.id == self.current_id,
            on_path=node.id in self.path_ids,
            left=bar.left,
            width=bar.width,
            wait_left=bar.wait_left,
            wait_width=bar.wait_width,
            run_left=bar.run_left,
            run_width=bar.run_width,
            beyond=bar.beyond,
            fires_in=bar.fires_in,
        )

    def _push(self, stack: list[_Frame], node: Node) -> None:
        row = self._row(node)
        self.rows.append(row)
        stack.append(_Frame(node, node.children, 0, None, row, len(self.rows)))

    def run(
        self,
        top: Node,
        *,
        child_cap: int,
        row_cap: int,
        children: list[Node] | None = None,
        offset: int = 0,
        exclude: str | None = None,
    ) -> None:
        """Emit `top` and its subtree; with `children`, only those children of `top` and below."""
        rows = self.rows
        stack: list[_Frame] = []
        if children is None:
            self._push(stack, top)
        else:
            stack.append(_Frame(top, children, offset, exclude, None, len(rows)))
        while stack:
            f = stack[-1]
            if f.i < len(f.children):
                child = f.children[f.i]
                f.i += 1
                if f.skipped_from is None and (f.shown >= child_cap or len(rows) >= row_cap):
                    f.skipped_from = f.i - 1
                if f.skipped_from is not None:
                    if child.id in self.path_ids:
                        f.path_child = child  # keep counting: the "more" row covers everything else
                    continue
                f.shown += 1
                self._push(stack, child)
                continue
            if f.path_child is not None and not f.path_done:
                # The current invocation lies beyond a cap: draw its branch anyway.
                f.path_done = True
                self._push(stack, f.path_child)
                continue
            stack.pop()
            if f.skipped_from is not None:
                rest = [c for c in f.children[f.skipped_from :] if c is not f.path_child]
                if rest:
                    rows.append(
                        Row(
                            node=None,
                            depth=f.parent.depth + 1,
                            parent_id=f.parent.id,
                            # Offsets index the parent's full child list, so the endpoint can slice it.
                            offset=f.offset
                            + f.skipped_from
                            + _excluded_before(f.parent, f.exclude, f.offset, f.skipped_from),
                            exclude=f.path_child.id if f.path_child is not None else f.exclude,
                            more_children=len(rest),
                            more_nodes=sum(c.size for c in rest),
                        )
                    )
            if f.row is not None and len(rows) > f.before:
                f.row.has_rendered_children = True
                rows[-1].closes += 1


def _excluded_before(parent: Node, exclude: str | None, offset: int, skipped_from: int) -> int:
    """1 when the excluded child sits among the children already emitted (the list was shortened by it)."""
    if exclude is None:
        return 0
    for i, child in enumerate(parent.children[offset:]):
        if child.id == exclude:
            return 1 if i <= skipped_from else 0
    return 0
