"""Why unfinished invocations are not done yet, read from our copy.

Most reasons are columns Restate gives us (status, retry fields, the fire time of a
delayed send) or tables we mirror (queues, locks, the stored deadlocks). What a
running or suspended invocation waits on is only in its journal: a command that
waits for a completion (a call's result, a sleep, a workflow promise, an attach, a
`ctx.run`) with no notification carrying that completion id yet. Verified against
restate-server 1.7.12 (journal v2, entry_lite_json):

    {"Command": {"Sleep": {"wake_up_time": <epoch ms>, "completion_id": 1}}}
    {"Command": {"GetPromise": {"key": "confirmed", "completion_id": 1}}}
    {"Command": {"Call": {"invocation_id": "inv_...", "invocation_target": {...},
                          "invocation_id_completion_id": 1, "result_completion_id": 2}}}
    {"Command": {"AttachInvocation": {"target": {"InvocationId": "inv_..."}, "completion_id": 1}}}
    {"Command": {"Run": {"completion_id": 1, "name": "slow-step"}}}
    done by {"Notification": {"ty": {"Completion": "Sleep"}, "id": {"CompletionId": 1}, ...}}

An awakeable leaves no command at all (it is a signal, index 17 and up): Restate
names it only in `sys_invocation.suspended_waiting_for_signals`, a column our copy
does not keep. A suspended invocation whose whole journal we hold and that has no
open wait is therefore waiting on an awakeable or another signal, and the pages say
exactly that rather than more.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.contrib.postgres.fields import ArrayField
from django.db import connection, models
from django.db.models import Exists, F, Func, OuterRef, Q, QuerySet, Value
from django.db.models.lookups import Exact, GreaterThan

from invocations.mirror.actions import Action
from invocations.mirror.models import (
    Deadlock,
    DeadlockMember,
    Invocation,
    JournalEntry,
    ObjectLock,
    WorkflowPromise,
)
from invocations.mirror.status import InvocationStatus
from invocations.records.models import AuditEntry, AuditKind, BulkJobItem, ItemState
from invocations.restate import Outcome as RestateOutcome

S = InvocationStatus


class WaitKind(models.TextChoices):
    """What an open journal command waits for (the list filter `waiting=`)."""

    CALL = "call", "a call's result"
    PROMISE = "promise", "a workflow promise"
    ATTACH = "attach", "another invocation's result (attach)"
    SLEEP = "sleep", "a timer (sleep)"
    RUN = "run", "a side effect (ctx.run)"
    # No open command in the journal we hold: running and not waiting, or (suspended)
    # waiting on something the journal does not name, an awakeable or another signal.
    NONE = "none", "nothing its journal names"


# Journal commands that wait for a completion: the body field with its completion id, and
# what the wait is. Call's `invocation_id_completion_id` only hands over the callee's id.
# The SQL function stuck_open_waits (migration 0012) knows the same fields: a new entry
# here with another field needs the function replaced too.
AWAITED: dict[str, tuple[str, WaitKind]] = {
    "Call": ("result_completion_id", WaitKind.CALL),
    "GetPromise": ("completion_id", WaitKind.PROMISE),
    "AttachInvocation": ("completion_id", WaitKind.ATTACH),
    "Sleep": ("completion_id", WaitKind.SLEEP),
    "Run": ("completion_id", WaitKind.RUN),
}
AWAITED_TYPES = [f"Command: {name}" for name in AWAITED]
# When an invocation waits on several things at once, the first kind here is the reason;
# a sleep comes last because beside another wait it is usually that wait's timeout.
WAIT_PRIORITY = [WaitKind.CALL, WaitKind.PROMISE, WaitKind.ATTACH, WaitKind.RUN, WaitKind.SLEEP]


@dataclass(frozen=True)
class OpenWait:
    """A journal command still waiting for its completion."""

    invocation_id: str
    index: int
    command: str  # "Sleep", "Call", ...
    kind: WaitKind
    appended_at: datetime | None
    body: dict[str, Any] = field(hash=False, compare=False)

    @property
    def callee_id(self) -> str | None:
        """The invocation a call or an attach waits on."""
        if self.kind == WaitKind.CALL:
            return self.body.get("invocation_id")
        if self.kind == WaitKind.ATTACH:
            target = self.body.get("target")
            return target.get("InvocationId") if isinstance(target, dict) else None
        return None


# The SQL function (migration 0012) that says which of an invocation's commands still wait.
OPEN_WAITS_FUNCTION = "stuck_open_waits"


def open_waits(*, invocation_ids: Iterable[str]) -> dict[str, list[OpenWait]]:
    """The open waits of each of `invocation_ids` that has any, in journal order (one query)."""
    ids = list(dict.fromkeys(invocation_ids))
    if not ids:
        return {}
    journal = JournalEntry._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.invocation_id, c.index, c.entry_type, c.appended_at, c.entry_lite "
            f"FROM unnest(%s::text[]) AS inv(id) CROSS JOIN LATERAL unnest({OPEN_WAITS_FUNCTION}(inv.id, %s::text[])) AS w(idx) "
            f"JOIN {journal} c ON c.invocation_id = inv.id AND c.index = w.idx",
            [ids, AWAITED_TYPES],
        )
        rows = cursor.fetchall()
    found: dict[str, list[OpenWait]] = defaultdict(list)
    for inv_id, index, entry_type, appended_at, lite in sorted(rows, key=lambda r: (r[0], r[1])):
        wait = _open_wait(inv_id, index, entry_type, appended_at, lite)
        if wait is not None:
            found[inv_id].append(wait)
    return dict(found)


def _open_wait(inv_id: str, index: int, entry_type: str, appended_at: datetime | None, lite: Any) -> OpenWait | None:
    command = entry_type.removeprefix("Command: ")
    if command not in AWAITED:
        return None
    if isinstance(lite, str):  # psycopg decodes jsonb; a string here is the raw text
        lite = json.loads(lite)
    body = lite.get("Command", {}).get(command, {}) if isinstance(lite, dict) else {}
    return OpenWait(
        invocation_id=inv_id,
        index=index,
        command=command,
        kind=AWAITED[command][1],
        appended_at=appended_at,
        body=body if isinstance(body, dict) else {},
    )


def primary_wait(waits: list[OpenWait]) -> OpenWait | None:
    """The wait that names the reason, by WAIT_PRIORITY (the earliest of a kind first)."""
    for kind in WAIT_PRIORITY:
        for wait in waits:
            if wait.kind == kind:
                return wait
    return None


def waiting_q(kind: str) -> Q:
    """Running or suspended invocations with an open wait of `kind` in the journal we hold;
    `none`: with no open wait. Only those wait: a killed invocation keeps its last command
    open forever. The status comes first, so a count per status (the list's chips) of any
    other status is empty at once (the btree sees the contradiction), and the journal is
    read for running and suspended invocations only, one lookup each."""
    commands = (
        AWAITED_TYPES if kind == WaitKind.NONE else [f"Command: {n}" for n, (_, k) in AWAITED.items() if k == kind]
    )
    open_count = Func(
        Func(
            F("id"),
            Value(commands, output_field=ArrayField(models.TextField())),
            function=OPEN_WAITS_FUNCTION,
            output_field=ArrayField(models.IntegerField()),
        ),
        function="cardinality",
        output_field=models.IntegerField(),
    )
    journal_says: Exact | GreaterThan = Exact(open_count, 0) if kind == WaitKind.NONE else GreaterThan(open_count, 0)
    return Q(status__in=WAITING_STATUSES) & Q(journal_says)


# ---------------------------------------------------------------- facts for one invocation


@dataclass(frozen=True)
class PauseRecord:
    """A pause sent through this dashboard that Restate accepted."""

    username: str
    at: datetime
    bulk_job_id: int | None


def pause_record(*, invocation_id: str) -> PauseRecord | None:
    """The pause behind this invocation's current pause, when it went through us: the latest
    pause/resume we sent for it (audit_targets_gin), if that was an accepted pause."""
    entry = (
        AuditEntry.objects.filter(
            targets__contains=[invocation_id], action__in=[Action.PAUSE, Action.RESUME, Action.RETRY_NOW]
        )
        .order_by("-id")
        .first()
    )
    if entry is None or entry.action != Action.PAUSE:
        return None
    if entry.kind == AuditKind.BULK_BATCH:
        # A batch's entry names every target; the item says whether this one was accepted.
        accepted = BulkJobItem.objects.filter(
            job_id=entry.job_id, invocation_id=invocation_id, state=ItemState.SUCCEEDED
        ).exists()
        return PauseRecord(entry.username, entry.at, entry.job_id) if accepted else None
    return PauseRecord(entry.username, entry.at, None) if entry.outcome == RestateOutcome.DONE else None


def invocations_get(*, invocation_ids: Iterable[str]) -> dict[str, Invocation]:
    return {inv.id: inv for inv in Invocation.objects.filter(id__in=list(invocation_ids))}


def deadlock_get(*, deadlock_id: str) -> Deadlock | None:
    return Deadlock.objects.filter(id=deadlock_id).first()


def deadlock_size(*, deadlock_id: str) -> int:
    return DeadlockMember.objects.filter(deadlock_id=deadlock_id).count()


def promise_get(*, service: str, key: str | None, name: str) -> WorkflowPromise | None:
    """A workflow's durable promise as our copy of `sys_promise` holds it (Restate lists one as
    soon as something awaits it, `completed` false until it is resolved)."""
    if key is None:
        return None
    return WorkflowPromise.objects.filter(service_name=service, service_key=key, key=name).first()


# ---------------------------------------------------------------- /stuck/: groups


class ReasonKind(models.TextChoices):
    """Why an unfinished invocation is not done: the sections of /stuck/."""

    DEADLOCK = "deadlock", "Part of a deadlock"
    QUEUED = "queued", "Queued behind a lock holder"
    BACKING_OFF = "backing-off", "Backing off after failures"
    PAUSED = "paused", "Paused"
    SCHEDULED = "scheduled", "Scheduled for later"
    READY = "ready", "Ready, not started"
    WAIT_CALL = "wait-call", "Waiting for a call's result"
    WAIT_PROMISE = "wait-promise", "Waiting for a workflow promise"
    WAIT_ATTACH = "wait-attach", "Waiting for another invocation (attach)"
    WAIT_SIGNAL = "wait-signal", "Waiting for an awakeable or a signal"
    WAIT_SLEEP = "wait-sleep", "Sleeping"
    WAIT_RUN = "wait-run", "Running a side effect (ctx.run)"
    RUNNING = "running", "Running, waiting on nothing"
    UNKNOWN = "unknown", "Not known from our copy"


WAIT_REASONS = {
    WaitKind.CALL: ReasonKind.WAIT_CALL,
    WaitKind.PROMISE: ReasonKind.WAIT_PROMISE,
    WaitKind.ATTACH: ReasonKind.WAIT_ATTACH,
    WaitKind.SLEEP: ReasonKind.WAIT_SLEEP,
    WaitKind.RUN: ReasonKind.WAIT_RUN,
}
# Reasons read from the status alone (one grouped query), and the journal-free statuses.
STATUS_REASONS = {
    S.BACKING_OFF: ReasonKind.BACKING_OFF,
    S.PAUSED: ReasonKind.PAUSED,
    S.SCHEDULED: ReasonKind.SCHEDULED,
    S.READY: ReasonKind.READY,
}
WAITING_STATUSES = (S.RUNNING, S.SUSPENDED)
# Groups listed per reason on /stuck/; the rest are counted.
GROUPS_SHOWN = 20
# Running and suspended invocations whose journals are read to tell what they wait on,
# the oldest first; past this they are counted by status and not classified.
WAIT_SAMPLE = 2000


@dataclass
class StuckGroup:
    """Invocations stuck for one reason on one target (or key, or error code)."""

    reason: ReasonKind
    count: int
    oldest_at: datetime | None  # the longest-standing member's `since` (see the reason's label)
    service: str = ""
    handler: str = ""
    key: str | None = None  # an object key (queued) ...
    error_code: str | None = None  # ... Restate's error code (backing off)
    status: str = ""  # the status the members are in (waits: running or suspended)
    holder_id: str | None = None  # the key's lock holder (queued)
    next_at: datetime | None = None  # earliest fire time / next retry of the group
    deadlock_id: str | None = None
    member_ids: list[str] = field(default_factory=list)  # a deadlock's members, in wait order
    member_targets: list[str] = field(default_factory=list)  # their targets, in the same order

    @property
    def member_pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.member_ids, self.member_targets, strict=False))

    example_id: str | None = None  # the oldest member
    beyond_sample: bool = False  # running/suspended ones whose journals were not read (see WAIT_SAMPLE)


@dataclass
class ReasonTotals:
    """How many invocations one reason holds and how many groups it has."""

    count: int = 0
    groups: int = 0
    oldest_at: datetime | None = None


@dataclass
class StuckOverview:
    groups: dict[ReasonKind, list[StuckGroup]]  # shown groups per reason, oldest first
    totals: dict[ReasonKind, ReasonTotals]
    waiting_total: int  # running + suspended outside deadlocks
    waiting_classified: int  # of them, how many were classified from their journals (the sample)
    # When the sample did not reach every one: the creation time of its newest, the line
    # between the classified (created up to it) and the rest.
    sampled_until: datetime | None
    deadlocked: int  # invocations in current deadlocks (listed under their deadlock only)


def _current_members() -> QuerySet[DeadlockMember]:
    return DeadlockMember.objects.filter(deadlock__resolved_at__isnull=True)


def stuck_overview(*, sample: int | None = None, shown: int = GROUPS_SHOWN) -> StuckOverview:
    """Every unfinished invocation of our copy, grouped by why it is not done (`sample`:
    how many running/suspended journals to read, WAIT_SAMPLE by default)."""
    sample = WAIT_SAMPLE if sample is None else sample
    groups: dict[ReasonKind, list[StuckGroup]] = defaultdict(list)
    totals: dict[ReasonKind, ReasonTotals] = defaultdict(ReasonTotals)
    deadlocked = _deadlock_groups(groups, totals)
    _status_groups(groups, totals, shown=shown)
    _queue_groups(groups, totals, shown=shown)
    waiting_total, classified, sampled_until = _waiting_groups(groups, totals, sample=sample, shown=shown)
    return StuckOverview(
        groups=dict(groups),
        totals=dict(totals),
        waiting_total=waiting_total,
        waiting_classified=classified,
        sampled_until=sampled_until if waiting_total > classified else None,
        deadlocked=deadlocked,
    )


def _deadlock_groups(groups: dict[ReasonKind, list[StuckGroup]], totals: dict[ReasonKind, ReasonTotals]) -> int:
    members: dict[str, list[str]] = defaultdict(list)
    for deadlock_id, inv_id in (
        _current_members().order_by("deadlock_id", "position").values_list("deadlock_id", "invocation_id")
    ):
        members[deadlock_id].append(inv_id)
    current = Deadlock.objects.filter(id__in=list(members)).order_by(F("since").asc(nulls_last=True), "detected_at")
    # Members of one tree share their id's first characters: their targets tell them apart.
    targets = dict(
        Invocation.objects.filter(id__in=[m for ids in members.values() for m in ids]).values_list("id", "target")
    )
    total = totals[ReasonKind.DEADLOCK]
    for deadlock in current:
        ids = members[deadlock.id]
        since = deadlock.since or deadlock.detected_at
        groups[ReasonKind.DEADLOCK].append(
            StuckGroup(
                reason=ReasonKind.DEADLOCK,
                count=len(ids),
                oldest_at=since,
                deadlock_id=deadlock.id,
                member_ids=ids,
                member_targets=[targets.get(m, m) for m in ids],
                example_id=deadlock.suggested_id,
            )
        )
        total.count += len(ids)
        total.groups += 1
        total.oldest_at = min(filter(None, [total.oldest_at, since]), default=None)
    if not total.groups:
        del totals[ReasonKind.DEADLOCK]
    return total.count


def _not_deadlocked(alias: str) -> str:
    """SQL: the invocation `alias` is in no current deadlock (those are listed under their deadlock)."""
    member, deadlock = DeadlockMember._meta.db_table, Deadlock._meta.db_table
    return (
        f"NOT EXISTS (SELECT 1 FROM {member} m JOIN {deadlock} d ON d.id = m.deadlock_id "
        f"WHERE m.invocation_id = {alias}.id AND d.resolved_at IS NULL)"
    )


# Groups numbered within their reason, oldest first, with the reason's totals over every group:
# only the first `shown` of each come back, whatever their number.
_NUMBERED = (
    "SELECT * FROM (SELECT g.*, row_number() OVER (PARTITION BY part ORDER BY oldest, a, b, c) AS rn, "
    "count(*) OVER (PARTITION BY part) AS n_groups, (sum(n) OVER (PARTITION BY part))::bigint AS n_total, "
    "min(oldest) OVER (PARTITION BY part) AS oldest_all FROM ({grouped}) g) r WHERE rn <= %s ORDER BY part, rn"
)


def _status_groups(
    groups: dict[ReasonKind, list[StuckGroup]], totals: dict[ReasonKind, ReasonTotals], *, shown: int
) -> None:
    """Backing off (per target and error code), paused, scheduled and ready (per target): one
    query, grouped in PostgreSQL over inv_stuck_idx."""
    inv = Invocation._meta.db_table
    grouped = (
        "SELECT status AS part, service_name AS a, handler_name AS b, "
        "CASE WHEN status = %s THEN last_failure_error_code END AS c, count(*) AS n, "
        # Paused: since it was paused (its last change); the others since they were created.
        "min(CASE WHEN status = %s THEN modified_at ELSE created_at END) AS oldest, "
        "min(CASE WHEN status = %s THEN scheduled_start_at ELSE next_retry_at END) AS next_at, "
        "min(id) AS example "
        f"FROM {inv} i WHERE status = ANY(%s) AND gone_from_restate_at IS NULL AND {_not_deadlocked('i')} "
        "GROUP BY 1, 2, 3, 4"
    )
    with connection.cursor() as cursor:
        cursor.execute(
            _NUMBERED.format(grouped=grouped),
            [S.BACKING_OFF.value, S.PAUSED.value, S.SCHEDULED.value, [s.value for s in STATUS_REASONS], shown],
        )
        names = [c.name for c in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    for row in rows:
        reason = STATUS_REASONS[S(row["part"])]
        totals[reason] = ReasonTotals(count=row["n_total"], groups=row["n_groups"], oldest_at=row["oldest_all"])
        groups[reason].append(
            StuckGroup(
                reason=reason,
                count=row["n"],
                oldest_at=row["oldest"],
                service=row["a"],
                handler=row["b"],
                error_code=row["c"],
                status=row["part"],
                next_at=row["next_at"],
                example_id=row["example"],
            )
        )


def _queue_groups(
    groups: dict[ReasonKind, list[StuckGroup]], totals: dict[ReasonKind, ReasonTotals], *, shown: int
) -> None:
    """Queued (pending) invocations per object key, with the key's lock holder. Read from the
    status (inv_stuck_idx) rather than our queue snapshot, so a pending invocation the
    snapshot misses (truncated, or Restate's vqueues) is still counted."""
    inv, lock = Invocation._meta.db_table, ObjectLock._meta.db_table
    grouped = (
        "SELECT 'q' AS part, i.service_name AS a, i.service_key AS b, l.invocation_id AS c, count(*) AS n, "
        "min(coalesce(i.inboxed_at, i.created_at)) AS oldest, min(i.id) AS example "
        f"FROM {inv} i LEFT JOIN {lock} l ON l.service_name = i.service_name AND l.service_key = i.service_key "
        f"WHERE i.status = %s AND i.gone_from_restate_at IS NULL AND {_not_deadlocked('i')} "
        "GROUP BY 2, 3, 4"
    )
    with connection.cursor() as cursor:
        cursor.execute(_NUMBERED.format(grouped=grouped), [S.PENDING.value, shown])
        names = [c.name for c in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    for row in rows:
        totals[ReasonKind.QUEUED] = ReasonTotals(
            count=row["n_total"], groups=row["n_groups"], oldest_at=row["oldest_all"]
        )
        groups[ReasonKind.QUEUED].append(
            StuckGroup(
                reason=ReasonKind.QUEUED,
                count=row["n"],
                oldest_at=row["oldest"],
                service=row["a"],
                key=row["b"],
                holder_id=row["c"],
                status=S.PENDING,
                example_id=row["example"],
            )
        )


def waiting_reason(
    *, status: str, waits: list[OpenWait], journal_size: int, journal_synced_size: int
) -> tuple[ReasonKind, OpenWait | None]:
    """What a running or suspended invocation waits on, from the open waits of its journal."""
    wait = primary_wait(waits)
    if wait is not None:
        return WAIT_REASONS[wait.kind], wait
    if journal_synced_size < journal_size:
        return ReasonKind.UNKNOWN, None  # the open command may be in the part we do not hold yet
    if status == S.SUSPENDED:
        return ReasonKind.WAIT_SIGNAL, None
    return ReasonKind.RUNNING, None


def _waiting_groups(
    groups: dict[ReasonKind, list[StuckGroup]],
    totals: dict[ReasonKind, ReasonTotals],
    *,
    sample: int,
    shown: int,
) -> tuple[int, int, datetime | None]:
    """Running and suspended invocations by what their journals say they wait on: the `sample`
    oldest are classified (their open waits, one query on the journal's primary key), the rest
    counted per status and target as not classified. Returns how many there are, how many were
    classified, and the creation time of the newest classified."""
    base = (
        Invocation.objects.filter(status__in=WAITING_STATUSES, gone_from_restate_at__isnull=True)
        .alias(deadlocked=Exists(_current_members().filter(invocation_id=OuterRef("id"))))
        .filter(deadlocked=False)
    )
    rows = list(
        base.order_by("created_at", "id").values(
            "id",
            "status",
            "service_name",
            "handler_name",
            "created_at",
            "modified_at",
            "journal_size",
            "journal_synced_size",
        )[:sample]
    )
    waits = open_waits(invocation_ids=[r["id"] for r in rows])
    classified: dict[tuple[ReasonKind, str, str, str], StuckGroup] = {}
    for row in rows:
        reason, wait = waiting_reason(
            status=row["status"],
            waits=waits.get(row["id"], []),
            journal_size=row["journal_size"],
            journal_synced_size=row["journal_synced_size"],
        )
        since = (wait.appended_at if wait is not None else None) or row["modified_at"]
        key = (reason, row["status"], row["service_name"], row["handler_name"])
        group = classified.get(key)
        if group is None:
            group = classified[key] = StuckGroup(
                reason=reason,
                count=0,
                oldest_at=since,
                service=row["service_name"],
                handler=row["handler_name"],
                status=row["status"],
                example_id=row["id"],
            )
        group.count += 1
        if since is not None and (group.oldest_at is None or since < group.oldest_at):
            group.oldest_at, group.example_id = since, row["id"]
    total = len(rows)
    if len(rows) == sample:
        # Maybe more than the sample: count every one per status and target (one grouped
        # query), and what the sample did not classify is a group of its own per target.
        sampled: dict[tuple[str, str, str], int] = defaultdict(int)
        for row in rows:
            sampled[(row["status"], row["service_name"], row["handler_name"])] += 1
        total = 0
        everyone = base.values("status", "service_name", "handler_name").annotate(n=models.Count("id"))
        for r in everyone.order_by():
            total += r["n"]
            rest = r["n"] - sampled[(r["status"], r["service_name"], r["handler_name"])]
            if rest > 0:
                # Keyed apart from a sampled "unknown" group of the same target (journal not copied yet).
                classified[(ReasonKind.UNKNOWN, r["status"], r["service_name"], "\0" + r["handler_name"])] = StuckGroup(
                    reason=ReasonKind.UNKNOWN,
                    count=rest,
                    oldest_at=None,  # newer than the sample's newest: not read
                    service=r["service_name"],
                    handler=r["handler_name"],
                    status=r["status"],
                    beyond_sample=True,
                )
    by_reason: dict[ReasonKind, list[StuckGroup]] = defaultdict(list)
    for group in classified.values():
        by_reason[group.reason].append(group)
    for reason, found in by_reason.items():
        found.sort(key=lambda g: (g.oldest_at is None, g.oldest_at, g.service, g.handler, g.status))
        totals[reason] = ReasonTotals(
            count=sum(g.count for g in found),
            groups=len(found),
            oldest_at=min((g.oldest_at for g in found if g.oldest_at), default=None),
        )
        groups[reason] = found[:shown]
    return total, len(rows), rows[-1]["created_at"] if rows else None
