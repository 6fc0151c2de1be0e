"""The status vocabulary, named once: Restate's invocation statuses and the sets
the sync engine and the pages reason about."""

from __future__ import annotations

from django.db import models


class InvocationStatus(models.TextChoices):
    SCHEDULED = "scheduled"
    PENDING = "pending"  # queued in a virtual object's inbox
    READY = "ready"
    RUNNING = "running"
    BACKING_OFF = "backing-off"
    SUSPENDED = "suspended"
    PAUSED = "paused"
    COMPLETED = "completed"


# Statuses that can change without Restate bumping modified_at (retries), so the
# sync re-reads every invocation in one of them on each step.
ACTIVE_STATUSES = (
    InvocationStatus.READY,
    InvocationStatus.RUNNING,
    InvocationStatus.BACKING_OFF,
    InvocationStatus.SUSPENDED,
    InvocationStatus.PAUSED,
)
# Statuses that only change together with modified_at.
QUIET_STATUSES = (InvocationStatus.COMPLETED, InvocationStatus.SCHEDULED, InvocationStatus.PENDING)
# Not started yet: Restate reports journal_size 0 although it holds their Input.
NOT_STARTED = (InvocationStatus.SCHEDULED, InvocationStatus.PENDING)


class Outcome(models.TextChoices):
    """How a completed invocation ended. Restate stores only success/failure, with the
    cancel and kill told apart by the failure text alone (verified on 1.7.12)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # a failure that is neither a cancel nor a kill
    CANCELLED = "cancelled"  # compensations ran (the demo's saga ends this way)
    KILLED = "killed"  # stopped at once, no compensations


COMPLETION_SUCCESS = "success"
COMPLETION_FAILURE = "failure"
# Restate's completion_failure for an invocation it cancelled or killed, children included.
CANCELLED_FAILURE = "[409] cancelled"
KILLED_FAILURE = "[409] killed"
