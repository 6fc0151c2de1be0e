"""Virtual object queues: every key with a lock holder or a queue, and one key's page."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from invocations.reads.object_filters import ObjectFilterForm
from invocations.reads.presenters.objects import UnknownObjectService, object_context, objects_context
from invocations.views.errors import bad_request, form_problems, not_found
from invocations.views.http import HtmxHttpRequest


@require_safe
@login_required
def object_list(request: HtmxHttpRequest) -> HttpResponse:
    form = ObjectFilterForm(request.GET)
    if not form.is_valid():
        return bad_request(request, "Bad filter", form_problems(form))
    context = objects_context(service=form.cleaned_data["service"], page=form.page_number())
    template = "invocations/objects.html#results" if request.htmx else "invocations/objects.html"
    return render(request, template, context)


@require_safe
@login_required
def object_detail(request: HtmxHttpRequest, service: str, key: str) -> HttpResponse:
    if "\x00" in key:
        return bad_request(request, "Bad object key", "A key cannot contain a NUL character: Restate has no such key.")
    try:
        context = object_context(service=service, key=key)
    except UnknownObjectService as exc:
        return not_found(request, "No such virtual object", str(exc))
    if request.htmx and request.GET.get("partial") == "state":
        return render(request, "invocations/object.html#state", context)
    return render(request, "invocations/object.html", context)
