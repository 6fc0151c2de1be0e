"""/stuck/: every unfinished invocation grouped by why it is not done (the page an
operator opens first during an incident)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from invocations.reads.presenters.stuck import stuck_context
from invocations.views.http import HtmxHttpRequest


@require_safe
@login_required
def stuck(request: HtmxHttpRequest) -> HttpResponse:
    template = "invocations/stuck.html#groups" if request.htmx else "invocations/stuck.html"
    return render(request, template, stuck_context())
