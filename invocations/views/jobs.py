"""Bulk jobs: the dry run of a bulk action over the list's current filter, starting
and stopping a job (operators, POST + CSRF), a job's page and the jobs' history."""

from __future__ import annotations

import secrets

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, HttpResponseRedirect, QueryDict
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST, require_safe

from invocations.mirror.actions import TYPED_CONFIRMATION, Action
from invocations.operations import bulk
from invocations.operations.roles import user_can_operate
from invocations.operations.services import NotAllowed
from invocations.reads.filters import InvocationFilterForm, InvocationFilters
from invocations.reads.selectors import jobs as selectors
from invocations.records.models import ItemState
from invocations.views.errors import bad_request, forbidden, form_problems, not_found
from invocations.views.http import HtmxHttpRequest

# A job id beyond PostgreSQL's bigint is no job of ours (and would overflow the query).
MAX_JOB_ID = 2**63 - 1


def _bulk_request(request: HtmxHttpRequest, data: QueryDict) -> tuple[Action, InvocationFilters] | HttpResponse:
    """The action and the list filter a dry run or a start names, or the 400 saying what is wrong."""
    raw = data.get("action") or ""
    try:
        action = Action(raw)
    except ValueError:
        choices = ", ".join(a.value for a in Action)
        return bad_request(request, "Bad bulk action", f"{raw or 'no action'!r} is not one of: {choices}")
    query = data.get("filter", "")
    if len(query) > 10_000:
        return bad_request(request, "Bad filter", "the filter is too long")
    form = InvocationFilterForm(QueryDict(query))
    if not form.is_valid():
        return bad_request(request, "Bad filter", form_problems(form))
    return action, InvocationFilters.from_form(form.cleaned_data)


@require_safe
@login_required
def job_preview(request: HtmxHttpRequest) -> HttpResponse:
    """The dry run: what the action would touch under the list's filter, and the form that starts it."""
    if not user_can_operate(request.user):
        return forbidden(request, "Only operators can run bulk actions.")
    parsed = _bulk_request(request, request.GET)
    if isinstance(parsed, HttpResponse):
        return parsed
    action, filters = parsed
    context = {
        "preview": selectors.bulk_preview(filters=filters, action=action),
        "filters": filters,
        "filter_query": filters.query_string(sort=None),
        "needs_confirmation": action in TYPED_CONFIRMATION,
        "confirmation_word": bulk.confirmation_word(action),
        # One key per rendered form: a double submit finds the first job instead of starting two.
        "request_key": secrets.token_urlsafe(24),
    }
    template = "invocations/job_preview.html#preview" if request.htmx else "invocations/job_preview.html"
    return render(request, template, context)


@require_http_methods(["GET", "HEAD", "POST"])
@login_required
def jobs(request: HtmxHttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _job_start(request)
    raw_page = request.GET.get("page", "1")
    if not raw_page.isdigit() or len(raw_page) > 9:
        return bad_request(request, "Bad page", f"{raw_page!r} is not a page number")
    context = {"page": selectors.job_list(page=int(raw_page))}
    template = "invocations/jobs.html#jobs_table" if request.htmx else "invocations/jobs.html"
    return render(request, template, context)


def _job_start(request: HtmxHttpRequest) -> HttpResponse:
    if not user_can_operate(request.user):
        return forbidden(request, "Only operators can start bulk jobs.")
    parsed = _bulk_request(request, request.POST)
    if isinstance(parsed, HttpResponse):
        return parsed
    action, filters = parsed
    request_key = request.POST.get("request_key") or None
    try:
        job = bulk.bulk_start(
            user=request.user,  # type: ignore[arg-type]
            action=action,
            targets=selectors.bulk_targets(filters=filters, action=action),
            filter_query=filters.query_string(sort=None),
            filter_description=filters.describe(),
            typed_confirmation=request.POST.get("confirm", ""),
            request_key=request_key,
        )
    except NotAllowed as exc:
        return forbidden(request, str(exc))
    except bulk.ConfirmationRequired as exc:
        return bad_request(request, "Confirmation required", str(exc))
    except bulk.BadBulkRequest as exc:
        return bad_request(request, "Bad request", str(exc))
    url = reverse("invocations:job", args=[job.id])
    if request.htmx:
        response = HttpResponse(status=204)
        response["HX-Redirect"] = url
        return response
    return HttpResponseRedirect(url)


@require_safe
@login_required
def job_detail(request: HtmxHttpRequest, job_id: int) -> HttpResponse:
    job = selectors.job_get(job_id=job_id) if job_id <= MAX_JOB_ID else None
    if job is None:
        return not_found(request, "Unknown job", f"There is no bulk job {job_id}.")
    state = request.GET.get("state", "")
    if state and state not in ItemState.values:
        return bad_request(request, "Bad state", f"{state!r} is not one of: {', '.join(ItemState.values)}")
    raw_page = request.GET.get("page", "1")
    if not raw_page.isdigit() or len(raw_page) > 9:
        return bad_request(request, "Bad page", f"{raw_page!r} is not a page number")
    context = {
        "job": job,
        "items": selectors.job_items(job_id=job.id, state=state, page=int(raw_page)),
        "state": state,
        "states": ItemState.choices,
        "can_operate": user_can_operate(request.user),
    }
    template = "invocations/job.html#items" if request.htmx else "invocations/job.html"
    return render(request, template, context)


@require_POST
@login_required
def job_stop(request: HtmxHttpRequest, job_id: int) -> HttpResponse:
    if not user_can_operate(request.user):
        return forbidden(request, "Only operators can stop bulk jobs.")
    if job_id > MAX_JOB_ID:
        return not_found(request, "Unknown job", f"There is no bulk job {job_id}.")
    try:
        job = bulk.bulk_stop(user=request.user, job_id=job_id)  # type: ignore[arg-type]
    except bulk.UnknownJob:
        return not_found(request, "Unknown job", f"There is no bulk job {job_id}.")
    except NotAllowed as exc:
        return forbidden(request, str(exc))
    return HttpResponseRedirect(reverse("invocations:job", args=[job.id]))
