"""Attach: start or join the shared wait for an invocation's result, and show it."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from invocations import restate
from invocations.operations import attach as attach_service
from invocations.reads.presenters.attach import attach_panel_for
from invocations.views.errors import bad_request, forbidden
from invocations.views.http import HtmxHttpRequest


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def invocation_attach(request: HtmxHttpRequest, invocation_id: str) -> HttpResponse:
    """POST starts or joins the wait (viewers and operators alike); GET shows where it is.
    htmx gets the panel; without JavaScript a POST redirects (a reload must not re-post)."""
    try:
        restate.validate_invocation_id(invocation_id)
    except restate.InvalidInvocationId as exc:
        return bad_request(request, "Not an invocation id", str(exc))
    if request.method == "POST":
        try:
            attach_service.attach_request(user=request.user, invocation_id=invocation_id)
        except attach_service.NotAllowed as exc:
            return forbidden(request, str(exc))
    panel = attach_panel_for(invocation_id=invocation_id)
    if request.htmx:
        return render(request, "invocations/_attach.html", {"panel": panel})
    if request.method == "POST":
        if panel.in_copy:
            return HttpResponseRedirect(reverse("invocations:detail", args=[invocation_id]) + "#inv-attach")
        return HttpResponseRedirect(reverse("invocations:attach", args=[invocation_id]))
    return render(request, "invocations/attach.html", {"panel": panel})
