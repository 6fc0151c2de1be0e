"""The invocation detail page and the "show more" rows of its call tree."""

from __future__ import annotations

import time

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_safe

from invocations import restate
from invocations.operations.roles import user_can_operate
from invocations.reads.presenters.detail import detail_context, detail_live_html
from invocations.reads.presenters.waterfall import MAX_EXPANSIONS, Expansion, children_rows
from invocations.reads.selectors import detail as selectors_detail
from invocations.views.errors import bad_request, not_found
from invocations.views.http import HtmxHttpRequest

PARTIALS = {"header", "attempts", "tree", "journal"}


def _not_found(request: HttpRequest, invocation_id: str) -> HttpResponse:
    return not_found(
        request,
        "Invocation not found",
        f"{invocation_id} is not in our copy of Restate. Either Restate purged it before the sync ever saw it, "
        "or the sync has not caught up yet (new invocations appear within a few seconds while it runs).",
    )


@require_safe
@login_required
def invocation_detail(request: HtmxHttpRequest, invocation_id: str) -> HttpResponse:
    try:
        restate.validate_invocation_id(invocation_id)
    except restate.InvalidInvocationId as exc:
        return bad_request(request, "Not an invocation id", str(exc))
    try:
        context = detail_context(invocation_id)
    except selectors_detail.InvocationNotFound:
        return _not_found(request, invocation_id)
    partial = request.GET.get("partial")
    if request.htmx and partial in PARTIALS:
        return render(request, f"invocations/detail.html#{partial}", context)
    return render(request, "invocations/detail.html", context)


@require_safe
@login_required
def tree_children(request: HtmxHttpRequest, invocation_id: str) -> HttpResponse:
    """The rows behind a "show K more" link: children[offset:] of one node, bounded like the page."""
    try:
        restate.validate_invocation_id(invocation_id)
    except restate.InvalidInvocationId as exc:
        return bad_request(request, "Not an invocation id", str(exc))
    raw_offset = request.GET.get("offset", "0")
    if not raw_offset.isdigit() or len(raw_offset) > 9:
        return bad_request(request, "Bad link", f"offset {raw_offset!r} is not a whole number")
    exclude = request.GET.get("exclude") or None
    try:
        inv = selectors_detail.invocation_get(invocation_id)
    except selectors_detail.InvocationNotFound:
        return _not_found(request, invocation_id)
    context = children_rows(inv, offset=int(raw_offset), exclude=exclude, now=timezone.now())
    template = "invocations/tree_children.html#rows" if request.htmx else "invocations/tree_children.html"
    return render(request, template, context)


@require_safe
@login_required
def invocation_live(request: HttpRequest, invocation_id: str) -> HttpResponse:
    """The header and the call tree as out-of-band swaps: what a detail page fetches when
    its socket says the tree changed (`t`: when that was announced, epoch ms). `expand`
    (parent:offset:exclude, repeated) re-opens the "show more" rows the reader opened."""
    try:
        restate.validate_invocation_id(invocation_id)
    except restate.InvalidInvocationId as exc:
        return bad_request(request, "Not an invocation id", str(exc))
    now = time.time()
    raw_t = request.GET.get("t", "")
    # Never later than now: a made-up future time must not defeat the sharing.
    fresh_after = min(int(raw_t) / 1000, now) if raw_t.isdigit() and len(raw_t) <= 15 else now - 1.0
    expansions = [
        e
        for e in (Expansion.parse(raw) for raw in request.GET.getlist("expand")[:MAX_EXPANSIONS])
        if e is not None and restate.INVOCATION_ID_RE.match(e.parent_id)
    ]
    try:
        html = detail_live_html(
            invocation_id,
            expansions=expansions,
            fresh_after=fresh_after,
            can_operate=user_can_operate(request.user),
        )
    except selectors_detail.InvocationNotFound:
        return _not_found(request, invocation_id)
    return HttpResponse(html)
