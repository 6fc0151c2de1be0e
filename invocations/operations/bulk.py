"""Bulk jobs: one action over the invocations a list filter matched, run by a
procrastinate worker in batches.

Starting a job snapshots its targets (one INSERT ... SELECT) and defers the task in
the same transaction, so a job exists with its items and its task, or not at all.
The worker then takes at most BULK_BATCH_SIZE (setting, <= 1,000) items at a time and, for each batch:

1. marks them `sent` and commits *before* calling Restate: a worker killed in the
   middle leaves `sent` items behind, which is how a resumed run knows what may
   have reached Restate already;
2. asks Restate for their current status with one SQL query (`id IN (...)`);
3. skips, without a call, those whose status no longer allows the action;
4. PATCHes the rest (Restate 1.7 has no batch endpoint: one PATCH per id, sent
   concurrently, at most CONCURRENCY at a time);
5. records each answer, the job's counts and a bulk-batch audit entry, asks the
   sync engine to re-read the batch at once, and tells the job's pages after commit.

A resumed run re-checks the `sent` items first: one whose status shows the action
already took effect (cancelled, killed, purged, paused) is recorded as succeeded
without being sent again. Stop is checked between batches.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import connection, transaction
from django.db.models import Count, QuerySet
from django.utils import timezone

from invocations import events
from invocations.mirror.actions import TYPED_CONFIRMATION, Action, action_allowed
from invocations.mirror.models import Invocation
from invocations.mirror.status import CANCELLED_FAILURE, KILLED_FAILURE, InvocationStatus
from invocations.mirror.sync import hints
from invocations.operations.roles import user_can_operate
from invocations.operations.services import NotAllowed, outcome_words
from invocations.records.models import (
    AuditEntry,
    AuditKind,
    BulkJob,
    BulkJobItem,
    ItemState,
    JobState,
)
from invocations.restate import OperationResult, RestateClient, RestateError, client_from_settings, sql_list
from invocations.restate import Outcome as RestateOutcome

log = logging.getLogger(__name__)

# The bound: at most this many ids per call to Restate (one status query per
# batch). BULK_BATCH_SIZE can only lower it (tests use small batches to stop mid-job).
MAX_BATCH_SIZE = 1000
# PATCHes in flight at once: enough to hide the round trip, few enough not to crowd
# Restate's admin API while it also serves the sync engine and the pages.
CONCURRENCY = 16
# How long the sync engine keeps re-reading a batch's invocations after sending it.
BULK_HINT_FOLLOW = timedelta(seconds=2)

# What a resumed run accepts as "this action already took effect" for an item it had sent.
_ALREADY_DONE: dict[Action, Callable[[dict[str, Any]], bool]] = {
    Action.CANCEL: lambda row: row.get("completion_failure") == CANCELLED_FAILURE,
    Action.KILL: lambda row: row.get("completion_failure") in (KILLED_FAILURE, CANCELLED_FAILURE),
    Action.PAUSE: lambda row: row.get("status") == InvocationStatus.PAUSED,
}


class ConfirmationRequired(ValueError):
    """A destructive bulk action was started without typing its name."""


class BadBulkRequest(ValueError):
    """The start request cannot become a job (bad key, nothing to act on)."""


class UnknownJob(LookupError):
    pass


def confirmation_word(action: Action) -> str:
    """What the user types to start a `TYPED_CONFIRMATION` job: the action's own name."""
    return action.value


def bulk_start(
    *,
    user: AbstractUser,
    action: Action,
    targets: QuerySet[Invocation],
    filter_query: str,
    filter_description: str,
    typed_confirmation: str = "",
    request_key: str | None = None,
) -> BulkJob:
    """Create the job over `targets` (the filter's allowed invocations) and defer its task.

    Raises NotAllowed for a non-operator, ConfirmationRequired when a destructive action's
    name was not typed, BadBulkRequest for a bad request key. A repeated `request_key`
    (double click, retried POST) returns the first request's job.
    """
    if not user_can_operate(user):
        raise NotAllowed(f"{user.get_username() or 'anonymous'} may not start bulk jobs")
    if request_key is not None and not (0 < len(request_key) <= 64):
        raise BadBulkRequest("request key must be 1 to 64 characters")
    if action in TYPED_CONFIRMATION and typed_confirmation.strip().lower() != confirmation_word(action):
        raise ConfirmationRequired(
            f"{action.label} cannot be undone: type {confirmation_word(action)!r} to confirm the bulk job"
        )
    from invocations.operations.tasks import bulk_job_run

    with transaction.atomic():
        if request_key is not None:
            _lock_key(f"bulk:{request_key}")
            earlier = BulkJob.objects.filter(request_key=request_key).first()
            if earlier is not None:
                return earlier
        job = BulkJob.objects.create(
            action=action,
            filter_query=filter_query,
            filter_description=filter_description,
            created_by_id=user.pk,
            created_by=user.get_username(),
            request_key=request_key,
        )
        job.total = _snapshot(job, targets)
        job.save(update_fields=["total"])
        AuditEntry.objects.create(
            user_id=user.pk,
            username=user.get_username(),
            kind=AuditKind.BULK_START,
            action=action,
            job=job,
            request={"filter": filter_query, "filter_description": filter_description},
            response={"total": job.total},
            outcome="started",
        )
        # Same transaction (procrastinate's Django connector uses Django's connection):
        # the task exists exactly when the job does. The lock keeps two runs of one job
        # (a stalled one retried while the first still lives) from overlapping.
        bulk_job_run.configure(lock=f"bulk-job-{job.id}").defer(job_id=job.id)
        events.job_progressed(job_id=job.id)
    return job


def _snapshot(job: BulkJob, targets: QuerySet[Invocation]) -> int:
    """Insert one pending item per target in one statement (no Python loop over 100k ids)."""
    select_sql, params = targets.order_by().values("id").query.sql_with_params()
    table = BulkJobItem._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (job_id, invocation_id, state, outcome, message) "
            f"SELECT %s, t.id, %s, '', '' FROM ({select_sql}) AS t ORDER BY t.id "
            "ON CONFLICT (job_id, invocation_id) DO NOTHING",
            [job.id, ItemState.PENDING.value, *params],
        )
        return cursor.rowcount


def bulk_stop(*, user: AbstractUser, job_id: int) -> BulkJob:
    """Ask the job to stop after its current batch; the rest is recorded as skipped."""
    if not user_can_operate(user):
        raise NotAllowed(f"{user.get_username() or 'anonymous'} may not stop bulk jobs")
    with transaction.atomic():
        job = BulkJob.objects.select_for_update().filter(id=job_id).first()
        if job is None:
            raise UnknownJob(f"no bulk job {job_id}")
        if not job.active or job.stop_requested:
            return job  # finished, or a second click: nothing more to ask
        job.stop_requested = True
        job.state = JobState.STOPPING
        job.save(update_fields=["stop_requested", "state"])
        AuditEntry.objects.create(
            user_id=user.pk,
            username=user.get_username(),
            kind=AuditKind.BULK_STOP,
            action=job.action,
            job=job,
            request={"stop": True},
            response={"processed": job.processed, "total": job.total},
            outcome="stop requested",
        )
        events.job_progressed(job_id=job.id)
    return job


# ---------------------------------------------------------------- the runner


@dataclass(frozen=True)
class _Verdict:
    state: ItemState
    outcome: str
    message: str
    http_status: int | None = None


def job_run(*, job_id: int, client: RestateClient | None = None, batch_size: int | None = None) -> None:
    """Run the job to its end (or its stop): what the procrastinate task does."""
    own = client is None
    restate = client or client_from_settings()
    try:
        size = min(batch_size or settings.BULK_BATCH_SIZE, MAX_BATCH_SIZE)
        while job_run_batch(job_id=job_id, client=restate, batch_size=size):
            pass
    finally:
        if own:
            restate.close()


def job_run_batch(*, job_id: int, client: RestateClient, batch_size: int = MAX_BATCH_SIZE) -> bool:
    """One step: the next batch (items left `sent` by a killed run first). True while more remain."""
    with transaction.atomic():
        job = BulkJob.objects.select_for_update().filter(id=job_id).first()
        if job is None or not job.active:
            return False
        if job.state == JobState.QUEUED:
            job.state = JobState.RUNNING
            job.started_at = timezone.now()
            job.save(update_fields=["state", "started_at"])
        # Items a killed run left `sent` are settled first, even after a stop: they may
        # have reached Restate, and only a re-check can say what they did.
        resumed = _claim(job, ItemState.SENT, batch_size)
        fresh: list[str] = []
        if job.stop_requested:
            if not resumed:
                _stop(job)
                return False
        elif len(resumed) < batch_size:
            fresh = _claim(job, ItemState.PENDING, batch_size - len(resumed))
        if not resumed and not fresh:
            _finish(job)
            return False
    # Committed: these items are `sent` before anything reaches Restate.
    action = Action(job.action)
    batch = [*resumed, *fresh]
    calls = 0
    try:
        rows = {row["id"]: row for row in client.query(_status_sql(batch))}
    except RestateError as exc:
        # The items stay `sent`; the task fails and procrastinate retries it, and the
        # retry re-checks them like any resumed batch.
        _record_error(job_id, f"Restate's status query failed: {exc}")
        raise
    calls += 1
    verdicts: dict[str, _Verdict] = {}
    to_send: list[str] = []
    resumed_set = set(resumed)
    for invocation_id in batch:
        verdict = _before_sending(action, rows.get(invocation_id), resumed=invocation_id in resumed_set)
        if verdict is None:
            to_send.append(invocation_id)
        else:
            verdicts[invocation_id] = verdict
    answers = client.operate_many(action.operation, to_send, concurrency=CONCURRENCY)
    calls += len(to_send)
    for invocation_id, answer in answers.items():
        verdict = _after_sending(action, answer, resumed=invocation_id in resumed_set)
        if verdict is not None:
            verdicts[invocation_id] = verdict
    return _record(job_id, action, batch, verdicts, sent=to_send, calls=calls)


def _claim(job: BulkJob, state: ItemState, limit: int) -> list[str]:
    """Mark up to `limit` items in `state` as sent (oldest first) and return their ids."""
    if limit <= 0:
        return []
    table = BulkJobItem._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET state = %s WHERE id IN ("
            f"  SELECT id FROM {table} WHERE job_id = %s AND state = %s ORDER BY id LIMIT %s FOR UPDATE"
            ") RETURNING invocation_id",
            [ItemState.SENT.value, job.id, state.value, limit],
        )
        return sorted(row[0] for row in cursor.fetchall())


def _status_sql(ids: list[str]) -> str:
    return (
        "SELECT id, status, completion_result, completion_failure, target_service_ty "
        f"FROM sys_invocation WHERE id IN {sql_list(ids)}"
    )


def _before_sending(action: Action, row: dict[str, Any] | None, *, resumed: bool) -> _Verdict | None:
    """The verdict without a call to Restate, or None: send it."""
    if row is None:
        if resumed and action in (Action.PURGE, Action.PURGE_JOURNAL):
            return _Verdict(ItemState.SUCCEEDED, "done", "Purged (sent before the worker restarted; not sent again).")
        return _Verdict(ItemState.SKIPPED, "gone", "No longer in Restate (purged or expired): nothing sent.")
    if resumed:
        already = _ALREADY_DONE.get(action)
        if already is not None and already(row):
            return _Verdict(
                ItemState.SUCCEEDED,
                "done",
                f"Already {row.get('completion_failure') or row.get('status')}: "
                "sent before the worker restarted, not sent again.",
            )
        if action is Action.RESTART_AS_NEW:
            # Sending again could start a second new invocation; whether the first
            # request reached Restate cannot be read back. Say so instead.
            return _Verdict(
                ItemState.FAILED,
                "unknown",
                "The worker stopped while restarting this one; not sent again "
                "(a second request could restart it twice). Check for a restarted invocation.",
            )
    status = row.get("status", "")
    service_type = "workflow" if row.get("target_service_ty") == "workflow" else ""
    if not action_allowed(action, status=status, service_type=service_type):
        described = status
        if status == InvocationStatus.COMPLETED and row.get("completion_failure"):
            described = f"completed ({row['completion_failure']})"
        return _Verdict(
            ItemState.SKIPPED, "not allowed", f"Now {described}: {action.label.lower()} not allowed; nothing sent."
        )
    return None


def _after_sending(action: Action, answer: OperationResult | RestateError, *, resumed: bool) -> _Verdict | None:
    """The recorded result of a PATCH, or None: leave the item `sent` for the next batch.

    A lost connection says nothing about whether Restate applied the action: the item
    stays `sent`, so the next batch re-checks it in Restate before sending it once more.
    Only a second loss (an item that was already being resumed) is recorded as failed.
    """
    if isinstance(answer, RestateError):
        if not resumed:
            return None
        return _Verdict(ItemState.FAILED, "unreachable", f"Restate did not answer (twice): {answer}")
    state = ItemState.SUCCEEDED if answer.outcome is RestateOutcome.DONE else ItemState.FAILED
    words = outcome_words(action=action, outcome=answer.outcome.value)
    return _Verdict(state, words, answer.message, answer.http_status)


def _record(
    job_id: int, action: Action, batch: list[str], verdicts: dict[str, _Verdict], *, sent: list[str], calls: int
) -> bool:
    """Write the batch's results, counts and audit entry in one transaction."""
    now = timezone.now()
    table = BulkJobItem._meta.db_table
    ids = list(verdicts)
    with transaction.atomic():
        job = BulkJob.objects.select_for_update().get(id=job_id)
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} AS i SET state = v.state, outcome = v.outcome, message = v.message, "
                "http_status = v.http_status, done_at = %s "
                "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::int[]) "
                "AS v(invocation_id, state, outcome, message, http_status) "
                "WHERE i.job_id = %s AND i.invocation_id = v.invocation_id AND i.state = %s",
                [
                    now,
                    ids,
                    [verdicts[i].state.value for i in ids],
                    [verdicts[i].outcome[:32] for i in ids],
                    [verdicts[i].message for i in ids],
                    [verdicts[i].http_status for i in ids],
                    job_id,
                    ItemState.SENT.value,
                ],
            )
        job.calls_to_restate += calls
        _recount(job)
        job.save(update_fields=["calls_to_restate", "succeeded", "failed", "skipped"])
        summary = Counter(v.state.value for v in verdicts.values())
        AuditEntry.objects.create(
            user_id=job.created_by_id,
            username=job.created_by,
            kind=AuditKind.BULK_BATCH,
            action=action,
            targets=batch,
            job=job,
            request={
                "method": "PATCH",
                "path": f"/invocations/{{id}}/{action.operation}",
                "status_query": 1,
                "patched": len(sent),
            },
            response={"by_state": dict(summary), "by_outcome": dict(Counter(v.outcome for v in verdicts.values()))},
            # At most 32 characters (the column): 1000 ok/1000 failed/1000 skipped.
            outcome=f"{summary.get('succeeded', 0)} ok/{summary.get('failed', 0)} failed/{summary.get('skipped', 0)} skipped",
        )
        # Followed briefly: a 10,000-id job would otherwise keep the sync engine re-reading
        # thousands of ids four times a second; the poll catches what changes later.
        hints.hints_add(sent, follow=BULK_HINT_FOLLOW)
        events.job_progressed(job_id=job_id)
        more = BulkJobItem.objects.filter(job_id=job_id, state__in=[ItemState.PENDING, ItemState.SENT]).exists()
        if not more:
            # The last batch ends the job in the same transaction: no window where all
            # items are done but the job still says running.
            if job.stop_requested:
                _stop(job)
            else:
                _finish(job)
    return more


def _recount(job: BulkJob) -> None:
    """Counts from the items themselves: a resumed or repeated step cannot count twice."""
    counts = dict(
        BulkJobItem.objects.filter(job_id=job.id).values_list("state").annotate(n=Count("id")).values_list("state", "n")
    )
    job.succeeded = counts.get(ItemState.SUCCEEDED, 0)
    job.failed = counts.get(ItemState.FAILED, 0)
    job.skipped = counts.get(ItemState.SKIPPED, 0)


def _finish(job: BulkJob) -> None:
    _recount(job)
    job.state = JobState.FINISHED
    job.finished_at = timezone.now()
    job.save(update_fields=["state", "finished_at", "succeeded", "failed", "skipped"])
    events.job_progressed(job_id=job.id)


def _stop(job: BulkJob) -> None:
    """Skip what was not sent yet, naming who stopped the job."""
    entry = AuditEntry.objects.filter(job=job, kind=AuditKind.BULK_STOP).order_by("id").first()
    who = entry.username if entry is not None else "an operator"
    BulkJobItem.objects.filter(job_id=job.id, state=ItemState.PENDING).update(
        state=ItemState.SKIPPED, outcome="stopped", message=f"Stopped by {who}: not sent.", done_at=timezone.now()
    )
    _recount(job)
    job.state = JobState.STOPPED
    job.finished_at = timezone.now()
    job.save(update_fields=["state", "finished_at", "succeeded", "failed", "skipped"])
    events.job_progressed(job_id=job.id)


def _record_error(job_id: int, message: str) -> None:
    BulkJob.objects.filter(id=job_id).update(error=message[:2000])
    events.job_progressed(job_id=job_id)


def job_fail(*, job_id: int, message: str) -> None:
    """The task gave up (retries exhausted): the job ends as failed, its open items as they are."""
    with transaction.atomic():
        job = BulkJob.objects.select_for_update().filter(id=job_id).first()
        if job is None or not job.active:
            return
        _recount(job)
        job.state = JobState.FAILED
        job.error = message[:2000]
        job.finished_at = timezone.now()
        job.save(update_fields=["state", "error", "finished_at", "succeeded", "failed", "skipped"])
        events.job_progressed(job_id=job.id)


def _lock_key(key: str) -> None:
    import hashlib

    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [digest])
