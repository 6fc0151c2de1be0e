"""Attempts as the pages print them: the detail page's "Attempts" section (a table and a
strip of waiting / running / backing-off / suspended segments) and the segments each
waterfall row draws on the tree's axis. The splitting itself is pure
(`invocations.graph.attempts`); here are the words, the durations and the percentages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings

from invocations.graph import attempts as ga
from invocations.mirror.status import COMPLETION_FAILURE, NOT_STARTED
from invocations.reads.presenters.formatting import duration
from invocations.reads.selectors.spans import InvocationSpans, attempt_spans

KIND_WORDS = {
    ga.SCHEDULED: "scheduled",
    ga.INBOXED: "inboxed (queued behind its key's lock)",
    ga.QUEUED: "queued",
    ga.RUNNING: "running",
    ga.SUSPENDED: "suspended",
    ga.BACKING_OFF: "backing off",
    ga.PAUSED: "paused",
    ga.IN_PROGRESS: "then the next attempt, running now:",
}
# Running segments are coloured by how their attempt ended, like the waterfall's bars by
# status: a failure red, the attempt that completed the invocation green.
FAILED_ATTEMPT = "attempt-failed"
COMPLETED_ATTEMPT = "attempt-completed"
# The strip's legend, in the order a life goes through them.
LEGEND = [
    (ga.SCHEDULED, "scheduled"),
    (ga.INBOXED, "inboxed"),
    (ga.QUEUED, "queued"),
    (ga.RUNNING, "running (an attempt)"),
    (FAILED_ATTEMPT, "an attempt that failed"),
    (COMPLETED_ATTEMPT, "the attempt that completed it"),
    (ga.BACKING_OFF, "backing off after a failure"),
    (ga.SUSPENDED, "suspended"),
    (ga.PAUSED, "paused"),
    (ga.IN_PROGRESS, "attempt in progress"),
]


def times_of(obj: Any) -> ga.Times:
    """An Invocation or a tree node as the splitter reads it."""
    return ga.Times(
        status=obj.status,
        created_at=obj.created_at,
        scheduled_start_at=obj.scheduled_start_at,
        inboxed_at=getattr(obj, "inboxed_at", None),
        running_at=obj.running_at,
        completed_at=obj.completed_at,
    )


def failure_of(obj: Any) -> str | None:
    """The failure an invocation (or tree node) completed with; None unless it failed."""
    if obj.completion_result != COMPLETION_FAILURE:
        return None
    return obj.completion_failure or "failed"


def _deployment_text(deployment_id: str, address: str) -> str:
    if not deployment_id and not address:
        return ""
    return f"{deployment_id} ({address})" if deployment_id and address else deployment_id or address


def segment_title(s: ga.Segment, attempts: Mapping[int, ga.Attempt], *, now: datetime, deployment: bool = True) -> str:
    """The words for one segment: its hover text and what a screen reader says.
    deployment: name the attempt's deployment (the waterfall leaves it to the detail page:
    on 2,000 rows it would triple the page's size)."""
    took = duration(s.duration)
    if s.kind == ga.RUNNING and s.attempt is not None:
        a = attempts.get(s.attempt)
        text = f"attempt {s.attempt}: ran {took}, {s.note}"
        if deployment and a is not None and (dep := _deployment_text(a.deployment_id, a.deployment_address)):
            text += f", deployment {dep}"
        return text
    if s.kind == ga.IN_PROGRESS:
        return f"attempt {s.attempt}: in progress ({took} since the last attempt ended; its span arrives when it ends)"
    ongoing = " so far" if s.end >= now else ""
    return f"{KIND_WORDS.get(s.kind, s.kind)} {took}{ongoing}"


@dataclass(frozen=True, slots=True)
class SegmentView:
    kind: str
    left: float
    width: float
    title: str

    def __getitem__(self, name: str) -> Any:
        # The template engine tries `seg[name]` first (see WaterfallRow.__getitem__).
        return getattr(self, name)


def segment_views(
    plan: ga.Plan,
    start: datetime | None,
    end: datetime | None,
    *,
    now: datetime,
    failed: bool = False,
    deployment: bool = True,
) -> list[SegmentView]:
    """failed: the invocation completed with a failure (its last attempt is drawn red)."""
    by_number = {a.number: a for a in plan.attempts}
    out = []
    for p in ga.place(plan.segments, start, end):
        s = p.segment
        kind = s.kind
        if kind == ga.RUNNING and s.attempt is not None:
            outcome = by_number[s.attempt].outcome
            if outcome == ga.FAILED or (outcome == ga.COMPLETED and failed):
                kind = FAILED_ATTEMPT
            elif outcome == ga.COMPLETED:
                kind = COMPLETED_ATTEMPT
        out.append(SegmentView(kind, p.left, p.width, segment_title(s, by_number, now=now, deployment=deployment)))
    return out


@dataclass(frozen=True, slots=True)
class AttemptRow:
    number: int
    started_at: datetime
    since_created: str  # "+1.2 s" after the invocation was created
    took: str
    outcome: str  # completed / suspended / failed
    outcome_text: str  # "failed: transient failure"
    deployment_id: str
    deployment_address: str
    then: str  # what followed: "backing off 2.0 s", "suspended 4.1 s"; "" for the last


def _attempt_rows(plan: ga.Plan, created_at: datetime, failure: str | None) -> list[AttemptRow]:
    gaps = {s.start: s for s in plan.segments if s.kind != ga.RUNNING and not s.waiting}
    rows = []
    for a in plan.attempts:
        gap = gaps.get(a.ended_at)
        rows.append(
            AttemptRow(
                number=a.number,
                started_at=a.started_at,
                since_created=f"+{duration(max(a.started_at - created_at, timedelta(0)))}",
                took=duration(a.duration),
                outcome=a.outcome,
                outcome_text=(
                    f"completed: the invocation failed ({failure})"
                    if a.outcome == ga.COMPLETED and failure is not None
                    else a.outcome_text
                ),
                deployment_id=a.deployment_id,
                deployment_address=a.deployment_address,
                then=f"{KIND_WORDS[gap.kind]} {duration(gap.duration)}" if gap is not None else "",
            )
        )
    return rows


@dataclass(frozen=True)
class AttemptsView:
    kept: bool  # we hold some span of this invocation
    not_started: bool
    rows: list[AttemptRow]
    segments: list[SegmentView]
    start: datetime | None
    end: datetime | None
    more: int
    waited: str  # before the first attempt
    ran: str  # the attempts' running time, summed
    keep_text: str  # how long spans are kept

    @property
    def span(self) -> timedelta | None:
        return self.end - self.start if self.start and self.end else None


def _keep_text() -> str:
    return duration(timedelta(seconds=settings.SPANS_KEEP_S))


def attempts_view(inv: Any, *, now: datetime, spans: InvocationSpans | None = None) -> AttemptsView:
    """The detail page's section. `spans`: already read (else one query for this invocation)."""
    if spans is None:
        spans = attempt_spans([inv.id]).get(inv.id)
    not_started = inv.status in NOT_STARTED
    if spans is None:
        return AttemptsView(False, not_started, [], [], None, None, 0, "", "", _keep_text())
    plan = ga.plan(times_of(inv), spans.attempts, now=now, more=spans.more)
    waited = sum((s.duration for s in plan.segments if s.waiting), timedelta(0))
    ran = sum((a.duration for a in plan.attempts), timedelta(0))
    return AttemptsView(
        kept=True,
        not_started=not_started,
        rows=_attempt_rows(plan, inv.created_at, failure_of(inv)),
        segments=segment_views(plan, plan.start, plan.end, now=now, failed=failure_of(inv) is not None),
        start=plan.start,
        end=plan.end,
        more=plan.more,
        waited=duration(waited),
        ran=duration(ran),
        keep_text=_keep_text(),
    )


def legend() -> list[tuple[str, str]]:
    return LEGEND
