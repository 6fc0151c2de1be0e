"""The invocation detail page: header, payloads, journal, and the whole call tree of its root.

`detail_context()` builds everything the page and its partials (`header`,
`tree`, `journal`) need, so live updates can re-render a partial by name with
the same context the page used.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from invocations import restate, selectors, selectors_detail, trees
from invocations.models import Invocation, JournalEntry
from invocations.templatetags.dashboard import duration

PAYLOAD_CAP = 64 * 1024  # bytes of a payload shown; more is cut with a note
ENTRY_PAYLOAD_CAP = 4 * 1024  # per payload inside a journal entry's full view

# Crockford base32 ULID: what Restate's ingress generates for sends without a key.
ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


# ------------------------------------------------------------------ payloads


@dataclass(frozen=True)
class Payload:
    text: str
    kind: str  # "json", "text", "binary", "empty"
    size: int  # bytes
    truncated: bool = False


def _as_bytes(raw: Any) -> bytes | None:
    """Restate's entry_json carries payload bytes as a list of ints; accept a str too."""
    if isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
        return bytes(raw)
    if isinstance(raw, str):
        return raw.encode()
    return None


def format_payload(raw: Any, cap: int = PAYLOAD_CAP) -> Payload | None:
    """Pretty JSON when it parses, else text (escaped by the template), else a hex dump; capped."""
    data = _as_bytes(raw)
    if data is None:
        return None
    if not data:
        return Payload("", "empty", 0)
    size = len(data)
    if size <= cap:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None:
            try:
                return Payload(json.dumps(json.loads(text), indent=2, ensure_ascii=False), "json", size)
            except ValueError:
                return Payload(text, "text", size)
    # Too big to parse safely, or binary: show the head only.
    head = data[:cap]
    try:
        return Payload(head.decode("utf-8"), "text", size, truncated=size > cap)
    except UnicodeDecodeError as exc:
        if exc.start > 0 and size > cap:
            # A multi-byte character cut by the cap: the rest is text.
            return Payload(head[: exc.start].decode("utf-8"), "text", size, truncated=True)
    return Payload(head.hex(" ", 1)[: cap * 3], "binary", size, truncated=size > cap)


def input_payload(entry: JournalEntry | None) -> Payload | None:
    if entry is None or not isinstance(entry.entry, dict):
        return None
    return format_payload(entry.entry.get("Command", {}).get("Input", {}).get("payload"))


@dataclass(frozen=True)
class Output:
    success: Payload | None
    failure: str | None


def output_result(entry: JournalEntry | None) -> Output | None:
    if entry is None or not isinstance(entry.entry, dict):
        return None
    result = entry.entry.get("Command", {}).get("Output", {}).get("result")
    if isinstance(result, dict) and "Success" in result:
        return Output(format_payload(result["Success"]), None)
    if isinstance(result, dict) and "Failure" in result:
        failure = result["Failure"]
        if isinstance(failure, dict):
            return Output(None, f"[{failure.get('code', '?')}] {failure.get('message', '')}".strip())
        return Output(None, str(failure))
    return Output(None, None) if result is None else Output(format_payload(json.dumps(result)), None)


def readable_entry(value: Any, key: str = "") -> Any:
    """The entry JSON with byte arrays decoded, for the journal's "full entry" view."""
    if isinstance(value, dict):
        return {k: readable_entry(v, k) for k, v in value.items()}
    if isinstance(value, list):
        if key in {"payload", "parameter", "value", "Success"} and (data := _as_bytes(value)) is not None:
            payload = format_payload(list(data), cap=ENTRY_PAYLOAD_CAP)
            if payload is None or payload.kind == "empty":
                return ""
            suffix = f" … ({payload.size} bytes, truncated)" if payload.truncated else ""
            if payload.kind == "json":
                return json.loads(payload.text)
            return payload.text + suffix
        if key in {"span_id", "trace_id"} and (data := _as_bytes(value)) is not None:
            return data.hex()
        return [readable_entry(v) for v in value]
    return value


# ------------------------------------------------------------------ journal


def _target_text(target: Any) -> str:
    """{"VirtualObject": {"name", "key", "handler"}} -> "Name/key/handler"."""
    if not isinstance(target, dict) or not target:
        return ""
    ty, t = next(iter(target.items()))
    if not isinstance(t, dict):
        return str(ty)
    key = t.get("key")
    return f"{t.get('name', '?')}{'/' + str(key) if key is not None else ''}/{t.get('handler', '?')}"


def _ms_to_dt(ms: Any) -> datetime | None:
    if isinstance(ms, int) and ms > 0:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)
    return None


@dataclass(frozen=True)
class JournalRow:
    entry: JournalEntry
    summary: str
    link_id: str | None = None  # an invocation this entry points at
    at: datetime | None = None  # a fire / wake-up time
    at_label: str = ""
    full: str = ""  # pretty JSON of the whole entry, byte arrays decoded


def journal_row(entry: JournalEntry) -> JournalRow:
    lite = entry.entry_lite if isinstance(entry.entry_lite, dict) else {}
    body: dict = {}
    for section in ("Command", "Notification"):
        if isinstance(lite.get(section), dict):
            inner = lite[section]
            body = next(iter(inner.values()), {}) if section == "Command" else inner
            break
    body = body if isinstance(body, dict) else {}
    summary, link_id, at, at_label = "", None, None, ""
    kind = entry.entry_type.split(": ", 1)[-1]
    if kind in ("Call", "OneWayCall") and entry.entry_type.startswith("Command"):
        summary = _target_text(body.get("invocation_target"))
        link_id = body.get("invocation_id")
        if (at := _ms_to_dt(body.get("invoke_time"))) is not None:
            at_label = "delayed send, fires"
        elif kind == "OneWayCall":
            summary += " (one-way send)"
    elif kind == "Sleep" and entry.entry_type.startswith("Command"):
        at, at_label = _ms_to_dt(body.get("wake_up_time")), "wakes up"
    elif "key" in body:
        summary = f"key {body['key']!r}"
    elif kind == "Output":
        summary = str(body.get("result", ""))
    elif entry.entry_type.startswith("Notification"):
        summary = str(body.get("result", ""))
        if isinstance(body.get("id"), dict) and "CompletionId" in body["id"]:
            summary = f"completion {body['id']['CompletionId']}: {summary}"
        full = entry.entry or {}
        call_id = full.get("Notification", {}).get("Completion", {}).get("CallInvocationId", {})
        if isinstance(call_id, dict) and call_id.get("invocation_id"):
            link_id = call_id["invocation_id"]
    full_text = json.dumps(readable_entry(entry.entry), indent=2, ensure_ascii=False) if entry.entry else ""
    return JournalRow(entry, summary, link_id, at, at_label, full_text)


# ------------------------------------------------------------------ header facts


def idempotency_origin(inv: Invocation) -> str | None:
    """Whether the user set the key: the ingress makes up a ULID for sends that carry none."""
    if not inv.idempotency_key:
        return None
    if inv.invoked_by == "ingress" and ULID_RE.match(inv.idempotency_key):
        return "auto-generated by the ingress (a ULID; Restate adds one to every ingress send without a key)"
    return "set by the caller"


# ------------------------------------------------------------------ waterfall rows

# Rows are built here rather than in a template loop: 2,000 rows through the
# template engine took ~0.5 s, string building takes a few ms (measured, see
# tests/test_detail_page.py::test_ten_thousand_nodes_render_bounded). Every
# value from the database goes through escape().


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat()


def _utc(dt: datetime, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return dt.astimezone(UTC).strftime(fmt)


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
    if n.retry_count:
        label.append(f' <span class="retries">{n.retry_count} retries</span>')
    if n.completion_result == "failure":
        label.append(f' <span class="failure">{escape(n.completion_failure or "failed")}</span>')
    label.append(
        f' <code class="id" title="click to select">{nid}</code>'
        f'<a class="anchor" href="#node-{nid}" title="Link to this row">#</a>'
    )
    fires = n.fires_at
    if n.status == "scheduled" and fires is not None:
        when = (
            f'fires <time class="countdown" datetime="{_iso(fires)}" title="{_utc(fires)} UTC">'
            f"{_utc(fires, '%Y-%m-%d %H:%M')} UTC</time>"
        )
    elif n.completed_at is not None:
        when = duration(n.duration)
    elif n.phantom:
        when = "not in our copy yet"
    else:
        when = f"{escape(n.status)} since {_utc(n.created_at, '%H:%M:%S')}"
    opening = (
        f'<details open class="wf-sub" id="node-{nid}"><summary class="{classes}" style="--d:{r.depth}">'
        if r.has_rendered_children
        else f'<div id="node-{nid}" class="{classes}" style="--d:{r.depth}">'
    )
    return (
        f'{opening}<span class="wf-label">{"".join(label)}</span>'
        f'<span class="wf-track"><span class="bar" style="left:{r.left}%;width:{r.width}%"></span></span>'
        f'<span class="wf-when">{when}</span>{"</summary>" if r.has_rendered_children else "</div>"}{r.close_tags}'
    )


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


# ------------------------------------------------------------------ context

SERVICE_TYPE_LABELS = {"service": "Service", "virtual_object": "Virtual Object", "workflow": "Workflow"}


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


def detail_context(invocation_id: str) -> dict[str, Any]:
    """Everything the page and each partial need. Raises InvocationNotFound."""
    now = timezone.now()
    inv = selectors_detail.invocation_get(invocation_id)
    journal = selectors_detail.journal_get(inv.id)
    by_type = {e.entry_type: e for e in reversed(journal.entries)}
    input_entry = by_type.get("Command: Input") or (
        selectors_detail.journal_entry_get(inv.id, "Command: Input") if journal.truncated else None
    )
    output_entry = by_type.get("Command: Output") or (
        selectors_detail.journal_entry_get(inv.id, "Command: Output") if journal.truncated else None
    )
    parent = Invocation.objects.filter(id=inv.parent_id).only("id", "target").first() if inv.parent_id else None
    return {
        "inv": inv,
        "now": now,
        "deployment": selectors_detail.deployment_get(inv.pinned_deployment_id),
        "service_type_label": SERVICE_TYPE_LABELS.get(inv.service_type, inv.service_type),
        "idempotency_origin": idempotency_origin(inv),
        "parent": parent,
        "input": input_payload(input_entry),
        "output": output_result(output_entry),
        "journal": journal,
        "journal_rows": [journal_row(e) for e in journal.entries],
        "tree": tree_view(inv, now),
        "sync": selectors.sync_state_get(),
    }


# ------------------------------------------------------------------ views


def _bad_id(request: HttpRequest, exc: Exception) -> HttpResponse:
    return render(request, "error.html", {"title": "Not an invocation id", "message": str(exc)}, status=400)


def _not_found(request: HttpRequest, invocation_id: str) -> HttpResponse:
    message = (
        f"{invocation_id} is not in our copy of Restate. Either Restate purged it before the sync ever saw it, "
        "or the sync has not caught up yet (new invocations appear within a few seconds while it runs)."
    )
    return render(request, "error.html", {"title": "Invocation not found", "message": message}, status=404)


@login_required
def invocation_detail(request: HttpRequest, invocation_id: str) -> HttpResponse:
    try:
        restate.validate_invocation_id(invocation_id)
    except restate.InvalidInvocationId as exc:
        return _bad_id(request, exc)
    try:
        context = detail_context(invocation_id)
    except selectors_detail.InvocationNotFound:
        return _not_found(request, invocation_id)
    partial = request.GET.get("partial")
    if request.htmx and partial in {"header", "tree", "journal"}:
        return render(request, f"invocations/detail.html#{partial}", context)
    return render(request, "invocations/detail.html", context)


@login_required
def tree_children(request: HttpRequest, invocation_id: str) -> HttpResponse:
    """The rows behind a "show K more" link: children[offset:] of one node, bounded like the page."""
    try:
        restate.validate_invocation_id(invocation_id)
    except restate.InvalidInvocationId as exc:
        return _bad_id(request, exc)
    try:
        offset = max(int(request.GET.get("offset", "0")), 0)
    except ValueError:
        return render(
            request,
            "error.html",
            {"title": "Bad link", "message": f"offset {request.GET.get('offset')!r} is not a number"},
            status=400,
        )
    exclude = request.GET.get("exclude") or None
    try:
        inv = selectors_detail.invocation_get(invocation_id)
    except selectors_detail.InvocationNotFound:
        return _not_found(request, invocation_id)
    now = timezone.now()
    tree, _ = selectors_detail.tree_build(inv, now=now)
    rows = trees.flatten_children(tree, inv.id, now=now, offset=offset, exclude=exclude)
    node = tree.by_id[inv.id]
    context = {
        "inv": inv,
        "node": node,
        "rows_html": rows_html(rows),
        "offset": offset,
        "now": now,
        "tree": tree,
        "sync": selectors.sync_state_get(),
    }
    template = "invocations/tree_children.html#rows" if request.htmx else "invocations/tree_children.html"
    return render(request, template, context)
