"""The call tree's waterfall rows, ready to insert into the detail page."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.urls import reverse
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from invocations.graph import trees
from invocations.mirror.models import Invocation
from invocations.reads.presenters.formatting import duration, iso_utc, utc_text
from invocations.reads.presenters.invocation import retries_label
from invocations.reads.selectors import detail as selectors_detail

# Rows are built here rather than in a template loop: 2,000 rows through the
# template engine took ~0.5 s, string building takes a few ms (measured, see
# tests/test_detail_page.py::test_ten_thousand_nodes_render_bounded). Every
# value from the database goes through escape().


def _node_row_html(r: trees.Row, detail_url: str) -> str:
    n = r.node
    assert n is not None
    nid = escape(n.id)
    classes = f"wf-row status-{escape(n.status)} k-{escape(n.kind)}"
    if r.current:
        classes += " current"
    if r.on_path:
        classes += " on-path"
    if n.phantom:
        classes += " phantom"
    if n.gone:
        classes += " gone"
    if n.completion_result == "failure":
        classes += " failed"
    href = f"#node-{nid}" if n.phantom else detail_url.replace("__ID__", nid)
    label = [f'<span class="kind kind-{escape(n.kind)}"></span>' if r.depth else ""]
    label.append(f'<a href="{href}">{escape(n.target)}</a> <span class="status">{escape(n.status)}</span>')
    if retried := retries_label(n.retry_count):
        label.append(f' <span class="retries">{retried}</span>')
    if n.completion_result == "failure":
        label.append(f' <span class="failure">{escape(n.completion_failure or "failed")}</span>')
    label.append(
        f' <code class="id" title="click to select">{nid}</code>'
        f'<a class="anchor" href="#node-{nid}" title="Link to this row">#</a>'
    )
    fires = n.fires_at
    if n.status == "scheduled" and fires is not None:
        when = (
            f'fires <time class="countdown" datetime="{iso_utc(fires)}" title="{utc_text(fires)} UTC">'
            f"{utc_text(fires, '%Y-%m-%d %H:%M')} UTC</time>"
        )
    elif n.completed_at is not None:
        when = duration(n.duration)
    elif n.phantom:
        when = "not in our copy yet"
    else:
        when = f"{escape(n.status)} since {utc_text(n.created_at, '%H:%M:%S')}"
    opening = (
        f'<details open class="wf-sub" id="node-{nid}"><summary class="{classes}" style="--d:{r.depth}">'
        if r.has_rendered_children
        else f'<div id="node-{nid}" class="{classes}" style="--d:{r.depth}">'
    )
    return (
        f'{opening}<span class="wf-label">{"".join(label)}</span>'
        f'<span class="wf-track">{_bar_html(r)}</span>'
        f'<span class="wf-when">{when}</span>{"</summary>" if r.has_rendered_children else "</div>"}{r.close_tags}'
    )


def _bar_html(r: trees.Row) -> str:
    """The time it waited (scheduled, queued), the time it ran, and a marker when it goes on past the axis."""
    parts = []
    if r.wait_width:
        parts.append(f'<span class="wait" style="left:{r.wait_left}%;width:{r.wait_width}%"></span>')
    if r.run_width:
        parts.append(f'<span class="bar" style="left:{r.run_left}%;width:{r.run_width}%"></span>')
    if r.beyond:
        if r.fires_in is not None:
            text = f"fires in {duration(r.fires_in)}" if r.fires_in else "due now"
        else:
            text = "still running" if r.run_width else "waiting"
        parts.append(f'<span class="beyond" title="goes on past the end of the axis">{text} →</span>')
    return "".join(parts)


def _more_row_html(r: trees.Row, children_url: str) -> str:
    url = children_url.replace("__ID__", escape(r.parent_id or "")) + f"?offset={r.offset}"
    if r.exclude:
        url += f"&amp;exclude={escape(r.exclude)}"
    text = f"show {r.more_children} more"
    if r.more_nodes != r.more_children:
        text += f" ({r.more_nodes} invocations)"
    return (
        f'<div class="wf-row more-row" style="--d:{r.depth}"><span class="wf-label">'
        f'<a class="more-link" href="{url}" hx-get="{url}" hx-target="closest .more-row" hx-swap="outerHTML">{text}</a>'
        f'<span class="loading"> loading…</span></span></div>{r.close_tags}'
    )


def rows_html(rows: list[trees.Row]) -> SafeString:
    detail_url = reverse("invocations:detail", args=["__ID__"])
    children_url = reverse("invocations:tree_children", args=["__ID__"])
    parts = [_more_row_html(r, children_url) if r.is_more else _node_row_html(r, detail_url) for r in rows]
    # Safe: every value interpolated above went through escape() or is a number/constant.
    return mark_safe("".join(parts))


@dataclass(frozen=True)
class TreeView:
    rows: list[trees.Row]
    tree: trees.Tree
    path: list[trees.Node]  # root .. current: the breadcrumb
    missing_parent_id: str | None
    total: int  # nodes in the tree
    rendered: int  # node rows on the page
    html: SafeString  # the rows, ready to insert


def tree_view(inv: Invocation, now: datetime) -> TreeView:
    tree, data = selectors_detail.tree_build(inv, now=now)
    rows = trees.flatten(tree, now=now, current_id=inv.id)
    return TreeView(
        rows=rows,
        tree=tree,
        path=tree.path_to(inv.id),
        missing_parent_id=data.missing_parent_id,
        total=len(tree.by_id),
        rendered=sum(1 for r in rows if not r.is_more),
        html=rows_html(rows),
    )


def children_rows(inv: Invocation, *, offset: int, exclude: str | None, now: datetime) -> dict:
    """The context for the rows a "show K more" placeholder stands for."""
    tree, _ = selectors_detail.tree_build(inv, now=now)
    rows = trees.flatten_children(tree, inv.id, now=now, offset=offset, exclude=exclude)
    return {
        "inv": inv,
        "node": tree.by_id[inv.id],
        "rows_html": rows_html(rows),
        "offset": offset,
        "now": now,
        "tree": tree,
    }
