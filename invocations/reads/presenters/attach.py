"""The attach panel in words: what the shared wait is doing, its result (pretty,
bounded), and whether this invocation's result can still be fetched after it completes."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from invocations.mirror.models import Invocation
from invocations.mirror.status import InvocationStatus
from invocations.reads.presenters.invocation import idempotency_origin
from invocations.reads.presenters.payloads import Payload, format_payload
from invocations.records.models import AttachState, AttachWait
from invocations.restate import WORKFLOW_MAIN_HANDLER

_ISO = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")
# What our copy holds when the sync read it through Arrow (a duration, as Python prints one).
_PY = re.compile(r"^(?:(\d+) days?,? )?(\d+):(\d\d):(\d\d(?:\.\d+)?)$")


def retention_duration(raw: str | None) -> timedelta | None:
    """Restate's retention as our copy holds it (`PT86400S`, `P1DT2H`, `1 day 0:00:00`);
    None when absent or not understood."""
    raw = (raw or "").strip()
    if (match := _ISO.match(raw)) or (match := _PY.match(raw)):
        days, hours, minutes, seconds = (float(g or 0) for g in match.groups())
    else:
        return None
    if not raw or raw == "P":
        return None
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def retention_words(delta: timedelta) -> str:
    """A retention as Restate users set it: "1 day", "2 h", "30 min", "45 s"."""
    seconds = int(delta.total_seconds())
    if seconds % 86400 == 0 and seconds >= 86400:
        days = seconds // 86400
        return "1 day" if days == 1 else f"{days} days"
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def is_workflow_run(inv: Invocation | None) -> bool:
    return bool(
        inv is not None
        and inv.service_type == "workflow"
        and inv.handler_name == WORKFLOW_MAIN_HANDLER
        and inv.service_key is not None
    )


def fetch_note(inv: Invocation | None) -> str:
    """Whether the result can be fetched after completion, or only waited for.

    Restate's rule (DESIGN: "without a user key: can only wait") dates from before 1.2;
    1.7 keeps every invocation's result for its completion retention, keyed or not,
    so the note says what Restate reported for this invocation.
    """
    if inv is None:
        return ""
    if is_workflow_run(inv):
        return f"A workflow run: attached by its workflow id ({inv.service_name}/{inv.service_key})."
    if idempotency_origin(inv) == "set by the caller":
        return (
            "The caller set an idempotency key: the result can be fetched after completion, while Restate retains it."
        )
    retention = retention_duration(inv.completion_retention)
    if retention and retention > timedelta(0):
        until = f" (until {inv.completed_at + retention:%Y-%m-%d %H:%M} UTC)" if inv.completed_at else ""
        return (
            "The caller set no idempotency key: the result can be waited for. This Restate also keeps it "
            f"for {retention_words(retention)} after completion (its completion retention){until}; after that it "
            "can no longer be fetched."
        )
    return "The caller set no idempotency key: the result can be waited for, but not fetched after completion."


@dataclass(frozen=True)
class AttachPanel:
    invocation_id: str
    state: str  # "" (no wait yet) or an AttachState
    headline: str
    detail: str
    note: str
    value: Payload | None
    started_at: datetime | None
    finished_at: datetime | None
    requested_by: str
    offer_attach: bool  # show the button: nothing waits and there is no result yet
    in_copy: bool = True  # our copy holds the invocation (it has a detail page)

    @property
    def waiting(self) -> bool:
        return self.state == AttachState.WAITING


def _failure_text(wait: AttachWait) -> str:
    try:
        body = json.loads(wait.body)
    except ValueError:
        return wait.body.strip()[:2000]
    if isinstance(body, dict) and "message" in body:
        code = body.get("code")
        return f"[{code}] {body['message']}" if code is not None else str(body["message"])
    return wait.body.strip()[:2000]


def attach_panel(*, invocation_id: str, wait: AttachWait | None, inv: Invocation | None) -> AttachPanel:
    note = fetch_note(inv)
    if wait is None:
        completed = inv is not None and inv.status == InvocationStatus.COMPLETED
        return AttachPanel(
            invocation_id,
            "",
            "Fetch the result" if completed else "Wait for the result",
            "Completed: its result is fetched from Restate at once."
            if completed
            else "One wait on Restate, shared by everyone attached; it goes on when you leave or reload.",
            note,
            None,
            None,
            None,
            "",
            True,
        )
    state = wait.state
    value = None
    detail = wait.message
    if state == AttachState.WAITING:
        headline = "Waiting for the result"
        detail = wait.message or "One wait on Restate, shared by everyone attached; the result appears here."
    elif state == AttachState.SUCCEEDED:
        headline = "Succeeded"
        value = format_payload(wait.body)
        detail = "The result was cut at 64 KiB." if wait.body_truncated else ""
    elif state == AttachState.FAILED:
        headline = "Failed"
        detail = _failure_text(wait)
    elif state == AttachState.NOT_FOUND:
        headline = "Purged or expired"
        detail = wait.message or "The result can no longer be fetched."
    elif state == AttachState.UNAVAILABLE:
        headline = "Result not retrievable"
    else:
        headline = "Could not wait"
    return AttachPanel(
        invocation_id,
        state,
        headline,
        detail,
        note,
        value,
        wait.started_at,
        wait.finished_at,
        wait.requested_by,
        state in (AttachState.ERROR, AttachState.UNAVAILABLE),
    )


def attach_panel_for(*, invocation_id: str, inv: Invocation | None = None) -> AttachPanel:
    """The panel as it is now (the page, the attach view, and the socket's push)."""
    from invocations.reads.selectors.attach import attach_invocation_get, attach_wait_get

    if inv is None:
        inv = attach_invocation_get(invocation_id)
    panel = attach_panel(invocation_id=invocation_id, wait=attach_wait_get(invocation_id), inv=inv)
    return replace(panel, in_copy=inv is not None)
