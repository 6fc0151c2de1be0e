"""The dashboard's own records, not Restate's: what users did (audit), the bulk
jobs they started and each invocation a job touched, and the shared attach waits.

Users are recorded by name and id, not by foreign key: deleting a user must not
cascade into (or be blocked by) the append-only audit log.
"""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.db import models
from django.utils import timezone

from invocations.mirror.actions import Action


class AuditKind(models.TextChoices):
    SINGLE = "single", "Single action"
    BULK_START = "bulk-start", "Bulk job started"
    BULK_BATCH = "bulk-batch", "Bulk job batch"
    BULK_STOP = "bulk-stop", "Bulk job stop"


class AuditEntry(models.Model):
    """One thing a user did, and what Restate answered. Append-only: a trigger in
    migration 0009 refuses UPDATE and DELETE, and the app has no path to either."""

    id = models.BigAutoField(primary_key=True)
    at = models.DateTimeField(default=timezone.now)
    user_id = models.IntegerField(null=True)
    username = models.CharField(max_length=150)
    kind = models.CharField(max_length=16, choices=AuditKind.choices)
    action = models.CharField(max_length=32, choices=Action.choices)
    targets = ArrayField(models.CharField(max_length=100), default=list)
    job = models.ForeignKey("BulkJob", null=True, on_delete=models.PROTECT, related_name="+")
    # What was sent, e.g. {"method": "PATCH", "path": "/invocations/inv_1/cancel"},
    # and what came back: {"http_status": 202, "outcome": "done", "message": "..."}.
    request = models.JSONField(default=dict)
    response = models.JSONField(default=dict)
    outcome = models.CharField(max_length=32)
    # The form's one-time key: a double click finds the first click's entry here
    # instead of sending the action again.
    request_key = models.CharField(max_length=64, null=True, unique=True)

    class Meta:
        app_label = "invocations"
        permissions = [("operate", "Can act on invocations in Restate (operator role)")]
        indexes = [
            # The audit page: newest first, optionally narrowed by user or action.
            models.Index(fields=["-at", "-id"], name="audit_at_idx"),
            # The audit page's "entries that touched invocation X" (targets @> ARRAY[X]).
            GinIndex(fields=["targets"], name="audit_targets_gin"),
        ]


class JobState(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    STOPPING = "stopping", "Stopping"
    STOPPED = "stopped", "Stopped"
    FINISHED = "finished", "Finished"
    FAILED = "failed", "Failed"


JOB_ACTIVE_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.STOPPING)


class BulkJob(models.Model):
    """One bulk action over a list filter. Its targets are fixed when it is created
    (the filter's matches at that moment, as BulkJobItem rows), so counts, progress
    and "show this job's invocations" all speak of the same set."""

    id = models.BigAutoField(primary_key=True)
    action = models.CharField(max_length=32, choices=Action.choices)
    filter_query = models.TextField(blank=True)  # the list page's query string
    filter_description = models.TextField(blank=True)  # the same in words
    created_by_id = models.IntegerField(null=True)
    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True)
    finished_at = models.DateTimeField(null=True)
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.QUEUED)
    stop_requested = models.BooleanField(default=False)
    total = models.IntegerField(default=0)
    succeeded = models.IntegerField(default=0)
    failed = models.IntegerField(default=0)
    skipped = models.IntegerField(default=0)
    calls_to_restate = models.IntegerField(default=0)
    error = models.TextField(blank=True)
    request_key = models.CharField(max_length=64, null=True, unique=True)

    class Meta:
        app_label = "invocations"
        indexes = [
            # The jobs page: newest first.
            models.Index(fields=["-created_at", "-id"], name="bulkjob_created_idx"),
        ]

    @property
    def processed(self) -> int:
        return self.succeeded + self.failed + self.skipped

    @property
    def active(self) -> bool:
        return self.state in JOB_ACTIVE_STATES


class ItemState(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"  # in flight: sent to Restate, answer not recorded yet
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Skipped"


class BulkJobItem(models.Model):
    """One invocation of a bulk job, and what happened to it."""

    id = models.BigAutoField(primary_key=True)
    job = models.ForeignKey(BulkJob, on_delete=models.PROTECT, related_name="items")
    invocation_id = models.CharField(max_length=100)
    state = models.CharField(max_length=16, choices=ItemState.choices, default=ItemState.PENDING)
    http_status = models.IntegerField(null=True)
    outcome = models.CharField(max_length=32, blank=True)
    message = models.TextField(blank=True)
    done_at = models.DateTimeField(null=True)

    class Meta:
        app_label = "invocations"
        constraints = [
            # Also the list filter "this job's invocations" (job_id = X) and the
            # worker's next batch (job_id = X AND state = 'pending' ORDER BY id).
            models.UniqueConstraint(fields=["job", "invocation_id"], name="bulkitem_job_invocation_uniq"),
        ]
        indexes = [
            # The worker's next batch: WHERE job_id = X AND state IN (...) ORDER BY id LIMIT 1000.
            models.Index(fields=["job", "state", "id"], name="bulkitem_job_state_idx"),
        ]


class AttachState(models.TextChoices):
    WAITING = "waiting", "Waiting"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    NOT_FOUND = "not_found", "Not found (purged or expired)"
    UNAVAILABLE = "unavailable", "Result not retrievable"
    ERROR = "error", "Could not wait"


class AttachWait(models.Model):
    """The one wait on Restate for an invocation's result, shared by every browser
    attached to it. It outlives page reloads: the page reads this row on load and
    the worker's answer is pushed to every attached page."""

    invocation_id = models.CharField(primary_key=True, max_length=100)
    state = models.CharField(max_length=16, choices=AttachState.choices, default=AttachState.WAITING)
    requested_by = models.CharField(max_length=150)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True)
    http_status = models.IntegerField(null=True)
    content_type = models.CharField(max_length=200, blank=True)
    body = models.TextField(blank=True)  # bounded by the worker
    body_truncated = models.BooleanField(default=False)
    message = models.TextField(blank=True)

    class Meta:
        app_label = "invocations"
