"""What can be done to an invocation, named once: the actions, the admin API
operation each one sends, and the statuses in which Restate accepts it (verified
on 1.7.12 by tests/test_operate_actions.py). Pages offer an action only where
this says Restate allows it; the bulk worker skips the rest without a call.

Restate also answers 2xx to a few no-ops that are not offered: resume of a running
invocation, pause of a paused one.
"""

from __future__ import annotations

from django.db import models

from invocations.mirror.status import InvocationStatus
from invocations.restate import Outcome as RestateOutcome

S = InvocationStatus
NOT_COMPLETED = frozenset(s for s in S if s is not S.COMPLETED)


class Action(models.TextChoices):
    # The value is the admin API's path segment, except RETRY_NOW: Restate's
    # `resume` also makes a backing-off invocation retry at once, and the audit
    # says which of the two the user meant.
    CANCEL = "cancel", "Cancel"
    KILL = "kill", "Kill"
    PAUSE = "pause", "Pause"
    RESUME = "resume", "Resume"
    RETRY_NOW = "retry-now", "Retry now"
    RESTART_AS_NEW = "restart-as-new", "Restart as new"
    PURGE = "purge", "Purge"
    PURGE_JOURNAL = "purge-journal", "Purge journal"

    @property
    def operation(self) -> str:
        """The admin API operation (`PATCH /invocations/{id}/<operation>`) that carries it."""
        return "resume" if self is Action.RETRY_NOW else self.value


ALLOWED_STATUSES: dict[Action, frozenset[InvocationStatus]] = {
    Action.CANCEL: NOT_COMPLETED,
    Action.KILL: NOT_COMPLETED,
    # 1.7.12 pauses a backing-off invocation too (202): it then waits for a resume
    # instead of its next retry. Scheduled and queued ones answer 409.
    Action.PAUSE: frozenset({S.RUNNING, S.BACKING_OFF}),
    Action.RESUME: frozenset({S.PAUSED}),
    Action.RETRY_NOW: frozenset({S.BACKING_OFF}),
    Action.RESTART_AS_NEW: frozenset({S.COMPLETED}),
    Action.PURGE: frozenset({S.COMPLETED}),
    Action.PURGE_JOURNAL: frozenset({S.COMPLETED}),
}

# Kill and purge destroy without a way back: the bulk form asks the user to type
# the action's name before it starts a job.
TYPED_CONFIRMATION = frozenset({Action.KILL, Action.PURGE, Action.PURGE_JOURNAL})


def action_allowed(action: Action, *, status: str, service_type: str = "") -> bool:
    """Whether Restate accepts `action` for an invocation in `status` (of `service_type`)."""
    if action is Action.RESTART_AS_NEW and service_type == "workflow":
        return False  # 422: Restate cannot restart a workflow as new
    return status in ALLOWED_STATUSES[action]


def actions_allowed(*, status: str, service_type: str = "") -> list[Action]:
    return [a for a in Action if action_allowed(a, status=status, service_type=service_type)]


def cli_command(action: Action, invocation_id: str) -> str | None:
    """The `restate` CLI line doing the same (None: the CLI has no such command)."""
    command = {
        Action.CANCEL: "cancel",
        Action.KILL: "cancel --kill",
        Action.PAUSE: "pause",
        Action.RESUME: "resume",
        Action.RETRY_NOW: "resume",
        Action.RESTART_AS_NEW: "restart-as-new",
        Action.PURGE: "purge",
    }.get(action)
    return None if command is None else f"restate invocations {command} --yes {invocation_id}"


def curl_command(action: Action, invocation_id: str, *, admin_url: str) -> str:
    return f"curl -X PATCH {admin_url.rstrip('/')}/invocations/{invocation_id}/{action.operation}"


# What the user reads for each of Restate's answers.
OUTCOME_WORDS = {
    RestateOutcome.DONE: "accepted",
    RestateOutcome.CONFLICT: "not allowed in this state",
    RestateOutcome.NOT_READY: "not allowed in this state",
    RestateOutcome.UNSUPPORTED: "not allowed for this invocation",
    RestateOutcome.NOT_FOUND: "unknown id",
    RestateOutcome.INVALID: "refused by Restate",
}
# Restate did not answer (down, timed out): it may or may not have applied the action.
UNREACHABLE = "unreachable"


def outcome_words(*, action: Action | str, outcome: str) -> str:
    """Restate's answer to `action`, in words."""
    if outcome == UNREACHABLE:
        return "Restate did not answer (it may or may not have applied it)"
    try:
        restate_outcome = RestateOutcome(outcome)
    except ValueError:
        return outcome
    if restate_outcome is RestateOutcome.CONFLICT and action in (Action.CANCEL, Action.KILL):
        return "already completed"
    return OUTCOME_WORDS[restate_outcome]
