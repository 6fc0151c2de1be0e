"""Reads for the workflow pages: every workflow run by service and status, and one
workflow id's run, the other handlers invoked on it (its interactions), its durable
promises (our copy of `sys_promise`). A workflow's state is read from Restate itself,
like an object key's (`selectors.objects.object_state_read`: the `state` table is
keyed by service and key for both).

A workflow run is the invocation of a workflow service's main handler ("run" in every
SDK); Restate starts it once per workflow id, and the workflow's other handlers can be
called on that id while the run goes on and for its completion retention after it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import Count, Q, QuerySet

from invocations.mirror.models import Invocation, Service, WorkflowPromise
from invocations.reads.selectors.invocations import Cursor
from invocations.restate import WORKFLOW_MAIN_HANDLER

WORKFLOW = "workflow"  # Restate's sys_service.ty / sys_invocation.target_service_ty
RUNS_PAGE_SIZE = 50
INTERACTIONS_CAP = 200  # interactions drawn on a workflow's page (the latest, in time order)
PROMISES_CAP = 200  # promises drawn on a workflow's page (by name); the rest are counted
EARLIER_RUNS_CAP = 10  # runs of the same id our copy kept from before an earlier retention ended


def workflow_runs() -> QuerySet[Invocation]:
    """Every workflow run in our copy. These two equalities are the condition of the
    wf_run_created_idx and wf_run_status_idx partial indexes: keep them as they are."""
    return Invocation.objects.filter(service_type=WORKFLOW, handler_name=WORKFLOW_MAIN_HANDLER)


def workflow_services() -> list[str]:
    """Names for the service filter: the workflow services of Restate's catalog."""
    return sorted(Service.objects.filter(service_type=WORKFLOW).values_list("name", flat=True))


# ---------------------------------------------------------------- /workflows/


@dataclass(frozen=True)
class RunsPage:
    rows: list[Invocation]
    next_cursor: Cursor | None


def workflow_runs_page(
    *, service: str = "", status: str = "", before: Cursor | None = None, limit: int = RUNS_PAGE_SIZE
) -> RunsPage:
    """Workflow runs newest first, keyset-paged on (created_at, id): a page deep in 100k
    runs costs what the first does. Indexes: wf_run_created_idx (no filter, or a status
    common enough to fill a page soon), wf_run_status_idx (a status, with or without a
    service), inv_target_created_idx (a service alone: service_name, handler_name, created_at)."""
    runs = workflow_runs()
    if service:
        runs = runs.filter(service_name=service)
    if status:
        runs = runs.filter(status=status)
    if before is not None:
        # The plain range first lets PostgreSQL start the index scan at the cursor (see
        # selectors.invocations.invocation_list: with only the OR it scans from the top).
        runs = runs.filter(created_at__lte=before.value).filter(
            Q(created_at__lt=before.value) | Q(created_at=before.value, id__lt=before.id)
        )
    rows = list(runs.order_by("-created_at", "-id")[: limit + 1])
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = Cursor(rows[-1].created_at, rows[-1].id)
    return RunsPage(rows=rows, next_cursor=next_cursor)


def workflow_run_status_counts(*, service: str = "") -> dict[str, int]:
    """Runs per status under the service filter (the status chips count every status,
    whichever is chosen). An index-only scan of wf_run_status_idx: 100k runs in tens of ms."""
    runs = workflow_runs()
    if service:
        runs = runs.filter(service_name=service)
    return dict(runs.values_list("status").annotate(n=Count("*")).order_by())


def workflow_runs_among(*, ids: Iterable[str]) -> set[str]:
    """Those of `ids` (what a sync step changed) that are workflow runs, by primary key."""
    wanted = list(ids)
    if not wanted:
        return set()
    return set(workflow_runs().filter(id__in=wanted).values_list("id", flat=True))


# ---------------------------------------------------------------- one workflow id


@dataclass(frozen=True)
class Workflow:
    service: str
    workflow_id: str
    run: Invocation | None  # the latest run in our copy; None: no run (yet), only interactions
    earlier_runs: list[Invocation]  # runs of the same id before the latest one (newest first)
    interactions: list[Invocation]  # the latest INTERACTIONS_CAP other handlers' invocations, oldest first
    interactions_total: int
    promises: list[WorkflowPromise]  # by name
    promises_total: int

    @property
    def known(self) -> bool:
        """Our copy holds something of this workflow id."""
        return bool(self.run or self.interactions or self.promises)

    @property
    def shown_ids(self) -> set[str]:
        """Every invocation the page draws: a change to any of them redraws it."""
        ids = {i.id for i in self.interactions} | {r.id for r in self.earlier_runs}
        if self.run is not None:
            ids.add(self.run.id)
        return ids


def workflow_get(*, service: str, workflow_id: str) -> Workflow:
    """One workflow id: its runs, its interactions in time order and its promises.
    Every invocation read goes through inv_object_key_created_idx (service, key, created)."""
    of_id = Invocation.objects.filter(service_name=service, service_key=workflow_id)
    runs = list(of_id.filter(handler_name=WORKFLOW_MAIN_HANDLER).order_by("-created_at", "-id")[: EARLIER_RUNS_CAP + 1])
    others = of_id.exclude(handler_name=WORKFLOW_MAIN_HANDLER)
    latest = list(others.order_by("-created_at", "-id")[: INTERACTIONS_CAP + 1])
    total = len(latest) if len(latest) <= INTERACTIONS_CAP else others.count()
    promises = WorkflowPromise.objects.filter(service_name=service, service_key=workflow_id)
    shown = list(promises.order_by("key")[: PROMISES_CAP + 1])
    return Workflow(
        service=service,
        workflow_id=workflow_id,
        run=runs[0] if runs else None,
        earlier_runs=runs[1:],
        interactions=latest[:INTERACTIONS_CAP][::-1],
        interactions_total=total,
        promises=shown[:PROMISES_CAP],
        promises_total=len(shown) if len(shown) <= PROMISES_CAP else promises.count(),
    )


def workflow_known(*, service: str, workflow_id: str) -> bool:
    """Our copy holds an invocation or a promise of this workflow id (what workflow_get's `known` says, cheaply)."""
    return (
        Invocation.objects.filter(service_name=service, service_key=workflow_id).exists()
        or WorkflowPromise.objects.filter(service_name=service, service_key=workflow_id).exists()
    )


def workflow_invocations_among(*, service: str, workflow_id: str, among: Iterable[str]) -> set[str]:
    """Those of `among` (ids a sync step changed) that are invocations on this workflow id."""
    wanted = list(among)
    if not wanted:
        return set()
    return set(
        Invocation.objects.filter(id__in=wanted, service_name=service, service_key=workflow_id).values_list(
            "id", flat=True
        )
    )
