"""An invocation's life split into waiting and running, from Restate's attempt spans.

Pure: no Django, no database. The selector hands in the invocation's times and its
`invocation-attempt` spans (Restate exports one when an attempt ends: on completion,
on suspension, or on failure with status ERROR); this module turns them into
segments on a time line (waiting before the first attempt, each attempt's running
time, the gaps between attempts) and the attempts' table rows.

What a gap between attempts was is read from how the attempt before it ended: after
a failure Restate backs off before retrying; after an attempt that ended well but
was not the last, the invocation suspended (it waited on a call, a sleep, a promise)
and a later attempt resumed it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

# Segment kinds; the CSS colours each (templates print them as `seg-<kind>`).
SCHEDULED = "scheduled"  # a delayed send not fired yet
INBOXED = "inboxed"  # queued behind its virtual object key's lock
QUEUED = "queued"  # waiting to be picked up (no schedule, no lock)
RUNNING = "running"  # an attempt
SUSPENDED = "suspended"
BACKING_OFF = "backing-off"
PAUSED = "paused"
IN_PROGRESS = "in-progress"  # an attempt running now: its span arrives when it ends
WAITING_KINDS = frozenset({SCHEDULED, INBOXED, QUEUED})

# Attempt outcomes.
COMPLETED = "completed"
FAILED = "failed"
# An attempt that ended well and was not followed by completion (suspended).
ENDED_SUSPENDED = "suspended"

# The last attempt "completed the invocation" when Restate's completed_at follows its end
# by at most this: the end span and the status write are a few ms apart. Longer, and the
# invocation ended later without running (killed while suspended or backing off).
COMPLETION_SLACK = timedelta(seconds=1)
MAX_ATTEMPTS = 50  # drawn per invocation; the rest are counted ("+N more")


class SpanLike(Protocol):
    @property
    def started_at(self) -> datetime: ...
    @property
    def ended_at(self) -> datetime: ...
    @property
    def failed(self) -> bool: ...
    @property
    def message(self) -> str: ...
    @property
    def deployment_id(self) -> str: ...
    @property
    def deployment_address(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Times:
    """The invocation's own times and status (Restate's sys_invocation, as mirrored)."""

    status: str
    created_at: datetime
    scheduled_start_at: datetime | None = None
    inboxed_at: datetime | None = None
    running_at: datetime | None = None
    completed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    number: int  # 1-based
    started_at: datetime
    ended_at: datetime
    outcome: str  # COMPLETED, FAILED, ENDED_SUSPENDED
    message: str  # the failure message of a failed attempt
    deployment_id: str
    deployment_address: str

    @property
    def duration(self) -> timedelta:
        return self.ended_at - self.started_at

    @property
    def outcome_text(self) -> str:
        if self.outcome == FAILED:
            return f"failed: {self.message}" if self.message else "failed"
        return self.outcome


@dataclass(frozen=True, slots=True)
class Segment:
    kind: str
    start: datetime
    end: datetime
    attempt: int | None = None  # the attempt a running segment is; None for waits and gaps
    note: str = ""  # what ended it (a running segment) or what follows (an open end)

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    @property
    def waiting(self) -> bool:
        return self.kind in WAITING_KINDS


@dataclass(frozen=True, slots=True)
class Plan:
    segments: list[Segment]
    attempts: list[Attempt]
    more: int = 0  # attempts beyond those given (not drawn)

    @property
    def start(self) -> datetime | None:
        return self.segments[0].start if self.segments else None

    @property
    def end(self) -> datetime | None:
        return self.segments[-1].end if self.segments else None


def _gap_after(attempt: Attempt) -> str:
    return BACKING_OFF if attempt.outcome == FAILED else SUSPENDED


def _waits(inv: Times, until: datetime) -> list[Segment]:
    """Created -> `until` (the first attempt, or now): scheduled until it fired, then in
    its key's inbox from inboxed_at, any other time queued."""
    out: list[Segment] = []
    at = inv.created_at
    if inv.scheduled_start_at is not None and inv.scheduled_start_at > at:
        fired = min(inv.scheduled_start_at, until)
        if fired > at:
            out.append(Segment(SCHEDULED, at, fired))
            at = fired
    if inv.inboxed_at is not None and inv.inboxed_at < until:
        inboxed = max(inv.inboxed_at, at)
        if inboxed > at:
            out.append(Segment(QUEUED, at, inboxed))
        if until > inboxed:
            out.append(Segment(INBOXED, inboxed, until))
        return out
    if until > at:
        out.append(Segment(QUEUED, at, until))
    return out


def plan(inv: Times, spans: Sequence[SpanLike], *, now: datetime, more: int = 0) -> Plan:
    """Segments and attempts from `spans` (attempt spans, in any order; at most the first
    MAX_ATTEMPTS: `more` counts those left out, whose existence still says how the last
    given attempt ended)."""
    ordered = sorted(spans, key=lambda s: (s.started_at, s.ended_at))
    completed = inv.completed_at
    finish = completed or now
    attempts: list[Attempt] = []
    for i, s in enumerate(ordered):
        later = i + 1 < len(ordered) or more > 0
        if s.failed:
            outcome = FAILED
        elif not later and completed is not None and completed - s.ended_at <= COMPLETION_SLACK:
            outcome = COMPLETED
        else:
            outcome = ENDED_SUSPENDED
        attempts.append(
            Attempt(
                number=i + 1,
                started_at=s.started_at,
                ended_at=s.ended_at,
                outcome=outcome,
                message=s.message,
                deployment_id=s.deployment_id,
                deployment_address=s.deployment_address,
            )
        )

    if attempts:
        first_run = attempts[0].started_at
    elif inv.running_at is not None:
        first_run = inv.running_at
    elif completed is not None:
        first_run = completed  # ended without running (cancelled before it started)
    else:
        first_run = now  # still waiting
    segments = _waits(inv, min(first_run, finish))

    for i, a in enumerate(attempts):
        segments.append(Segment(RUNNING, a.started_at, a.ended_at, attempt=a.number, note=a.outcome_text))
        nxt = attempts[i + 1].started_at if i + 1 < len(attempts) else None
        if nxt is not None and nxt > a.ended_at:
            segments.append(Segment(_gap_after(a), a.ended_at, nxt))

    if more:
        return Plan(segments, attempts, more)  # what followed the last drawn attempt is not drawn
    tail_from = attempts[-1].ended_at if attempts else (first_run if first_run < finish else None)
    if tail_from is not None and finish > tail_from:
        last = attempts[-1] if attempts else None
        if completed is not None:
            # Ended after the last attempt we hold without another one (a kill while suspended
            # or backing off): the gap is what the attempt before it left.
            if last is not None and last.outcome != COMPLETED:
                segments.append(Segment(_gap_after(last), tail_from, finish))
        elif inv.status == "suspended":
            segments.append(Segment(SUSPENDED, tail_from, finish))
        elif inv.status == "backing-off":
            segments.append(Segment(BACKING_OFF, tail_from, finish))
        elif inv.status == "paused":
            segments.append(Segment(PAUSED, tail_from, finish))
        elif inv.status in ("running", "ready"):
            # Restate exports an attempt's span when it ends: this one is running now, after
            # whatever gap followed the last attempt we hold.
            segments.append(Segment(IN_PROGRESS, tail_from, finish, attempt=len(attempts) + 1, note="in progress"))
    return Plan(segments, attempts, more)


@dataclass(frozen=True, slots=True)
class Placed:
    """A segment on an axis, in percent."""

    segment: Segment
    left: float
    width: float


MIN_WIDTH = 0.25  # percent: a 3 ms attempt on a minute's axis still shows


def place(segments: Sequence[Segment], start: datetime | None, end: datetime | None) -> list[Placed]:
    """Each segment's left and width in percent of `start`..`end` (cut at its edges).
    Waits may shrink to nothing; attempts and gaps keep a sliver so each retry is seen."""
    if start is None or end is None or end <= start:
        return []
    span = (end - start).total_seconds()

    def pct(t: datetime) -> float:
        return min(max((t - start).total_seconds() / span * 100.0, 0.0), 100.0)

    out: list[Placed] = []
    for s in segments:
        left, right = pct(s.start), pct(s.end)
        width = right - left
        if not s.waiting:
            width = max(width, MIN_WIDTH)
            left = min(left, 100.0 - width)
        elif width <= 0:
            continue
        out.append(Placed(s, round(left, 3), round(width, 3)))
    return out
