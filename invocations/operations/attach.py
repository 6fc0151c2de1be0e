"""Attach: wait for an invocation's result, once for everyone.

Every browser attached to one invocation shares one `AttachWait` row and one
procrastinate job on the attach queue, which holds the one blocking attach on
Restate as a coroutine (no thread). The row outlives page reloads; its end is
broadcast after commit (`events.attach_finished`) to every attached page.

What Restate 1.7 answers (verified against restate-server 1.7.12, see tests/test_attach.py):
- `/output` of a running invocation: 470; of a completed one: 200 with the value, or the
  failure with its own code (cancelled: 409) and `"source":"invocation"`.
- Purged or past its completion retention: 404 (`/output`: "invocation not found",
  `"source":"ingress"`; `/attach`: "not found", `"source":"invocation"`).
- Every invocation is fetchable by id while its completion retention lasts (24 h by
  default), with or without an idempotency key: the ingress gives each of its own
  invocations a ULID key, and calls between services are kept too. Restate before 1.2
  let only keyed invocations and workflows be fetched after completion; the page says
  what holds for this invocation (`reads.presenters.attach`).
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import AbstractUser, AnonymousUser
from django.db import close_old_connections, connection, transaction
from django.db.models import Q
from django.utils import timezone
from procrastinate.contrib.django.models import ProcrastinateJob
from procrastinate.exceptions import AlreadyEnqueued

from invocations import events
from invocations.mirror.models import Invocation
from invocations.mirror.status import InvocationStatus
from invocations.operations.roles import NotAllowed
from invocations.records.models import AttachState, AttachWait
from invocations.restate import (
    WORKFLOW_MAIN_HANDLER,
    InvocationResult,
    RestateClient,
    RestateUnavailable,
    ResultState,
    ResultTarget,
    client_from_settings,
    result_async,
    validate_invocation_id,
)

log = logging.getLogger(__name__)

# Stored result bodies are cut here (the page shows at most this much anyway).
MAX_BODY = 64 * 1024
NOT_FOUND_MESSAGE = "Purged or expired: the result can no longer be fetched."
# A wait that ended like this is started again by the next attach (Restate may be back).
RESTARTABLE = (AttachState.ERROR, AttachState.UNAVAILABLE)


def lock_name(invocation_id: str) -> str:
    return f"attach:{invocation_id}"


def result_target(*, invocation_id: str, inv: Invocation | None) -> ResultTarget:
    """Workflow runs attach by workflow id, everything else by invocation id."""
    if (
        inv is not None
        and inv.service_type == "workflow"
        and inv.handler_name == WORKFLOW_MAIN_HANDLER
        and inv.service_key is not None
    ):
        return ResultTarget(invocation_id, workflow=inv.service_name, workflow_id=inv.service_key)
    return ResultTarget(invocation_id)


def attach_get(*, invocation_id: str) -> AttachWait | None:
    return AttachWait.objects.filter(pk=invocation_id).first()


def attach_request(
    *, user: AbstractUser | AnonymousUser, invocation_id: str, client: RestateClient | None = None
) -> AttachWait:
    """Start or join the shared wait for `invocation_id`'s result; returns its row.

    A completed invocation's result is fetched at once (no job); a purged one ends as
    not_found. Otherwise one job waits: a second caller joins the row the first made.
    Raises NotAllowed (anonymous) and InvalidInvocationId before anything is sent.
    """
    if not user.is_authenticated:
        raise NotAllowed("log in to attach to an invocation")
    validate_invocation_id(invocation_id)
    existing = attach_get(invocation_id=invocation_id)
    if existing is not None and existing.state == AttachState.WAITING:
        _ensure_job(invocation_id)
        return existing
    if existing is not None and existing.state not in RESTARTABLE:
        return existing  # a result (or "purged") does not change: everyone sees the same one
    inv = Invocation.objects.filter(pk=invocation_id).first()
    target = result_target(invocation_id=invocation_id, inv=inv)
    username = user.get_username()
    own = client is None
    restate = client or client_from_settings()
    try:
        # One cheap, non-blocking look first: a completed (or purged) invocation needs no wait.
        now = restate.result_now(target)
        if now.state is ResultState.NOT_FOUND and _from_invocation(now):
            # /output's own "not found" says "source":"ingress": this is a handler's 404 failure.
            now = InvocationResult(ResultState.FAILED, now.http_status, now.body, now.content_type)
    except RestateUnavailable:
        # The job retries until Restate answers; the wait is not lost meanwhile.
        now = None
    finally:
        if own:
            restate.close()
    if now is not None and now.state is not ResultState.NOT_READY:
        if inv is not None and inv.status != InvocationStatus.COMPLETED and now.state is ResultState.NOT_FOUND:
            log.info("attach: Restate does not know %s, which our copy holds as %s", invocation_id, inv.status)
        return _store_now(invocation_id=invocation_id, username=username, result=now)
    with transaction.atomic():
        if _start(invocation_id=invocation_id, username=username):
            _defer(invocation_id)
    wait = attach_get(invocation_id=invocation_id)
    assert wait is not None
    return wait


def _start(*, invocation_id: str, username: str) -> bool:
    """Make the row waiting; True when this call did (and so must start the one job)."""
    table = AttachWait._meta.db_table
    with connection.cursor() as cursor:
        # The primary key serialises concurrent first attaches: one inserts, the others
        # wait for its commit and insert nothing.
        cursor.execute(
            f"INSERT INTO {table} (invocation_id, state, requested_by, started_at, http_status, content_type,"
            " body, body_truncated, message) VALUES (%s, %s, %s, %s, NULL, '', '', false, '')"
            " ON CONFLICT (invocation_id) DO NOTHING RETURNING invocation_id",
            [invocation_id, AttachState.WAITING, username, timezone.now()],
        )
        if cursor.fetchone() is not None:
            return True
    # A wait that ended in an error starts again; the conditional update picks one winner.
    return (
        AttachWait.objects.filter(pk=invocation_id, state__in=RESTARTABLE).update(
            state=AttachState.WAITING,
            requested_by=username,
            started_at=timezone.now(),
            finished_at=None,
            http_status=None,
            content_type="",
            body="",
            body_truncated=False,
            message="",
        )
        == 1
    )


def _defer(invocation_id: str) -> None:
    from invocations.operations.tasks import attach_wait

    name = lock_name(invocation_id)
    try:
        # Same transaction as the row (procrastinate's Django connector): no row without
        # its job, no job without its row. The queueing lock is a second guard.
        with transaction.atomic():
            attach_wait.configure(queueing_lock=name, lock=name).defer(invocation_id=invocation_id)
    except AlreadyEnqueued:
        pass


def _job_alive(invocation_id: str) -> bool:
    name = lock_name(invocation_id)
    # Each side matches one of procrastinate's partial indexes (todo: queueing_lock, doing: lock).
    return ProcrastinateJob.objects.filter(Q(status="todo", queueing_lock=name) | Q(status="doing", lock=name)).exists()


def _ensure_job(invocation_id: str) -> None:
    """Joining a waiting row: if its job is gone (failed for good, cancelled, deleted by
    an operator), start another, so a wait shown as waiting is always being waited on.
    A job stuck in `doing` on a dead worker is retried by `attach_retry_stalled`."""
    if _job_alive(invocation_id):
        return
    with transaction.atomic():
        row = AttachWait.objects.select_for_update().filter(pk=invocation_id, state=AttachState.WAITING).first()
        if row is not None and not _job_alive(invocation_id):
            _defer(invocation_id)


def _from_invocation(result: InvocationResult) -> bool:
    return '"source":"invocation"' in result.body.replace(" ", "")


def _fields(result: InvocationResult) -> dict[str, Any]:
    body = result.body
    truncated = result.truncated or len(body.encode()) > MAX_BODY
    if truncated:
        body = body.encode()[:MAX_BODY].decode("utf-8", errors="ignore")
    state = {
        ResultState.SUCCEEDED: AttachState.SUCCEEDED,
        ResultState.FAILED: AttachState.FAILED,
        ResultState.NOT_FOUND: AttachState.NOT_FOUND,
        ResultState.UNAVAILABLE: AttachState.UNAVAILABLE,
    }.get(result.state, AttachState.ERROR)
    message = ""
    if state == AttachState.NOT_FOUND:
        message = NOT_FOUND_MESSAGE
    elif state == AttachState.UNAVAILABLE:
        message = "Restate keeps no result to fetch for this invocation."
    elif state == AttachState.ERROR:
        message = f"Restate answered {result.http_status}."
    return {
        "state": state,
        "finished_at": timezone.now(),
        "http_status": result.http_status,
        "content_type": result.content_type[:200],
        "body": body,
        "body_truncated": truncated,
        "message": message,
    }


def _store_now(*, invocation_id: str, username: str, result: InvocationResult) -> AttachWait:
    with transaction.atomic():
        wait, _ = AttachWait.objects.update_or_create(
            pk=invocation_id,
            defaults={"requested_by": username, "started_at": timezone.now(), **_fields(result)},
        )
        events.attach_finished(invocation_id=invocation_id)
    return wait


# ---------------------------------------------------------------- the worker's side


def _wait_and_target(invocation_id: str) -> tuple[AttachWait | None, ResultTarget]:
    close_old_connections()  # a long-lived worker: drop a connection PostgreSQL closed meanwhile
    wait = attach_get(invocation_id=invocation_id)
    inv = Invocation.objects.filter(pk=invocation_id).first()
    return wait, result_target(invocation_id=invocation_id, inv=inv)


def _finish(invocation_id: str, result: InvocationResult) -> None:
    close_old_connections()
    with transaction.atomic():
        done = AttachWait.objects.filter(pk=invocation_id, state=AttachState.WAITING).update(**_fields(result))
        if done:
            events.attach_finished(invocation_id=invocation_id)


def _note(invocation_id: str, message: str) -> None:
    close_old_connections()
    AttachWait.objects.filter(pk=invocation_id, state=AttachState.WAITING).update(message=message[:500])


async def attach_wait_run(*, invocation_id: str, ingress_url: str | None = None) -> None:
    """The job: hold the one attach on Restate until the result comes, store it, tell
    every attached page. Raises RestateUnavailable when Restate cannot be reached (the
    task retries with backoff; the row stays waiting, its message says why)."""
    validate_invocation_id(invocation_id)
    wait, target = await sync_to_async(_wait_and_target)(invocation_id)
    if wait is None or wait.state != AttachState.WAITING:
        return  # already answered (e.g. fetched at once by a later attach)
    url = ingress_url or settings.RESTATE_INGRESS_URL
    try:
        result = await result_async(url, target, what="attach", max_body=MAX_BODY)
        if result.state is ResultState.NOT_FOUND and _from_invocation(result):
            # /attach says "not found" both for a purged invocation and for a handler that
            # failed with code 404; /output tells them apart by its source.
            result = await result_async(url, ResultTarget(invocation_id), what="output", max_body=MAX_BODY)
            if result.state is ResultState.NOT_FOUND and _from_invocation(result):
                result = InvocationResult(ResultState.FAILED, result.http_status, result.body, result.content_type)
    except RestateUnavailable as exc:
        await sync_to_async(_note)(invocation_id, f"Restate is unreachable, retrying: {exc}")
        raise
    await sync_to_async(_finish)(invocation_id, result)
