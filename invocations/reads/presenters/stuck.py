""" "Why is this stuck?": the reason an unfinished invocation is not done, and what the
thing it waits on is itself waiting on, to the end of the chain; and /stuck/, every
unfinished invocation grouped by reason. The words are the templates'; this module
decides which facts apply (templates/invocations/_stuck.html, stuck.html)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.urls import reverse
from django.utils import timezone

from invocations.mirror.models import Deadlock, Invocation, WorkflowPromise
from invocations.mirror.status import InvocationStatus
from invocations.reads.presenters.formatting import iso_utc
from invocations.reads.presenters.invocation import retries
from invocations.reads.selectors import stuck as selectors
from invocations.reads.selectors import waits
from invocations.reads.selectors.stuck import OpenWait, PauseRecord, ReasonKind, StuckGroup, WaitKind
from invocations.reads.selectors.sync_state import sync_state_get

S = InvocationStatus
# Steps followed from a waiting invocation to what it waits on, and so on: a chain this
# long is worth reading on the page that ends it.
CHAIN_MAX = 12


@dataclass
class Reason:
    """Why one invocation is not done, with the facts its sentence needs."""

    kind: ReasonKind
    inv: Invocation
    # Queued: its place in the key's inbox and the lock holder it waits behind.
    place: waits.QueuePlace | None = None
    # Running or suspended: its open journal waits (the first named one is the reason).
    wait: OpenWait | None = None
    waits: list[OpenWait] = field(default_factory=list)
    wake_at: datetime | None = None  # a sleep's wake-up time
    promise: str | None = None  # a workflow promise's name ...
    promise_row: WorkflowPromise | None = None  # ... and our copy of it
    # Backing off: the attempts that failed (Restate's retry_count counts attempts).
    attempts: int = 0
    retries: int = 0
    # Paused: through us (who, when), else None.
    pause: PauseRecord | None = None
    deadlock: Deadlock | None = None
    deadlock_size: int = 0
    # The invocation this one waits on (a callee, an attached invocation, a lock holder).
    next_id: str | None = None

    @property
    def other_waits(self) -> list[OpenWait]:
        return [w for w in self.waits if w is not self.wait]

    @property
    def wait_target(self) -> str:
        """ "Service/key/handler" of the call it waits on."""
        target = self.wait.body.get("invocation_target") if self.wait is not None else None
        if not isinstance(target, dict) or not target:
            return ""
        t = next(iter(target.values()))
        if not isinstance(t, dict):
            return ""
        key = t.get("key")
        return f"{t.get('name', '?')}{'/' + str(key) if key is not None else ''}/{t.get('handler', '?')}"


@dataclass
class Explanation:
    """A reason, and the chain of what it waits on: each step waits on the next."""

    reason: Reason
    chain: list[Reason]
    # How the chain ends when it ends on no reason of its own: "completed" (the last one
    # finished; the result has not reached our copy yet), "missing" (not in our copy),
    # "loop" (it came back to an invocation already in the chain), "long" (CHAIN_MAX).
    end: str = ""
    end_id: str | None = None


def _ms(value: Any) -> datetime | None:
    if isinstance(value, int) and value > 0:
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    return None


def _reasons(invs: list[Invocation]) -> dict[str, Reason]:
    """The reasons of these unfinished invocations, with a few queries for all of them."""
    ids = [inv.id for inv in invs]
    memberships = waits.deadlock_memberships(invocation_ids=ids)
    places = waits.queue_places(invocation_ids=[inv.id for inv in invs if inv.status == S.PENDING])
    open_waits = selectors.open_waits(
        invocation_ids=[inv.id for inv in invs if inv.status in selectors.WAITING_STATUSES]
    )
    found: dict[str, Reason] = {}
    for inv in invs:
        reason = _reason(inv, membership=memberships.get(inv.id), place=places.get(inv.id), open_waits=open_waits)
        if reason is not None:
            found[inv.id] = reason
    return found


def _reason(
    inv: Invocation,
    *,
    membership: str | None,
    place: waits.QueuePlace | None,
    open_waits: dict[str, list[OpenWait]],
) -> Reason | None:
    if inv.status == S.COMPLETED:
        return None
    deadlock = selectors.deadlock_get(deadlock_id=membership) if membership is not None else None
    if deadlock is not None:
        return Reason(
            ReasonKind.DEADLOCK, inv, deadlock=deadlock, deadlock_size=selectors.deadlock_size(deadlock_id=deadlock.id)
        )
    if inv.status == S.SCHEDULED:
        return Reason(ReasonKind.SCHEDULED, inv)
    if inv.status == S.PENDING:
        return Reason(ReasonKind.QUEUED, inv, place=place, next_id=place.holder_id if place else None)
    if inv.status == S.BACKING_OFF:
        return Reason(ReasonKind.BACKING_OFF, inv, attempts=inv.retry_count or 0, retries=retries(inv.retry_count))
    if inv.status == S.PAUSED:
        return Reason(
            ReasonKind.PAUSED,
            inv,
            attempts=inv.retry_count or 0,
            pause=selectors.pause_record(invocation_id=inv.id),
        )
    if inv.status == S.READY:
        return Reason(ReasonKind.READY, inv)
    mine = open_waits.get(inv.id, [])
    kind, wait = selectors.waiting_reason(
        status=inv.status, waits=mine, journal_size=inv.journal_size, journal_synced_size=inv.journal_synced_size
    )
    reason = Reason(kind, inv, wait=wait, waits=mine)
    if wait is None:
        return reason
    if wait.kind in (WaitKind.CALL, WaitKind.ATTACH):
        reason.next_id = wait.callee_id
    elif wait.kind == WaitKind.SLEEP:
        reason.wake_at = _ms(wait.body.get("wake_up_time"))
    elif wait.kind == WaitKind.PROMISE:
        reason.promise = str(wait.body.get("key", ""))
        reason.promise_row = selectors.promise_get(service=inv.service_name, key=inv.service_key, name=reason.promise)
    return reason


def invocation_stuck(inv: Invocation) -> Explanation | None:
    """Why `inv` is not done, and the chain of what it waits on; None once it completed."""
    first = _reasons([inv]).get(inv.id)
    if first is None:
        return None
    explanation = Explanation(first, [])
    seen = {inv.id}
    step = first
    while step.next_id is not None:
        if step.next_id in seen:
            explanation.end, explanation.end_id = "loop", step.next_id
            break
        if len(explanation.chain) >= CHAIN_MAX:
            explanation.end, explanation.end_id = "long", step.next_id
            break
        seen.add(step.next_id)
        nxt = selectors.invocations_get(invocation_ids=[step.next_id]).get(step.next_id)
        if nxt is None:
            explanation.end, explanation.end_id = "missing", step.next_id
            break
        reason = _reasons([nxt]).get(nxt.id)
        if reason is None:
            explanation.end, explanation.end_id = "completed", nxt.id
            break
        explanation.chain.append(reason)
        if reason.kind == ReasonKind.DEADLOCK:
            break  # the deadlock's page tells the rest
        step = reason
    return explanation


# ---------------------------------------------------------------- /stuck/


def deadlocks_url(deadlock_id: str) -> str:
    """The deadlock's place on /deadlocks/."""
    return f"{reverse('invocations:deadlocks')}#deadlock-{deadlock_id}"


def _list_url(**params: Any) -> str:
    query = urlencode({k: v for k, v in params.items() if v not in (None, "", [])}, doseq=True)
    return f"{reverse('invocations:list')}?{query}"


# The list filter that shows a waiting group's members (beside status, service and handler).
_WAITING_FILTER = {
    ReasonKind.WAIT_CALL: WaitKind.CALL,
    ReasonKind.WAIT_PROMISE: WaitKind.PROMISE,
    ReasonKind.WAIT_ATTACH: WaitKind.ATTACH,
    ReasonKind.WAIT_SLEEP: WaitKind.SLEEP,
    ReasonKind.WAIT_RUN: WaitKind.RUN,
    ReasonKind.WAIT_SIGNAL: WaitKind.NONE,
    ReasonKind.RUNNING: WaitKind.NONE,
}


def group_list_url(group: StuckGroup, *, sampled_until: datetime | None = None) -> str:
    """The invocation list filtered to the group's members, oldest first.

    sampled_until: when /stuck/ read the journals of a sample only (the oldest running and
    suspended invocations, created up to then), a waiting group's list is bounded the same
    way: it shows what was counted, and reads the journals of no more invocations than the
    page did (the `waiting=` filter reads one journal per candidate)."""
    if group.reason == ReasonKind.DEADLOCK:
        return deadlocks_url(group.deadlock_id or "")
    if group.reason == ReasonKind.QUEUED:
        return _list_url(status=S.PENDING, service=group.service, key=group.key, sort="created")
    waiting = None if group.beyond_sample else _WAITING_FILTER.get(group.reason)
    before = after = None
    if sampled_until is not None and group.status in selectors.WAITING_STATUSES:
        # The sample: created up to `sampled_until` (the list's bounds: after >=, before <).
        line = iso_utc(sampled_until + timedelta(microseconds=1))
        after, before = (line, None) if group.beyond_sample else (None, line)
    return _list_url(
        status=group.status,
        service=group.service,
        handler=group.handler,
        error_code=group.error_code,
        waiting=waiting,
        created_after=after,
        created_before=before,
        sort="created",
    )


@dataclass
class Section:
    reason: ReasonKind
    count: int
    groups: int
    oldest_at: datetime | None
    rows: list[tuple[StuckGroup, str]]  # (group, its list link)

    @property
    def more(self) -> int:
        return self.groups - len(self.rows)


def stuck_context() -> dict[str, Any]:
    """/stuck/: a section per reason, oldest first, each with its groups, oldest first."""
    now = timezone.now()
    overview = selectors.stuck_overview()
    sections = [
        Section(
            reason=reason,
            count=totals.count,
            groups=totals.groups,
            oldest_at=totals.oldest_at,
            rows=[
                (g, group_list_url(g, sampled_until=overview.sampled_until)) for g in overview.groups.get(reason, [])
            ],
        )
        for reason, totals in overview.totals.items()
        if totals.count
    ]
    # Not-classified running/suspended ones have no known age: they go last, as do ages unknown.
    sections.sort(key=lambda s: (s.oldest_at is None, s.oldest_at or now, s.reason))
    sync = sync_state_get()
    return {
        "now": now,
        "sections": sections,
        "total": sum(s.count for s in sections),
        "overview": overview,
        "sample_size": selectors.WAIT_SAMPLE,
        "unclassified": overview.waiting_total - overview.waiting_classified,
        "truncated": sync.truncated_snapshots,
        "queues_supported": sync.queues_supported,
    }
