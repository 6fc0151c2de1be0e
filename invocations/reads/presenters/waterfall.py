"""The call tree's waterfall rows: every value the row template prints, computed here,
so `templates/invocations/_waterfall.html` is a plain loop with no lookups or logic.

Rendered by the template engine, as all our HTML is, at a measured price: for the
2,002 rows of the 10,001-node tree in tests/test_detail_page.py the string builder
this replaced took 36 ms and the template takes 160-210 ms (best of 15, this
2-core machine under load), 4-6x slower. Kept because the rule keeps markup
reviewable in one language, the bar's markup sits in one partial for the waiting/
running geometry to come, and a live page no longer re-renders the tree per reader:
one render per sync step serves every reader of the tree (views.detail.invocation_live).
Going back would only mean building the same strings from these dataclasses.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.urls import reverse

from invocations.graph import attempts as ga
from invocations.graph import trees
from invocations.mirror.models import Invocation
from invocations.mirror.status import COMPLETION_FAILURE, InvocationStatus
from invocations.reads.presenters.attempts import SegmentView, segment_views, times_of
from invocations.reads.presenters.formatting import duration, iso_utc, utc_text
from invocations.reads.presenters.invocation import retries_label
from invocations.reads.selectors import detail as selectors_detail
from invocations.reads.selectors.spans import InvocationSpans, attempt_spans
from invocations.reads.selectors.waits import QueuePlace, queue_places

# "show more" expansions a live refresh re-applies, and the rows they may add: a
# reader who opened a few is served, a URL asking for hundreds is not.
MAX_EXPANSIONS = 20
MAX_EXPANDED_ROWS = 10 * trees.ROW_CAP


@dataclass(frozen=True, slots=True)
class Expansion:
    """A "show more" row the reader opened: children[offset:] of `parent_id`, less `exclude`."""

    parent_id: str
    offset: int
    exclude: str | None = None

    @property
    def key(self) -> str:
        return f"{self.parent_id}:{self.offset}:{self.exclude or ''}"

    @classmethod
    def parse(cls, raw: str) -> Expansion | None:
        parent_id, _, rest = raw.partition(":")
        offset, _, exclude = rest.partition(":")
        if not parent_id or not offset.isdigit() or len(offset) > 9:
            return None
        return cls(parent_id, int(offset), exclude or None)


@dataclass(frozen=True, slots=True)
class WaterfallRow:
    """One line of the waterfall (a node, or a "show K more" placeholder), ready to print."""

    depth: int
    closes: range  # one </details> per enclosing subtree that ends after this row
    more: bool = False
    # node rows
    id: str = ""
    classes: str = ""
    opens: bool = False  # heads a <details> holding its children's rows
    kind: str = ""  # how its parent reached it; "" on a top row (no marker)
    href: str = ""
    target: str = ""
    status: str = ""
    retries: str = ""  # "1 retry", "2 retries"; empty on a first attempt
    failure: str = ""
    fires_iso: str = ""  # a scheduled delayed send: when it fires (counted down by the page)
    fires_title: str = ""
    fires_text: str = ""
    when: str = ""  # otherwise: its duration, or how long it has been going
    # The bar, in percent of the axis: the time it waited (scheduled, queued), the time
    # it ran, and a note when it goes on past the axis (a delayed send not due yet).
    wait_left: float = 0.0
    wait_width: float = 0.0
    run_left: float = 0.0
    run_width: float = 0.0
    beyond: str = ""
    # With attempt spans kept: the bar split into its waits, each attempt's running time and
    # the gaps between attempts (backing off, suspended), on the same axis; empty otherwise.
    segments: tuple[SegmentView, ...] = ()
    # A queued call: its place in its object key's queue, linking to the key's page.
    queue_text: str = ""
    queue_href: str = ""
    # "show more" rows
    url: str = ""
    more_text: str = ""

    def __getitem__(self, name: str) -> Any:
        # The template engine tries `row[name]` before `getattr`; answering it here
        # saves an exception per printed value (a fifth of the render time).
        return getattr(self, name)


def _beyond_text(r: trees.Row) -> str:
    if not r.beyond:
        return ""
    if r.fires_in is not None:
        return f"fires in {duration(r.fires_in)}" if r.fires_in else "due now"
    return "still running" if r.run_width else "waiting"


def _queue_bits(place: QueuePlace | None) -> tuple[str, str]:
    """A queued row's place ("position 1 of 2, behind inv_...") and its key's page."""
    if place is None:
        return "", ""
    behind = f"behind {place.holder_id}" if place.holder_id else "nobody holds the lock: next to run"
    return (
        f"position {place.position} of {place.length}, {behind}",
        reverse("invocations:object", args=[place.service, place.key]),
    )


@dataclass(frozen=True, slots=True)
class Axis:
    start: datetime | None
    end: datetime | None
    now: datetime


def _segments(n: trees.Node, spans: InvocationSpans | None, axis: Axis) -> tuple[SegmentView, ...]:
    if spans is None or not spans.attempts or n.phantom:
        return ()
    plan = ga.plan(times_of(n), spans.attempts, now=axis.now, more=spans.more)
    return tuple(
        segment_views(
            plan, axis.start, axis.end, now=axis.now, failed=n.completion_result == COMPLETION_FAILURE, deployment=False
        )
    )


def _node_row(
    r: trees.Row, detail_url: str, place: QueuePlace | None = None, segments: tuple[SegmentView, ...] = ()
) -> WaterfallRow:
    n = r.node
    assert n is not None
    classes = f"wf-row status-{n.status} k-{n.kind}"
    for flag, name in (
        (r.current, "current"),
        (r.on_path, "on-path"),
        (n.phantom, "phantom"),
        (n.gone, "gone"),
        (n.completion_result == COMPLETION_FAILURE, "failed"),
    ):
        if flag:
            classes += " " + name
    fires = n.fires_at if n.status == InvocationStatus.SCHEDULED else None
    queue_text, queue_href = _queue_bits(place)
    if fires is not None:
        when = ""
    elif n.completed_at is not None:
        when = duration(n.duration)
    elif n.phantom:
        when = "not in our copy yet"
    else:
        when = f"{n.status} since {utc_text(n.created_at, '%H:%M:%S')}"
    return WaterfallRow(
        depth=r.depth,
        closes=range(r.closes),
        id=n.id,
        classes=classes,
        opens=r.has_rendered_children,
        kind=n.kind if r.depth else "",
        href=f"#node-{n.id}" if n.phantom else detail_url.replace("__ID__", n.id),
        target=n.target,
        status=n.status,
        retries=retries_label(n.retry_count),
        failure=(n.completion_failure or "failed") if n.completion_result == COMPLETION_FAILURE else "",
        fires_iso=iso_utc(fires) if fires else "",
        fires_title=utc_text(fires) if fires else "",
        fires_text=utc_text(fires, "%Y-%m-%d %H:%M") if fires else "",
        when=when,
        wait_left=r.wait_left,
        wait_width=r.wait_width,
        run_left=r.run_left,
        run_width=r.run_width,
        beyond=_beyond_text(r),
        segments=segments,
        queue_text=queue_text,
        queue_href=queue_href,
    )


def _more_row(r: trees.Row, children_url: str) -> WaterfallRow:
    url = children_url.replace("__ID__", r.parent_id or "") + f"?offset={r.offset}"
    if r.exclude:
        url += f"&exclude={r.exclude}"
    text = f"show {r.more_children} more"
    if r.more_nodes != r.more_children:
        text += f" ({r.more_nodes} invocations)"
    return WaterfallRow(depth=r.depth, closes=range(r.closes), more=True, url=url, more_text=text)


def waterfall_rows(rows: Iterable[trees.Row], axis: Axis) -> list[WaterfallRow]:
    # Reversed once with a placeholder: reverse() per row was a measurable share of 2,000 rows.
    detail_url = reverse("invocations:detail", args=["__ID__"])
    children_url = reverse("invocations:tree_children", args=["__ID__"])
    rows = list(rows)
    # Only queued rows can have a place: one indexed query for them, none for most trees.
    places = queue_places(
        invocation_ids=[r.node.id for r in rows if r.node is not None and r.node.status == InvocationStatus.PENDING]
    )
    # The attempt spans of every drawn row in one query (never one per row).
    spans = attempt_spans([r.node.id for r in rows if r.node is not None and not r.node.phantom])
    out = []
    for r in rows:
        if r.node is None:
            out.append(_more_row(r, children_url))
        else:
            segments = _segments(r.node, spans.get(r.node.id), axis) if spans else ()
            out.append(_node_row(r, detail_url, places.get(r.node.id), segments))
    return out


def expand(
    tree: trees.Tree, rows: list[trees.Row], expansions: Iterable[Expansion], *, now: datetime
) -> list[trees.Row]:
    """`rows` with the "show more" rows a reader opened replaced by what they stand for,
    as the children endpoint would have inserted them (nested expansions included)."""
    wanted = {(e.parent_id, e.offset, e.exclude) for e in list(expansions)[:MAX_EXPANSIONS]}
    if not wanted:
        return rows
    out: list[trees.Row] = []
    todo = list(reversed(rows))
    budget = MAX_EXPANDED_ROWS
    while todo:
        row = todo.pop()
        key = (row.parent_id or "", row.offset, row.exclude)
        if row.is_more and key in wanted and budget > 0:
            wanted.discard(key)
            children = trees.flatten_children(tree, key[0], now=now, offset=row.offset, exclude=row.exclude)
            if children:
                # The placeholder closed the subtrees around it; its last replacement row does now.
                children[-1].closes += row.closes
                budget -= len(children)
                todo.extend(reversed(children))
                continue
        out.append(row)
    return out


@dataclass(frozen=True)
class TreeView:
    rows: list[WaterfallRow]
    tree: trees.Tree
    path: list[trees.Node]  # root .. current: the breadcrumb
    missing_parent_id: str | None
    total: int  # nodes in the tree
    rendered: int  # node rows on the page


def tree_view(inv: Invocation, now: datetime, expansions: Iterable[Expansion] = ()) -> TreeView:
    tree, data = selectors_detail.tree_build(inv, now=now)
    rows = expand(tree, trees.flatten(tree, now=now, current_id=inv.id), expansions, now=now)
    return TreeView(
        rows=waterfall_rows(rows, Axis(tree.start, tree.end, now)),
        tree=tree,
        path=tree.path_to(inv.id),
        missing_parent_id=data.missing_parent_id,
        total=len(tree.by_id),
        rendered=sum(1 for r in rows if not r.is_more),
    )


def children_rows(inv: Invocation, *, offset: int, exclude: str | None, now: datetime) -> dict[str, Any]:
    """The context for the rows a "show K more" placeholder stands for."""
    tree, _ = selectors_detail.tree_build(inv, now=now)
    rows = trees.flatten_children(tree, inv.id, now=now, offset=offset, exclude=exclude)
    return {
        "inv": inv,
        "node": tree.by_id[inv.id],
        "rows": waterfall_rows(rows, Axis(tree.start, tree.end, now)),
        "offset": offset,
        "now": now,
        "tree": tree,
    }
