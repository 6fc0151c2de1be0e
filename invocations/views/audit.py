"""The audit log: who did what to which invocations, and what Restate answered."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from invocations.reads.audit_filters import AuditFilterForm
from invocations.reads.presenters.audit import audit_context
from invocations.views.errors import bad_request, form_problems
from invocations.views.http import HtmxHttpRequest


@require_safe
@login_required
def audit_log(request: HtmxHttpRequest) -> HttpResponse:
    form = AuditFilterForm(request.GET)
    if not form.is_valid():
        return bad_request(request, "Bad audit filter", form_problems(form))
    query = {name: request.GET.get(name, "") for name in form.fields}
    context = audit_context(filters=form.filters(), query=query, before_id=form.cleaned_data.get("before"))
    context["form"] = form
    template = "invocations/audit.html#entries" if request.htmx else "invocations/audit.html"
    return render(request, template, context)
