"""/delayed/: every pending delayed message in fire order, with the chart of upcoming fires."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.http import require_safe

from invocations.reads.delayed_filters import DelayedFilterForm, DelayedFilters
from invocations.reads.filters import without_empty
from invocations.reads.presenters.delayed import delayed_context
from invocations.views.errors import bad_request, form_problems
from invocations.views.http import HtmxHttpRequest


@require_safe
@login_required
def delayed_list(request: HtmxHttpRequest) -> HttpResponse:
    # Without JavaScript the filter form sends every field, set or not: the URL carries only what is set.
    if not request.htmx and (clean := without_empty(request.GET)) is not None:
        return HttpResponseRedirect(f"{request.path}?{clean}" if clean else request.path)
    form = DelayedFilterForm(request.GET)
    if not form.is_valid():
        return bad_request(request, "Bad filter", form_problems(form))
    context = delayed_context(filters=DelayedFilters.from_form(form.cleaned_data))
    template = "invocations/delayed.html#results" if request.htmx else "invocations/delayed.html"
    return render(request, template, context)
