"""What the workflow pages print: /workflows/ (every run, by service and status) and one
workflow id's page (its run, interactions, promises, state, retention and attach)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.utils import timezone

from invocations.mirror.models import Invocation, WorkflowPromise
from invocations.mirror.status import InvocationStatus
from invocations.reads.presenters.attach import retention_duration, retention_words
from invocations.reads.presenters.objects import key_label, object_state
from invocations.reads.presenters.payloads import Payload, format_payload
from invocations.reads.presenters.stuck import invocation_stuck
from invocations.reads.selectors import objects as selectors_objects
from invocations.reads.selectors import workflows as selectors
from invocations.reads.selectors.invocations import Cursor
from invocations.reads.selectors.sync_state import sync_state_get

# Restate's default completion retention of a workflow (reference/: "other handlers can still be
# called for up to 24 hours (default)"); said when our copy holds no retention for the run.
DEFAULT_RETENTION_TEXT = "24 hours by default"


class UnknownWorkflow(LookupError):
    """No such workflow service, or nothing of this workflow id in our copy; the message says which."""


def retention_end(inv: Invocation) -> datetime | None:
    """When Restate forgets a completed invocation: completed_at plus its completion
    retention (Restate's own columns). None while it runs, or when Restate reported none."""
    retention = retention_duration(inv.completion_retention)
    if inv.completed_at is None or retention is None:
        return None
    return inv.completed_at + retention


# ---------------------------------------------------------------- /workflows/


@dataclass(frozen=True)
class RunRow:
    inv: Invocation
    label: str  # the workflow id as printed (an empty id would print as nothing)
    retention_end: datetime | None


@dataclass(frozen=True)
class StatusChip:
    status: str
    count: int
    active: bool
    query: str  # the list with this status chosen (or unchosen, when active)


def workflows_context(*, service: str, status: str, before: Cursor | None) -> dict[str, Any]:
    found = selectors.workflow_runs_page(service=service, status=status, before=before)
    counts = selectors.workflow_run_status_counts(service=service)
    base = {"service": service} if service else {}
    chips = [
        StatusChip(s, counts.get(s, 0), s == status, urlencode(base | ({} if s == status else {"status": s})))
        for s in InvocationStatus.values
        if counts.get(s) or s == status
    ]
    query = base | ({"status": status} if status else {})
    services = selectors.workflow_services()
    if service and service not in services:
        services = sorted([*services, service])  # known from our copy, no longer in Restate's catalog
    return {
        "rows": [RunRow(inv, key_label(inv.service_key or ""), retention_end(inv)) for inv in found.rows],
        "service": service,
        "status": status,
        "statuses": InvocationStatus.values,
        "services": services,
        "chips": chips,
        "total": sum(counts.values()),
        "matching": counts.get(status, 0) if status else sum(counts.values()),
        "paged": before is not None,
        "first_query": urlencode(query),
        "next_query": urlencode(query | {"before": found.next_cursor.encode()}) if found.next_cursor else "",
        # The socket follows the same filter and page as what it redraws.
        "live_query": urlencode(query | ({"before": before.encode()} if before else {})),
    }


# ---------------------------------------------------------------- one workflow id


@dataclass(frozen=True)
class PromiseRow:
    name: str
    state: str  # "pending", "resolved", "rejected"
    value: Payload | None  # a resolved promise's value, when Restate gave it as UTF-8 text
    failure: str  # a rejected promise's failure ("[500] no such user")


def _promise_row(p: WorkflowPromise) -> PromiseRow:
    if not p.completed:
        return PromiseRow(p.key, "pending", None, "")
    if p.failure is not None:
        return PromiseRow(p.key, "rejected", None, p.failure)
    return PromiseRow(p.key, "resolved", format_payload(p.success_value) if p.success_value is not None else None, "")


def _retention_text(run: Invocation | None) -> str:
    retention = retention_duration(run.completion_retention) if run is not None else None
    return retention_words(retention) if retention is not None else ""


def workflow_service_check(service: str) -> None:
    """Raises UnknownWorkflow unless `service` is a workflow service we know of."""
    kind = selectors_objects.service_type_get(service)
    if kind is None:
        raise UnknownWorkflow(
            f"Our copy of Restate has no service named {service!r}: not registered, or the sync has not seen it yet."
        )
    if kind != selectors.WORKFLOW:
        raise UnknownWorkflow(f"{service} is a {kind.replace('_', ' ')}, not a workflow.")


def workflow_known(*, service: str, workflow_id: str) -> bool:
    """A workflow service we know of, and our copy holds something of this id (a page can be drawn)."""
    try:
        workflow_service_check(service)
    except UnknownWorkflow:
        return False
    return selectors.workflow_known(service=service, workflow_id=workflow_id)


def workflow_context(
    *, service: str, workflow_id: str, with_state: bool = True, fresh_after: float | None = None
) -> dict[str, Any]:
    """Everything a workflow's page and its live parts need. Raises UnknownWorkflow.

    fresh_after: see presenters.objects.object_state (a live redraw shares one read of
    Restate's state between the readers told of one change)."""
    workflow_service_check(service)
    found = selectors.workflow_get(service=service, workflow_id=workflow_id)
    if not found.known:
        raise UnknownWorkflow(
            f"Our copy holds no invocation or promise of {service} workflow id {key_label(workflow_id)!r}: "
            "never started, not synced yet, or forgotten by Restate before we saw it."
        )
    run = found.run
    now = timezone.now()
    ends = retention_end(run) if run is not None else None
    return {
        "service": service,
        "workflow_id": workflow_id,
        "label": key_label(workflow_id),
        "found": found,
        "run": run,
        "run_retention": _retention_text(run),
        "retention_end": ends,
        "retention_over": ends is not None and ends <= now,
        "default_retention": DEFAULT_RETENTION_TEXT,
        "stuck": invocation_stuck(run) if run is not None else None,
        "earlier_runs": found.earlier_runs,
        "interactions": found.interactions,
        "interactions_more": found.interactions_total - len(found.interactions),
        "promises": [_promise_row(p) for p in found.promises],
        "promises_more": found.promises_total - len(found.promises),
        # The sync keeps at most SYNC_SNAPSHOT_ROWS promises, a prefix of Restate's: this id's may be cut off.
        "promises_truncated": sync_state_get().promises_truncated,
        "state": object_state(service=service, key=workflow_id, fresh_after=fresh_after) if with_state else None,
        "list_query": urlencode({"service": service, "key": workflow_id}),
        "service_query": urlencode({"service": service}),
        "live_query": urlencode({"service": service, "id": workflow_id}),
        "now": now,
    }
