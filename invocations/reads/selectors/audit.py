"""Reads of the audit log (what users did). Newest first, keyset-paged by id."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from invocations.records.models import AuditEntry

PAGE_SIZE = 50
# The user filter's choices: the names seen in the log, at most this many.
MAX_USERS = 200


@dataclass(frozen=True)
class AuditFilters:
    username: str = ""
    action: str = ""
    kind: str = ""
    invocation_id: str = ""
    job_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None

    @property
    def active(self) -> bool:
        return any([self.username, self.action, self.kind, self.invocation_id, self.job_id, self.since, self.until])


def audit_entries(*, filters: AuditFilters, before_id: int | None = None, limit: int = PAGE_SIZE) -> list[AuditEntry]:
    """One page of entries, newest first; `limit + 1` rows tell whether a next page exists."""
    rows = AuditEntry.objects.all()
    if filters.username:
        rows = rows.filter(username=filters.username)
    if filters.action:
        rows = rows.filter(action=filters.action)
    if filters.kind:
        rows = rows.filter(kind=filters.kind)
    if filters.invocation_id:
        rows = rows.filter(targets__contains=[filters.invocation_id])  # audit_targets_gin
    if filters.job_id is not None:
        rows = rows.filter(job_id=filters.job_id)
    if filters.since is not None:
        rows = rows.filter(at__gte=filters.since)
    if filters.until is not None:
        rows = rows.filter(at__lt=filters.until)
    if before_id is not None:
        rows = rows.filter(id__lt=before_id)
    # By id, not time: ids are the order entries were committed in, one column, unique.
    return list(rows.order_by("-id")[: limit + 1])


def audit_usernames() -> list[str]:
    return list(AuditEntry.objects.order_by("username").values_list("username", flat=True).distinct()[:MAX_USERS])
