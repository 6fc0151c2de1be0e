"""Workflows: every workflow run by service and status, and one workflow id's page."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from invocations.reads.presenters.workflows import UnknownWorkflow, workflow_context, workflows_context
from invocations.reads.workflow_filters import WorkflowFilterForm
from invocations.views.errors import bad_request, form_problems, not_found
from invocations.views.http import HtmxHttpRequest


@require_safe
@login_required
def workflow_list(request: HtmxHttpRequest) -> HttpResponse:
    form = WorkflowFilterForm(request.GET)
    if not form.is_valid():
        return bad_request(request, "Bad filter", form_problems(form))
    context = workflows_context(
        service=form.cleaned_data["service"], status=form.cleaned_data["status"], before=form.cleaned_data["before"]
    )
    template = "invocations/workflows.html#results" if request.htmx else "invocations/workflows.html"
    return render(request, template, context)


@require_safe
@login_required
def workflow_detail(request: HtmxHttpRequest, service: str, workflow_id: str) -> HttpResponse:
    if "\x00" in workflow_id:
        return bad_request(request, "Bad workflow id", "An id cannot contain a NUL character: Restate has no such id.")
    try:
        context = workflow_context(service=service, workflow_id=workflow_id)
    except UnknownWorkflow as exc:
        return not_found(request, "No such workflow", str(exc))
    if request.htmx and request.GET.get("partial") == "state":
        return render(request, "invocations/object.html#state", context)
    return render(request, "invocations/workflow.html", context)
