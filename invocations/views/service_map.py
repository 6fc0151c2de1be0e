"""The service map page: handlers and who calls whom, over a chosen window."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_safe

from invocations.reads.presenters.service_map import WINDOWS, UnknownWindow, service_map_context
from invocations.views.errors import bad_request
from invocations.views.http import HtmxHttpRequest


@require_safe
@login_required
def service_map(request: HtmxHttpRequest) -> HttpResponse:
    try:
        context = service_map_context(window_key=request.GET.get("window"), now=timezone.now())
    except UnknownWindow as exc:
        valid = ", ".join(WINDOWS)
        return bad_request(
            request, "Unknown window", f"window={exc.args[0]!r} is not one of {valid} (hour, day, week)."
        )
    template = "invocations/service_map.html#map" if request.htmx else "invocations/service_map.html"
    return render(request, template, context)
