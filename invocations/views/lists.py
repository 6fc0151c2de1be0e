"""The invocation list: every filter in the URL, so a view is a shareable link."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.http import require_safe

from invocations.reads.filters import InvocationFilterForm, InvocationFilters, without_empty
from invocations.reads.presenters.invocation_list import BadPageLink, list_context, outcome_context
from invocations.views.errors import bad_request, form_problems
from invocations.views.http import HtmxHttpRequest


@require_safe
@login_required
def invocation_list(request: HtmxHttpRequest) -> HttpResponse:
    # Without JavaScript the filter form sends every field, set or not; the
    # browser's hook drops them before htmx sends, this catches the rest.
    if not request.htmx and (clean := without_empty(request.GET)) is not None:
        return HttpResponseRedirect(f"{request.path}?{clean}" if clean else request.path)
    form = InvocationFilterForm(request.GET)
    if not form.is_valid():
        return bad_request(request, "Bad filter", form_problems(form))
    filters = InvocationFilters.from_form(form.cleaned_data)
    if request.htmx and request.GET.get("partial") == "outcomes":
        return render(request, "invocations/list.html#outcome_chips", outcome_context(filters=filters))
    try:
        context = list_context(filters=filters, after_raw=request.GET.get("after"))
    except BadPageLink as exc:
        return bad_request(request, "Bad page link", str(exc))
    context["form"] = form
    template = "invocations/list.html#results" if request.htmx else "invocations/list.html"
    return render(request, template, context)
