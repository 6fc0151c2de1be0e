"""Writes that act on Restate: every action goes through here, so each one is
sent once, audited with Restate's answer, followed by an immediate re-sync
(hints), and broadcast after commit, in one place.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import connection, transaction

from invocations import events
from invocations.mirror.actions import UNREACHABLE, Action, cli_command, curl_command, outcome_words
from invocations.mirror.models import Invocation
from invocations.mirror.status import InvocationStatus
from invocations.mirror.sync import hints
from invocations.operations.roles import NotAllowed, user_can_operate
from invocations.records.models import AuditEntry, AuditKind
from invocations.restate import OperationResult, RestateClient, RestateError, client_from_settings
from invocations.restate import Outcome as RestateOutcome

__all__ = ["ActionResult", "NotAllowed", "invocation_act", "outcome_words"]
from invocations.restate.ids import validate_invocation_id

log = logging.getLogger(__name__)

# A cancelled tree's unfinished invocations re-read at once; more wait for the next poll.
MAX_HINTED_PER_ACTION = 1000


@dataclass(frozen=True)
class ActionResult:
    action: Action
    invocation_id: str
    outcome: str  # Restate's outcome (accepted, conflict, ...) or "unreachable"
    words: str  # the outcome in words: accepted, already completed, unknown id, ...
    message: str  # Restate's message, or ours for its answer
    http_status: int | None
    new_invocation_id: str | None
    cli: str | None
    curl: str
    audit_id: int
    replayed: bool  # a repeated request (double click): nothing was sent again

    @property
    def ok(self) -> bool:
        return self.outcome == RestateOutcome.DONE


def invocation_act(
    *,
    user: AbstractUser,
    action: Action,
    invocation_id: str,
    request_key: str | None = None,
    client: RestateClient | None = None,
) -> ActionResult:
    """Send one action to Restate for one invocation, as `user`.

    request_key: the form's one-time key. A second request with the same key (a
    double click, a retried POST) waits for the first and returns its result:
    Restate is called once. Raises NotAllowed for a user without the operator
    role and InvalidInvocationId for a malformed id, before anything is sent.
    """
    if not user_can_operate(user):
        raise NotAllowed(f"{user.get_username() or 'anonymous'} may not {action.label.lower()} invocations")
    validate_invocation_id(invocation_id)
    if request_key is not None and not (0 < len(request_key) <= 64):
        raise ValueError("request key must be 1 to 64 characters")
    with transaction.atomic():
        if request_key is not None:
            # Serialises requests carrying the same key until the first one commits.
            _lock_key(request_key)
            earlier = AuditEntry.objects.filter(request_key=request_key).first()
            if earlier is not None:
                return _result_from_entry(earlier, replayed=True)
        result = _send(action, invocation_id, client)
        entry = AuditEntry.objects.create(
            user_id=user.pk,
            username=user.get_username(),
            kind=AuditKind.SINGLE,
            action=action,
            targets=[invocation_id],
            request={"method": "PATCH", "path": f"/invocations/{invocation_id}/{action.operation}"},
            response=result,
            outcome=result["outcome"],
            request_key=request_key,
        )
        touched = _touched(action, invocation_id, result)
        hints.hints_add(touched)
        events.action_committed(root_ids=_roots(touched))
    return _result_from_entry(entry, replayed=False)


def _send(action: Action, invocation_id: str, client: RestateClient | None) -> dict[str, Any]:
    own = client is None
    restate = client or client_from_settings()
    try:
        answer: OperationResult = restate.operate(action.operation, invocation_id)
    except RestateError as exc:
        # Unknown whether Restate applied it: say so, and audit that we tried.
        return {"outcome": UNREACHABLE, "http_status": None, "message": f"Restate did not answer: {exc}"}
    finally:
        if own:
            restate.close()
    response: dict[str, Any] = {
        "outcome": answer.outcome.value,
        "http_status": answer.http_status,
        "message": answer.message,
    }
    if new_id := answer.data.get("new_invocation_id"):
        response["new_invocation_id"] = new_id
    return response


def _touched(action: Action, invocation_id: str, response: dict[str, Any]) -> list[str]:
    """What the action may change in Restate, to re-read at once: a cancel or kill
    reaches down its call tree, so every unfinished invocation of the tree (one
    indexed query on root_id; a superset of what the confirmation lists, and cheap
    to re-read); a restart creates a new invocation."""
    touched = [invocation_id]
    if action in (Action.CANCEL, Action.KILL):
        root = Invocation.objects.filter(id=invocation_id).values_list("root_id", flat=True).first()
        if root is not None:
            unfinished = Invocation.objects.filter(root_id=root).exclude(status=InvocationStatus.COMPLETED)
            touched += list(unfinished.values_list("id", flat=True)[:MAX_HINTED_PER_ACTION])
    if new_id := response.get("new_invocation_id"):
        touched.append(new_id)
    return touched


def _roots(ids: list[str]) -> set[str]:
    rows = Invocation.objects.filter(id__in=ids).values_list("id", "root_id")
    return {root or inv_id for inv_id, root in rows} or set(ids)


def _lock_key(request_key: str) -> None:
    digest = int.from_bytes(hashlib.sha256(request_key.encode()).digest()[:8], "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [digest])


def _result_from_entry(entry: AuditEntry, *, replayed: bool) -> ActionResult:
    action = Action(entry.action)
    invocation_id = entry.targets[0]
    response = entry.response
    outcome = response.get("outcome", entry.outcome)
    return ActionResult(
        action=action,
        invocation_id=invocation_id,
        outcome=outcome,
        words=outcome_words(action=action, outcome=outcome),
        message=response.get("message", ""),
        http_status=response.get("http_status"),
        new_invocation_id=response.get("new_invocation_id"),
        cli=cli_command(action, invocation_id),
        curl=curl_command(action, invocation_id, admin_url=settings.RESTATE_ADMIN_URL),
        audit_id=entry.id,
        replayed=replayed,
    )
