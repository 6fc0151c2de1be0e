"""The audit page: each entry as a reader wants it (who, what, to which
invocations, what was sent, what Restate answered, in words)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from invocations.mirror.actions import Action, outcome_words
from invocations.reads.selectors.audit import PAGE_SIZE, AuditFilters, audit_entries, audit_usernames
from invocations.records.models import AuditEntry, AuditKind

# Targets listed per entry; a batch of 1,000 says "and 995 more" and links to the job.
TARGETS_SHOWN = 5


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: datetime
    username: str
    kind: str
    kind_label: str
    action_label: str
    targets: list[str]
    more_targets: int
    request: str
    outcome: str
    words: str
    message: str
    http_status: int | None
    job_id: int | None


def audit_row(entry: AuditEntry) -> AuditRow:
    response: dict[str, Any] = entry.response or {}
    request: dict[str, Any] = entry.request or {}
    if entry.kind == AuditKind.SINGLE:
        words = outcome_words(action=entry.action, outcome=entry.outcome)
    else:
        counts = [f"{response[k]} {k}" for k in ("succeeded", "failed", "skipped") if response.get(k)]
        words = ", ".join(counts) or entry.outcome
    request_text = " ".join(str(request[k]) for k in ("method", "path") if request.get(k)) or request.get("summary", "")
    try:
        action_label = Action(entry.action).label
    except ValueError:
        action_label = entry.action
    return AuditRow(
        id=entry.id,
        at=entry.at,
        username=entry.username,
        kind=entry.kind,
        kind_label=AuditKind(entry.kind).label if entry.kind in AuditKind.values else entry.kind,
        action_label=action_label,
        targets=list(entry.targets[:TARGETS_SHOWN]),
        more_targets=max(0, len(entry.targets) - TARGETS_SHOWN),
        request=str(request_text),
        outcome=entry.outcome,
        words=words,
        message=str(response.get("message", "")),
        http_status=response.get("http_status"),
        job_id=entry.job_id,
    )


def audit_context(*, filters: AuditFilters, query: dict[str, str], before_id: int | None) -> dict[str, Any]:
    entries = audit_entries(filters=filters, before_id=before_id)
    more = len(entries) > PAGE_SIZE
    entries = entries[:PAGE_SIZE]
    next_query = None
    if more and entries:
        next_query = urlencode({**{k: v for k, v in query.items() if v and k != "before"}, "before": entries[-1].id})
    live_query = urlencode({k: v for k, v in query.items() if v and k != "before"})
    return {
        "rows": [audit_row(entry) for entry in entries],
        "filters": filters,
        "next_query": next_query,
        "first_page": before_id is None,
        "live_query": live_query,
        "usernames": audit_usernames(),
        "actions": Action.choices,
        "kinds": AuditKind.choices,
    }
