"""/deadlocks/: the cycles the detector found in our copy, live; breaking one is the
ordinary cancel action (invocations.views.actions), posted from the page."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_safe

from invocations.reads.presenters.deadlocks import deadlocks_context
from invocations.views.http import HtmxHttpRequest


@require_safe
@login_required
def deadlocks(request: HtmxHttpRequest) -> HttpResponse:
    context = deadlocks_context(now=timezone.now())
    template = "invocations/deadlocks.html#deadlocks_list" if request.htmx else "invocations/deadlocks.html"
    return render(request, template, context)
