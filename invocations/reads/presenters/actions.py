"""What an action's confirmation says, from our own copy: what it will do to this
invocation and to the ones below it, whether Restate allows it in the current
status, and the `restate`/`curl` lines that do the same."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from invocations.mirror.actions import Action, action_allowed, actions_allowed, cli_command, curl_command
from invocations.mirror.models import Invocation
from invocations.mirror.status import InvocationStatus
from invocations.reads.selectors import actions as selectors_actions
from invocations.reads.selectors import detail as selectors_detail

REACH_SHOWN = 50  # descendants listed by name; the rest are counted

# What each action does, in one sentence, whatever the invocation.
SUMMARY = {
    Action.CANCEL: "Cancels the invocation: Restate interrupts it at its next await point, and its handler runs "
    "its compensations (catch blocks, finally) before it completes as failed with [409] cancelled.",
    Action.KILL: "Kills the invocation at once: no compensation runs, no code of the handler runs again, "
    "and any state changes it made so far stay as they are. Use it when a cancel cannot get through.",
    Action.PAUSE: "Pauses the invocation: Restate stops running it (the current attempt is interrupted) and "
    "keeps its journal, until someone resumes it.",
    Action.RESUME: "Resumes the paused invocation: Restate runs it again from its journal on the next attempt.",
    Action.RETRY_NOW: "Retries the backing-off invocation now instead of waiting for its next retry time.",
    Action.RESTART_AS_NEW: "Starts a new invocation of the same handler with the same input; this one stays as it is.",
    Action.PURGE: "Purges the invocation from Restate: its journal, result and metadata are deleted.",
    Action.PURGE_JOURNAL: "Purges the invocation's journal from Restate and keeps its status and result.",
}

WHY_NOT = {
    Action.CANCEL: "it has already completed (purge it instead, to make Restate forget it)",
    Action.KILL: "it has already completed (purge it instead, to make Restate forget it)",
    Action.PAUSE: "Restate pauses only a running or backing-off invocation",
    Action.RESUME: "Restate resumes only a paused invocation (a scheduled or queued one has not started yet)",
    Action.RETRY_NOW: "only a backing-off invocation waits for a retry",
    Action.RESTART_AS_NEW: "Restate restarts only a completed invocation, and never a workflow",
    Action.PURGE: "Restate purges only a completed invocation (cancel or kill it first)",
    Action.PURGE_JOURNAL: "Restate purges the journal of a completed invocation only",
}


def action_parse(raw: str) -> Action | None:
    try:
        return Action(raw)
    except ValueError:
        return None


def _consequences(inv: Invocation, action: Action, reach: selectors_actions.Reach | None) -> list[str]:
    """What this action means for this invocation, beyond the summary."""
    out: list[str] = []
    if action is Action.CANCEL:
        if reach and reach.total:
            out.append(
                f"The cancellation also reaches {reach.total} invocation{'s' if reach.total != 1 else ''} it is "
                "waiting on through request-response calls (listed below); each runs its own compensations first, "
                "from the leaves up."
            )
        else:
            out.append("It waits on no unfinished call in our copy: only this invocation is cancelled.")
        out.append("Compensations run: what the handlers undo on cancellation shows up as new calls in the tree.")
    elif action is Action.KILL:
        if reach and reach.total:
            out.append(
                f"The kill also stops {reach.total} invocation{'s' if reach.total != 1 else ''} it is waiting on "
                "through request-response calls (listed below), without compensation."
            )
        out.append("No compensation runs anywhere in the tree; objects it locked are released as they are.")
    if action in (Action.CANCEL, Action.KILL) and reach is not None:
        if reach.detached:
            out.append(
                f"{reach.detached} one-way or delayed send{'s' if reach.detached != 1 else ''} from it "
                f"{'are' if reach.detached != 1 else 'is'} left alone: they are detached from the call tree and run on."
            )
        else:
            out.append("One-way and delayed sends are left alone (it has none that are unfinished).")
    if action is Action.PURGE:
        out.append("Its result can no longer be fetched or attached to, and Restate forgets its idempotency key.")
        out.append("Our copy keeps its row, marked as gone from Restate.")
    if action is Action.PURGE_JOURNAL:
        out.append(
            "The journal can no longer be read from Restate; its result stays fetchable until its retention ends."
        )
    if action is Action.RESTART_AS_NEW:
        out.append("The new invocation gets a new id (linked here once Restate answers); side effects run again.")
    if action is Action.CANCEL and inv.status == InvocationStatus.BACKING_OFF:
        out.append(
            "It is backing off: the cancellation reaches its handler at the next attempt's first await point. "
            "A handler that fails before any await keeps retrying; kill it instead."
        )
    if action is Action.PAUSE and inv.status == InvocationStatus.BACKING_OFF:
        out.append("It stops retrying until someone resumes it.")
    if action is Action.PAUSE and inv.service_type != "service":
        out.append("A paused object or workflow invocation keeps its key's lock: calls to that key queue behind it.")
    if action is Action.RESUME:
        out.append("If it keeps failing, it retries and may pause again under its retry policy.")
    if action is Action.RETRY_NOW and inv.next_retry_at:
        out.append("The retry counter is not reset; the next attempt starts right away.")
    return out


def confirmation_context(*, invocation_id: str, action: Action) -> dict[str, Any]:
    """The confirmation of `action` on one invocation. Raises InvocationNotFound."""
    inv = selectors_detail.invocation_get(invocation_id)
    allowed = action_allowed(action, status=inv.status, service_type=inv.service_type)
    reach = (
        selectors_actions.cancel_reach_get(inv.id, limit=REACH_SHOWN)
        if action in (Action.CANCEL, Action.KILL) and allowed
        else None
    )
    return {
        "inv": inv,
        "action": action,
        "allowed": allowed,
        "why_not": "" if allowed else WHY_NOT[action],
        "summary": SUMMARY[action],
        "consequences": _consequences(inv, action, reach) if allowed else [],
        "reach": reach,
        "reach_more": max((reach.total - len(reach.reached)) if reach else 0, 0),
        **commands_context(action=action, invocation_id=inv.id),
    }


def commands_context(*, action: Action, invocation_id: str) -> dict[str, Any]:
    return {
        "cli": cli_command(action, invocation_id),
        "curl": curl_command(action, invocation_id, admin_url=settings.RESTATE_ADMIN_URL),
    }


def menu_context(*, invocation_id: str) -> dict[str, Any]:
    """The actions Restate allows for one invocation now (a tree row's menu). Raises InvocationNotFound."""
    inv = selectors_detail.invocation_get(invocation_id)
    return {"inv": inv, "actions": actions_allowed(status=inv.status, service_type=inv.service_type)}


def result_context(*, invocation_id: str) -> dict[str, Any]:
    """What the result page shows around Restate's answer: the invocation as our copy holds it now."""
    return {"inv": selectors_detail.invocation_brief_get(invocation_id)}
