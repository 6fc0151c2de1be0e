"""Reads for bulk jobs: what a bulk action over a list filter would touch (the dry
run, and the query its job snapshots), the jobs' history, one job and its items."""

from __future__ import annotations

from dataclasses import dataclass

from django.core.paginator import Page, Paginator
from django.db.models import Case, IntegerField, QuerySet, Value, When

from invocations.mirror.actions import ALLOWED_STATUSES, Action
from invocations.mirror.models import Invocation
from invocations.reads.filters import InvocationFilters
from invocations.records.models import BulkJob, BulkJobItem, ItemState

SAMPLE_SIZE = 10
JOBS_PAGE_SIZE = 50
ITEMS_PAGE_SIZE = 100


def bulk_targets(*, filters: InvocationFilters, action: Action) -> QuerySet[Invocation]:
    """The invocations of the list filter that `action` may touch, by our copy's status.

    The worker checks each again in Restate before sending: our copy can be a step behind.
    Rows marked gone from Restate are left out: Restate no longer holds them (a cancelled
    delayed message, for one, is dropped at once and keeps its `scheduled` status here).
    """
    qs = Invocation.objects.filter(
        filters.q(), status__in=[s.value for s in ALLOWED_STATUSES[action]], gone_from_restate_at__isnull=True
    )
    if action is Action.RESTART_AS_NEW:
        qs = qs.exclude(service_type="workflow")  # Restate answers 422: workflows cannot restart
    return qs.order_by()


@dataclass(frozen=True)
class BulkPreview:
    action: Action
    count: int
    matching: int  # everything the filter matches, allowed or not
    sample: list[Invocation]


def bulk_preview(*, filters: InvocationFilters, action: Action) -> BulkPreview:
    """The dry run: how many invocations the job would act on, and the first few of them."""
    targets = bulk_targets(filters=filters, action=action)
    return BulkPreview(
        action=action,
        count=targets.count(),
        matching=Invocation.objects.filter(filters.q()).count(),
        sample=list(targets.order_by("-created_at", "-id")[:SAMPLE_SIZE]),
    )


def job_list(*, page: int = 1) -> Page:
    """Past and running jobs, newest first."""
    return Paginator(BulkJob.objects.order_by("-created_at", "-id"), JOBS_PAGE_SIZE).get_page(page)


def job_get(*, job_id: int) -> BulkJob | None:
    return BulkJob.objects.filter(id=job_id).first()


# Failures first: they are what the reader came for; then what is still open, then the rest.
_ITEM_ORDER = Case(
    When(state=ItemState.FAILED, then=Value(0)),
    When(state=ItemState.SENT, then=Value(1)),
    When(state=ItemState.PENDING, then=Value(2)),
    When(state=ItemState.SKIPPED, then=Value(3)),
    default=Value(4),
    output_field=IntegerField(),
)


def job_items(*, job_id: int, state: str = "", page: int = 1) -> Page:
    """One page of a job's per-invocation results, failures first, optionally of one state."""
    items = BulkJobItem.objects.filter(job_id=job_id)
    if state:
        items = items.filter(state=state)
    ordered = items.annotate(rank=_ITEM_ORDER).order_by("rank", "id")
    return Paginator(ordered, ITEMS_PAGE_SIZE).get_page(page)
