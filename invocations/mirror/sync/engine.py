"""The sync engine: one `sync_once()` step mirrors Restate into PostgreSQL.

Why it is shaped this way (all measured, see DESIGN.md):
- Restate filters by scanning, so one scan per step serves both the delta
  (`modified_at` >= watermark - overlap) and the active set (retries change
  rows without bumping `modified_at`).
- A strict watermark loses rows committed during a scan (partitions are read a
  few at a time, with no common snapshot), so each step re-reads an overlap
  window taken from Restate's own clock: at least 3x the last scan's duration,
  since a longer scan lets a row appear further behind the watermark.
- The scan is streamed as Arrow and written page by page, so memory stays flat
  however many rows Restate holds.
- The journal is read by id (indexed), only for invocations whose journal grew,
  and only from the first entry we do not hold; never filtered by entry type or
  time (a scan of a much larger table). A first sync (no watermark) is the
  exception: it needs every journal, and one unfiltered scan of sys_journal costs
  Restate a third of reading the same entries by id.
- An invocation seen for the first time is written once, with its root and its
  journal state: each write of that wide, much-indexed row is what a backfill
  spent its time on (see `_sync_invocations`).
- Purges and expiries leave no trace in a delta, and a missed row would stay
  missed: a periodic reconciliation compares every (id, modified_at, status)
  with ours, re-reads what differs and marks gone only what Restate no longer has.
- Pages are told what changed after each committed page's step, also when a
  later part of the step fails, and a restarted engine tells them what the
  previous one committed but may never have broadcast.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import DatabaseError, DataError, InterfaceError, connection, transaction
from django.db.models import DateTimeField, Exists, F, Model, OuterRef, Value
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from invocations import events
from invocations.mirror import feed, rollups
from invocations.mirror.models import (
    Deployment,
    Invocation,
    InvocationEdge,
    InvocationSpan,
    JournalEntry,
    ObjectLock,
    QueuedInvocation,
    Service,
    SyncState,
    WorkflowPromise,
)
from invocations.mirror.status import NOT_STARTED, QUIET_STATUSES
from invocations.mirror.sync import hints, mapping
from invocations.mirror.sync.lock import snapshot_write_lock
from invocations.mirror.sync.writes import copy_into_temp, drop_temp, replace_all, stage, upsert
from invocations.restate import QueryError, RestateClient, sql_list, sql_literal

log = logging.getLogger(__name__)
T = TypeVar("T")

JOURNAL_IDS_PER_QUERY = 200
# Ids of one journal batch are grouped by the first index we lack, one query per group
# (`id IN (...) AND index >= n`), merged down to this many queries. Measured on 1.7.12
# with 200 ids: one IN query 56 ms, 13 queries (one per distinct n) 98 ms; an OR of
# (id = x AND index >= n) is not pushed down to the id index: 1.6 s (80 s for 1000 ids).
JOURNAL_QUERIES_PER_BATCH = 4
# Restate's id lookups are indexed; one IN list stays at most this long.
IDS_PER_QUERY = 1000
# First-seen rows held back, at most, until their parent comes later in the scan (see
# `_sync_invocations`): ~1.5 KB each in memory. Past it the oldest are written with a null root.
MAX_HELD_ORPHANS = 10_000
# Ids kept for the live-update broadcast; past this (a first load) pages are told "everything changed".
MAX_TRACKED_CHANGES = 5000
PROMISE_SQL = (
    "SELECT service_name, service_key, key, completed, completion_success_value_utf8, completion_failure "
    "FROM sys_promise"
)
# A hint pass re-reads object queues at most this often (see _sync_queues_of).
QUEUES_HINT_MIN_S = 1.0
# What follows hint passes (journals, callees, promises, queues) runs at most this often.
HINT_TAIL_EVERY_S = 0.5
# Workflow ids whose promises a step re-reads at most (more: the slow tables' full read catches up).
PROMISE_KEYS_PER_STEP = 200
# A row can appear behind the watermark by up to about one scan's duration; re-read three.
OVERLAP_SCAN_FACTOR = 3
INVOCATION_UPDATE_FIELDS = [
    f.name
    for f in Invocation._meta.local_concrete_fields
    if f.name
    not in {"id", "first_seen_at", "synced_at", "journal_synced_size", "journal_attempted_at", "gone_from_restate_at"}
]
# Columns whose change means "this invocation changed" (modified_at alone misses retries).
INVOCATION_GUARD_FIELDS = [
    "modified_at", "status", "retry_count", "next_retry_at", "last_failure_error_code", "last_failure",
    "journal_size", "running_at", "completed_at", "completion_result", "inboxed_at", "scheduled_start_at",
    "pinned_deployment_id",
]  # fmt: skip
# The step and the hint thread write side by side: a row read earlier (a scan) must not
# replace one read later (a hint). Restate's modified_at never goes back. Equal times are let
# through: retries change a row without moving modified_at, and retry_count is not known to
# only grow, so a tie-break on it could keep a newer state out for good.
NEWER_STATE_SQL = "t.modified_at IS NULL OR EXCLUDED.modified_at IS NULL OR EXCLUDED.modified_at >= t.modified_at"
# A backfill's journal entries are written this many at a time (their payloads are held meanwhile).
JOURNAL_BACKFILL_ROWS = 5000
# The edges a backfill's journal scan found, until their callers' rows are written (session temp table).
BACKFILL_EDGES = "sync_backfill_edges"
# Invocations whose entry count a backfill keeps in memory (~200 bytes each), so their insert
# carries it; past this it is counted in SQL as each is inserted (measured: 35 us a row).
BACKFILL_COUNTS_MAX = 100_000
# Temp tables of a reconciliation (session-scoped: it commits page by page).
LISTING_TABLE = "sync_reconcile_listing"
DIFF_TABLE = "sync_reconcile_diff"


@dataclass
class Changes:
    """The rows a step changed (committed), each with the trees it belongs to, for the broadcast."""

    limit: int = MAX_TRACKED_CHANGES
    ids: dict[str, None] = field(default_factory=dict)  # insertion-ordered set
    roots: set[str] = field(default_factory=set)
    overflow: bool = False
    # The status each upserted row was written with: told with the broadcast, so a detail page
    # shows a new status before its fetch of the whole header and tree returns.
    statuses: dict[str, dict[str, str]] = field(default_factory=dict)  # root -> id -> status

    def add(self, rows: Iterable[Sequence[Any]]) -> None:
        """(id, root_id) pairs, or (id, root_id, status); a null root (not resolved yet) makes
        the row its own tree.

        A row seen again with another root (resolved later in the step) keeps both:
        a page opened on it before resolution listens on its own id.
        """
        for row in rows:
            inv_id, root_id = row[0], row[1]
            if inv_id not in self.ids:
                if len(self.ids) >= self.limit:
                    self.overflow = True
                    continue
                self.ids[inv_id] = None
            self.roots.add(root_id or inv_id)
            if len(row) > 2:
                self.statuses.setdefault(root_id or inv_id, {})[inv_id] = row[2]

    def __bool__(self) -> bool:
        return bool(self.ids) or self.overflow

    def broadcast(self) -> None:
        events.sync_step_committed(
            changed_ids=list(self.ids), changed_roots=self.roots, overflow=self.overflow, statuses=self.statuses
        )


@dataclass
class ReconcileReport:
    listed: int = 0  # rows Restate listed
    refetched: int = 0  # missing, stale or gone-marked rows re-read by id
    revived: int = 0  # marked gone, yet Restate still had them
    gone: int = 0  # newly marked gone (absent from the listing and from a lookup by id)
    duration_s: float = 0.0


@dataclass
class StepReport:
    rows_read: int = 0
    changed: int = 0
    journal_entries: int = 0
    edges: int = 0
    roots_resolved: int = 0
    queue_rows: int | None = None
    locks: int | None = None
    queue_keys_changed: int = 0  # object keys whose queue or lock holder changed
    reconcile: ReconcileReport | None = None
    watermark: datetime | None = None
    duration_s: float = 0.0
    scan_s: float = 0.0
    overlap_s: float | None = None
    # SyncState field -> whether that snapshot hit its row cap (only the snapshots taken this step).
    truncated: dict[str, bool] = field(default_factory=dict)
    changed_ids: list[str] = field(default_factory=list, repr=False)
    changed_roots: set[str] = field(default_factory=set, repr=False)

    @property
    def reconciled_gone(self) -> int | None:
        return None if self.reconcile is None else self.reconcile.gone


@dataclass
class HintReport:
    ids: int = 0  # hinted ids re-read
    changed: int = 0
    gone: int = 0
    journal_entries: int = 0
    callees: int = 0  # callees their journals named that our copy lacked, read too
    queue_keys_changed: int = 0
    duration_s: float = 0.0


@dataclass(frozen=True)
class _Behind:
    """An invocation whose journal we lack entries of."""

    id: str
    root_id: str | None
    journal_size: int  # what Restate reported
    held: int  # entries we hold: Restate's indexes 0..held-1
    service: str  # its handler: the caller of the edges its journal records
    handler: str


@dataclass
class _FirstSight:
    """A page of the scan, mapped, with the journals of its first-seen rows being read."""

    rows: dict[str, dict[str, Any]]  # id -> column values, in scan order
    new: set[str]  # ids not in our copy when the page was read
    behind: list[_Behind]  # the new rows with a journal, read from index 0
    journals: Future[list[dict[str, Any]]] | None
    backfill: bool  # journals already read by `_backfill_journals`
    journal_counts: dict[str, int] | None  # entries it wrote per invocation; None: count in SQL


@dataclass
class _Held:
    """First-seen rows held back until an ancestor the scan has not shown yet comes, oldest first."""

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The missing ancestor's id -> the held rows whose chain of parents stops just below it:
    # a page wakes only the rows it can resolve, not every held row.
    waiting: dict[str, set[str]] = field(default_factory=dict)

    def hold(self, values: dict[str, Any], missing: str) -> None:
        self.rows[values["id"]] = values
        self.waiting.setdefault(missing, set()).add(values["id"])

    def wake(self, arrived: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Take out the rows waiting for one of `arrived`."""
        woken: dict[str, dict[str, Any]] = {}
        for inv_id in arrived:
            for held_id in self.waiting.pop(inv_id, ()):
                if held_id in self.rows:  # not already written (past the bound) or read again
                    woken[held_id] = self.rows.pop(held_id)
        return woken

    def take(self, *, keep: int) -> list[dict[str, Any]]:
        """The oldest rows past `keep`, taken out."""
        taken = []
        while len(self.rows) > keep:
            taken.append(self.rows.pop(next(iter(self.rows))))
        if not self.rows:
            self.waiting.clear()
        return taken


def _prefetched(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """`items`, produced in a worker thread up to `depth` ahead.

    Restate's answer is read and decoded while the previous part is written: psycopg
    releases the GIL while PostgreSQL works, and Restate works meanwhile instead of waiting
    for us to ask for more. An error of the producer is raised here, after what it produced.
    """
    handoff: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, done))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put((False, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # the HTTP stream, when the consumer stopped early

    worker = threading.Thread(target=produce, name="sync-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            ok, item = handoff.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        worker.join()


def _read_to(entries: list[dict[str, Any]]) -> dict[str, int]:
    """Per invocation, one past the last entry read."""
    read_to: dict[str, int] = {}
    for entry in entries:
        inv_id = entry["invocation_id"]
        read_to[inv_id] = max(read_to.get(inv_id, 0), entry["index"] + 1)
    return read_to


def _parse_json(entries: list[dict[str, Any]]) -> None:
    # Restate's JSON went to jsonb unparsed; if one is not valid JSON, keep it as text.
    for entry in entries:
        entry["entry"] = mapping.load_json(entry["entry"])
        entry["entry_lite"] = mapping.load_json(entry["entry_lite"])


class SyncEngine:
    def __init__(
        self,
        client: RestateClient,
        *,
        page_rows: int | None = None,
        overlap: timedelta | None = None,
        reconcile_every: timedelta | None = None,
        slow_every: timedelta = timedelta(seconds=15),
        snapshot_rows: int | None = None,
        input_retry: timedelta | None = None,
        clock: Callable[[], datetime] = timezone.now,
    ) -> None:
        self.client = client
        self.page_rows = page_rows or settings.SYNC_PAGE_ROWS
        # The floor of the overlap window; it grows with the scan's duration.
        self.overlap_floor = overlap if overlap is not None else timedelta(seconds=settings.SYNC_OVERLAP_S)
        self.reconcile_every = reconcile_every or timedelta(seconds=settings.SYNC_RECONCILE_EVERY_S)
        self.slow_every = slow_every
        self.snapshot_rows = snapshot_rows or settings.SYNC_SNAPSHOT_ROWS
        self.input_retry = input_retry if input_retry is not None else timedelta(seconds=settings.SYNC_INPUT_RETRY_S)
        self.clock = clock
        self._last_slow: datetime | None = None
        self._last_hint_queues: float | None = None
        # A queue re-read a hint pass asked for within QUEUES_HINT_MIN_S of the last one.
        self._queues_owed = False
        self._last_hints_taken_at: datetime | None = None
        # Ids hint passes read, for the tail (see _hint_tail).
        self._tail_ids: set[str] = set()
        self._tail_changed: set[str] = set()
        self._tail_overflow = False
        self._last_tail = 0.0
        self._tail_since = 0.0  # when the tail's oldest waiting id arrived
        # The loop runs the tail on its own thread while the hint thread adds to it (and runs
        # it itself when the loop's thread is busy with a long step).
        self._tail_lock = threading.Lock()
        self._tail_running = threading.Lock()
        # The current failure streak, in memory: PostgreSQL may be down when it starts.
        self.failures = 0
        self.failing_since: datetime | None = None

    # ------------------------------------------------------------ the step

    def sync_once(self) -> StepReport:
        t0 = time.monotonic()
        started = self.clock()
        state = SyncState.load()
        report = StepReport()
        changes = Changes()
        try:
            self._step(state, started, report, changes)
        except BaseException:
            # Pages committed before the failure are in our copy: the pages showing them must hear it.
            if changes:
                changes.broadcast()
            raise

        report.watermark = max(filter(None, [state.watermark, report.watermark]), default=None)
        report.duration_s = time.monotonic() - t0
        report.changed_ids = list(changes.ids)
        report.changed_roots = set(changes.roots)
        update: dict[str, Any] = {
            "watermark": report.watermark,
            "last_attempt_at": started,
            "last_success_at": self.clock(),
            "mirrored_as_of": started,
            "last_duration_s": report.duration_s,
            "last_rows": report.rows_read,
            "last_changed": report.changed,
            "consecutive_failures": 0,
            "failing_since": None,
            "last_error": "",
            "last_scan_s": report.scan_s,
            "overlap_s": report.overlap_s,
            **report.truncated,
        }
        if any(report.truncated.values()):
            update["snapshots_truncated_at"] = started
        SyncState.objects.filter(id=1).update(**update)
        self.failures, self.failing_since = 0, None
        # Every row this step wrote is committed and has synced_at before this moment.
        committed_through = self._db_now()
        changes.broadcast()
        # Only once told: killed before this line, the next engine re-broadcasts this step's rows.
        SyncState.objects.filter(id=1).update(last_broadcast_at=committed_through)
        return report

    def _step(self, state: SyncState, started: datetime, report: StepReport, changes: Changes) -> None:
        slow_due = self._last_slow is None or started - self._last_slow >= self.slow_every
        if slow_due:
            self._check_features(state)

        overlap = self.overlap_for(last_scan_s=state.last_scan_s)
        report.overlap_s = overlap.total_seconds() if state.watermark is not None else None
        report.watermark = self._sync_invocations(state.watermark, overlap, report, changes)
        # A backfill has just read every row Restate holds, and the rows committed during its
        # scan come with the next step's overlap window: its reconciliation (a second listing of
        # everything) is left to the next step, which finds it due, so the first copy is there sooner.
        backfilled = state.watermark is None and report.rows_read > 0
        due = state.last_reconcile_at is None or started - state.last_reconcile_at >= self.reconcile_every
        if due and not backfilled:
            # Before roots and journals, so the rows it re-reads get both in this step.
            report.reconcile = self._reconcile(changes)
        report.roots_resolved = self._resolve_roots(changes)
        self._sync_journals(report, changes)
        self._sync_promises_of(list(changes.ids), overflow=changes.overflow)
        if state.queue_tables == SyncState.QueueTables.VQUEUES:
            self._sync_vqueues(report, changes)
        else:
            self._sync_queues(report, changes)
        if slow_due:
            self._sync_slow_tables(report)
            feed.spans_prune()
            self._last_slow = started

    def record_failure(self, exc: BaseException, *, expected_interval_s: float | None = None) -> None:
        """Say on the page why the mirror is stale, and since when. The database may be the thing that is down."""
        now = self.clock()
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = now
        message = f"{type(exc).__name__}: {exc}"[:2000]
        try:
            if isinstance(exc, (DatabaseError, InterfaceError)) or connection.errors_occurred:
                connection.close()  # a broken connection must not be reused
            update: dict[str, Any] = {
                "last_attempt_at": now,
                "last_error": message,
                "last_error_at": now,
                # Failures we could not write while PostgreSQL was down count too; a
                # streak begun by an engine before a restart keeps its start.
                "consecutive_failures": Greatest(F("consecutive_failures") + 1, Value(self.failures)),
                "failing_since": Coalesce(F("failing_since"), Value(self.failing_since, output_field=DateTimeField())),
            }
            if expected_interval_s is not None:
                update["expected_interval_s"] = expected_interval_s
            if not SyncState.objects.filter(id=1).update(**update):
                SyncState.load()  # a fresh database: the row is created on first use
                SyncState.objects.filter(id=1).update(**update)
        except Exception:  # noqa: BLE001 - the database is down too; memory and the log are all we have
            log.warning("could not record sync failure in the database: %s", message)
            return
        events.sync_step_committed(changed_ids=[])

    def broadcast_unsent(self) -> int:
        """Tell pages about rows synced after the last broadcast; returns how many.

        An engine killed between committing pages and broadcasting them (kill -9,
        OOM, a lost host) leaves pages showing rows that changed; the next engine
        re-reads those rows, finds them equal and would never tell. Chosen over a
        blanket "everything may have changed" to every page because it is exact:
        only the rows and trees that changed are re-sent, through the messages
        consumers already handle, so a restart (a deploy, a supervisor's restart
        loop) does not make every open tab re-render everything. The cost is one
        scan of synced_at when an engine starts or takes over.
        """
        state = SyncState.load()
        db_now = self._db_now()
        rows = Invocation.objects.all()
        if state.last_broadcast_at is not None:
            rows = rows.filter(synced_at__gt=state.last_broadcast_at)
        changes = Changes()
        changes.add(rows.values_list("id", "root_id")[: changes.limit + 1])
        if changes:
            changes.broadcast()
        SyncState.objects.filter(id=1).update(last_broadcast_at=db_now)
        return len(changes.ids) + int(changes.overflow)

    def sync_hinted(self, *, tail: bool = True) -> HintReport | None:
        """Re-read the hinted invocations by id (an action touched them, or Restate's spans
        announced a change) and tell the pages; None when nothing was due.

        tail=False leaves what follows to `sync_hint_tail` (the sync loop runs it on its own
        thread, so a span arriving meanwhile is not kept waiting behind it).

        A lookup by id is indexed in Restate (a few ms), unlike the full scan of a step, so
        a change reaches the page without waiting for the poll. One query, one commit, one
        broadcast: what the step would also bring for these rows follows in the tail
        (`_hint_tail`, spaced). An id Restate no longer holds (purged) is marked gone: a
        lookup by id decides that.
        """
        ids, taken_at = hints.hints_due()
        if not ids:
            return self.sync_hint_tail() if tail else None
        t0 = time.monotonic()
        report = HintReport(ids=len(ids))
        changes = Changes()
        try:
            self._read_by_id(ids, report, changes)
            hints.hints_read(ids, taken_at=taken_at)
            self._resolve_roots(changes)
            if changes:
                SyncState.objects.filter(id=1).update(last_hint_at=self.clock())
            # A hint whose row had not changed still brought a span (a poll saw the state first):
            # the trees showing it redraw their attempts.
            unchanged = [inv_id for inv_id in ids if inv_id not in changes.ids]
            if unchanged and self._last_hints_taken_at is not None:
                # Only those with a new span: an action's hint re-reads its ids for seconds.
                spanned = InvocationSpan.objects.filter(
                    invocation_id__in=unchanged, received_at__gte=self._last_hints_taken_at
                ).values("invocation_id")
                rows = Invocation.objects.filter(id__in=spanned).values_list("id", "root_id")
                events.spans_arrived(root_ids={root or inv_id for inv_id, root in rows})
            self._last_hints_taken_at = taken_at
        finally:
            # The new status first: what the pages wait for should not wait for the journals.
            if changes:
                changes.broadcast()
        with self._tail_lock:
            if not self._tail_ids:
                self._tail_since = time.monotonic()
            self._tail_ids.update(ids)
            self._tail_changed.update(changes.ids)
            self._tail_overflow |= changes.overflow
        if tail and self.hint_tail_due():
            self._hint_tail(report)
        report.duration_s = time.monotonic() - t0
        return report

    def hints_tail_pending(self) -> bool:
        """Ids read by hint passes whose journals, callees, promises and queues wait for the tail."""
        return bool(self._tail_ids) or self._queues_owed

    def hint_tail_due(self, *, overdue_s: float = 0.0) -> bool:
        """The tail has work, its spacing (HINT_TAIL_EVERY_S, QUEUES_HINT_MIN_S) has passed, and
        the work has waited `overdue_s` beyond that."""
        spaced = self._last_tail + HINT_TAIL_EVERY_S
        due_at = []
        if self._tail_ids:
            due_at.append(max(self._tail_since, spaced))
        if self._queues_owed:
            due_at.append(max((self._last_hint_queues or 0.0) + QUEUES_HINT_MIN_S, spaced))
        return bool(due_at) and time.monotonic() >= min(due_at) + overdue_s

    def sync_hint_tail(self) -> HintReport | None:
        """Run the tail when it is due; None when it was not."""
        if not self.hint_tail_due():
            return None
        t0 = time.monotonic()
        report = HintReport()
        self._hint_tail(report)
        report.duration_s = time.monotonic() - t0
        return report

    def _hint_tail(self, report: HintReport) -> None:
        """What the step would also bring for the ids hint passes read since the last tail:
        their journal delta, callees their new entries name that our copy lacks (a delayed or
        queued call sends no span until it starts), the promises of changed workflow ids and
        the queues of object keys. Spaced by HINT_TAIL_EVERY_S: each is a query to Restate, and
        a pass per span burst would make them most of what mirroring costs Restate."""
        if not self._tail_running.acquire(blocking=False):
            return  # running on the other thread
        try:
            self._hint_tail_locked(report)
        finally:
            self._tail_running.release()

    def _hint_tail_locked(self, report: HintReport) -> None:
        with self._tail_lock:
            ids, changed_ids, overflow = sorted(self._tail_ids), list(self._tail_changed), self._tail_overflow
            self._tail_ids, self._tail_changed, self._tail_overflow = set(), set(), False
            self._last_tail = time.monotonic()
        more = Changes()
        journal = StepReport()
        try:
            self._sync_journals(journal, more)
            callees = self._unknown_callees(ids)
            if callees:
                # Their journals wait for the next tail or step: a scheduled or queued call holds
                # only its input, and one that runs announces itself with its own spans.
                report.callees = len(callees)
                self._read_by_id(callees, report, more, mark_gone=False)
                self._resolve_roots(more)
            changed_ids += list(more.ids)
            overflow = overflow or more.overflow
            if changed_ids or overflow:
                self._sync_promises_of(changed_ids, overflow=overflow)
            if changed_ids or overflow or self._queues_owed:
                self._sync_queues_of(changed_ids, overflow=overflow, changes=more, report=journal)
        finally:
            if more:
                more.broadcast()
        report.journal_entries = journal.journal_entries
        report.queue_keys_changed = journal.queue_keys_changed

    def _read_by_id(self, ids: list[str], report: HintReport, changes: Changes, *, mark_gone: bool = True) -> None:
        sql = f"SELECT {', '.join(mapping.INVOCATION_COLUMNS)} FROM sys_invocation WHERE id IN {sql_list(ids)}"
        rows = [row for batch in self.client.query_batches(sql) for row in batch]
        with transaction.atomic():
            changed = self._upsert_invocations(self._mapped(rows)) if rows else []
            changes.add(changed)
            report.changed += len(changed)
            missing = sorted(set(ids) - {row["id"] for row in rows})
            if missing and mark_gone:
                gone = ReconcileReport()
                self._mark_gone(missing, gone, changes)
                report.gone += gone.gone
                hints.hints_drop(missing)

    @staticmethod
    def _unknown_callees(caller_ids: list[str]) -> list[str]:
        """Callees named in these callers' journals that our copy does not hold yet."""
        known = Invocation.objects.filter(id=OuterRef("callee_id"))
        edges = InvocationEdge.objects.filter(caller_id__in=caller_ids, callee_id__isnull=False)
        unknown = edges.exclude(Exists(known)).values_list("callee_id", flat=True)
        return sorted({callee for callee in unknown[:IDS_PER_QUERY] if callee})

    def _sync_queues_of(self, ids: list[str], *, overflow: bool, changes: Changes, report: StepReport) -> None:
        """Re-read object queues and locks after a hint pass changed an invocation on an
        object or workflow key: a lock hand-over or a queue entry starting is in no span
        of its own. The snapshot is of Restate's queue tables, whose size is the keys in
        use, not the invocations retained; spaced by QUEUES_HINT_MIN_S under a flood."""
        keyed = Invocation.objects.filter(id__in=ids[:IDS_PER_QUERY], service_key__isnull=False)
        if not (overflow or self._queues_owed) and not keyed.exists():
            return
        if not self._queues_due():
            # Owed, not skipped: the call that joined a queue just after the last read may be
            # the last change for a while (its holder's next span can be seconds away).
            self._queues_owed = True
            return
        self._queues_owed = False
        self._last_hint_queues = time.monotonic()
        if SyncState.objects.filter(queue_tables=SyncState.QueueTables.VQUEUES).exists():
            self._sync_vqueues(report, changes)
        else:
            self._sync_queues(report, changes)

    def _queues_due(self) -> bool:
        return self._last_hint_queues is None or time.monotonic() - self._last_hint_queues >= QUEUES_HINT_MIN_S

    @staticmethod
    def _db_now() -> datetime:
        # PostgreSQL's clock, the one synced_at is written with.
        with connection.cursor() as cursor:
            cursor.execute("SELECT clock_timestamp()")
            return cursor.fetchone()[0]

    # ------------------------------------------------------------ invocations

    def overlap_for(self, *, last_scan_s: float | None) -> timedelta:
        if not last_scan_s:
            return self.overlap_floor
        return max(self.overlap_floor, timedelta(seconds=OVERLAP_SCAN_FACTOR * last_scan_s))

    def invocation_scan_sql(self, watermark: datetime | None, *, overlap: timedelta | None = None) -> str:
        sql = f"SELECT {', '.join(mapping.INVOCATION_COLUMNS)} FROM sys_invocation"
        if watermark is not None:
            since = sql_literal(watermark - (overlap if overlap is not None else self.overlap_floor))
            sql += f" WHERE modified_at >= {since} OR status NOT IN {sql_list(QUIET_STATUSES)}"
        return sql

    def _pages(self, sql: str) -> Iterator[list[dict[str, Any]]]:
        page: list[dict[str, Any]] = []
        for batch in self.client.query_batches(sql):
            page.extend(batch)
            while len(page) >= self.page_rows:
                yield page[: self.page_rows]
                page = page[self.page_rows :]
        if page:
            yield page

    def _mapped(self, rows: list[dict[str, Any]]) -> list[Invocation]:
        now = self.clock()
        return list({row["id"]: mapping.invocation_from_row(row, now=now) for row in rows}.values())

    @staticmethod
    def _upsert_invocations(
        invocations: Sequence[Invocation | dict[str, Any]], *, journal_held: bool = False
    ) -> list[tuple[str, str | None, str]]:
        """Write Restate's rows; returns (id, root_id, status) of the rows that changed.

        journal_held: an inserted row's journal_synced_size is the entries we hold (a backfill
        wrote every journal first); past them, a larger journal_size puts it in the backlog.
        The hours of the rows that changed are marked for the rollups in the same transaction.
        """
        insert_sql = {"first_seen_at": "clock_timestamp()", "synced_at": "clock_timestamp()"}
        if journal_held:
            insert_sql["journal_synced_size"] = (
                f'(SELECT COALESCE(MAX(j."index") + 1, 0) FROM {JournalEntry._meta.db_table} j '
                "WHERE j.invocation_id = s.id)"
            )
        with transaction.atomic(savepoint=False):
            changed = upsert(
                Invocation,
                invocations,
                update_fields=INVOCATION_UPDATE_FIELDS,
                guard_fields=INVOCATION_GUARD_FIELDS,
                keep_existing_fields=["root"],
                insert_sql=insert_sql,
                update_sql={
                    "synced_at": "clock_timestamp()",
                    "gone_from_restate_at": "NULL",
                    # A row whose grown journal was read with it says so; others (0) keep ours.
                    "journal_synced_size": "GREATEST(t.journal_synced_size, EXCLUDED.journal_synced_size)",
                },
                returning=["id", "root", "status", "created_at"],
                newer_sql=NEWER_STATE_SQL,
            )
            rollups.mark_dirty(created_at for *_, created_at in changed)
        return [(inv_id, root_id, status) for inv_id, root_id, status, _ in changed]

    def _sync_invocations(
        self, watermark: datetime | None, overlap: timedelta, report: StepReport, changes: Changes
    ) -> datetime | None:
        """Write the scan page by page, each invocation seen for the first time written once.

        A row inserted with a null root, then given its root, then its journal_synced_size,
        was three writes of a wide row with many indexes: a backfill spent most of its time
        there. So a first-seen row gets, before its insert, its whole journal (read by id in a
        worker thread while the previous page is written) and its root (from the same page, a
        row held back or our copy). A row whose parent is not in our copy yet is held back
        until the parent comes later in the scan (Restate scans partition by partition, so
        about half the children of a backfill come before their parent), at most
        MAX_HELD_ORPHANS of them; past that, and for parents the scan never shows, it is
        written with a null root and `_resolve_roots` completes it. Held rows are never
        committed without their journal entries being committed before or with them.
        """
        max_modified: datetime | None = None
        backfill = watermark is None
        held = _Held()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync-journals")
        pending: _FirstSight | None = None
        t0 = time.monotonic()
        counts: dict[str, int] | None = None
        # A backfill into an empty copy knows every row is new without asking page by page.
        all_new = backfill and not Invocation.objects.exists()
        try:
            if backfill:
                counts = self._backfill_journals(report)
                t0 = time.monotonic()
            # Mapped in the worker too: its Python time overlaps PostgreSQL's work on the page before.
            pages = _prefetched(
                (len(page), self._values(page))
                for page in self._pages(self.invocation_scan_sql(watermark, overlap=overlap))
            )
            while True:
                try:
                    page = next(pages, None)
                except Exception:
                    # Restate failed mid-scan: what was read before is committed, as page by page.
                    if pending is not None:
                        self._write_page(pending, held, report, changes)
                    self._write_held(held, report, changes, journal_held=backfill and counts is None)
                    raise
                if page is None:
                    break
                read, rows = page
                report.rows_read += read
                prepared = self._prepare_page(rows, pool, backfill=backfill, journal_counts=counts, all_new=all_new)
                page_max = max(values["modified_at"] for values in prepared.rows.values())
                max_modified = page_max if max_modified is None else max(max_modified, page_max)
                # This page's journals are read while the previous one is written.
                if pending is not None:
                    self._write_page(pending, held, report, changes)
                pending = prepared
            if pending is not None:
                self._write_page(pending, held, report, changes)
            self._write_held(held, report, changes, journal_held=backfill and counts is None)
            if backfill:
                self._backfill_edges(report)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            if backfill:
                drop_temp(BACKFILL_EDGES)
        # Includes our writes between batches: the stream, and so Restate's scan, lasts that long.
        report.scan_s = time.monotonic() - t0
        return max_modified

    def _values(self, page: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        now = self.clock()
        return {row["id"]: mapping.invocation_values(row, now=now) for row in page}

    def _prepare_page(
        self,
        rows: dict[str, dict[str, Any]],
        pool: ThreadPoolExecutor,
        *,
        backfill: bool,
        journal_counts: dict[str, int] | None = None,
        all_new: bool = False,
    ) -> _FirstSight:
        """Start reading the journal entries the page's rows have and we lack: whole journals
        of the rows not in our copy, the new entries of those whose journal grew (a backfill
        read every journal before the scan). Their journal state is then written with the
        row, so a step asks Restate for journals once, not once for new rows and once more
        for the backlog."""
        ours: dict[str, int] = {}  # id -> journal entries we hold
        if not all_new:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT id, journal_synced_size FROM {Invocation._meta.db_table} WHERE id = ANY(%s)", [list(rows)]
                )
                ours = dict(cursor.fetchall())
        new = {inv_id for inv_id in rows if inv_id not in ours}
        behind = [
            _Behind(v["id"], None, v["journal_size"], ours.get(inv_id, 0), v["service_name"], v["handler_name"])
            for inv_id, v in rows.items()
            if v["journal_size"] > ours.get(inv_id, 0) and not backfill
        ]
        journals = pool.submit(self._fetch_whole_journals, behind) if behind else None
        return _FirstSight(
            rows=rows, new=new, behind=behind, journals=journals, backfill=backfill, journal_counts=journal_counts
        )

    def _fetch_whole_journals(self, behind: list[_Behind]) -> list[dict[str, Any]]:
        # In JOURNAL_IDS_PER_QUERY chunks: one IN list of a whole page's ids is slower per id.
        entries: list[dict[str, Any]] = []
        for start in range(0, len(behind), JOURNAL_IDS_PER_QUERY):
            entries += self._fetch_journals(behind[start : start + JOURNAL_IDS_PER_QUERY])
        return entries

    def _write_page(self, page: _FirstSight, held: _Held, report: StepReport, changes: Changes) -> None:
        entries = page.journals.result() if page.journals is not None else []
        callers = {b.id: b for b in page.behind}
        read_to = _read_to(entries)
        tried_at = self._db_now() if any(b.id not in read_to for b in page.behind) else None
        for b in page.behind:
            values = page.rows[b.id]
            # As `_write_journals` records a backlog row's: all Restate holds is now ours.
            values["journal_synced_size"] = max(b.journal_size, b.held, read_to.get(b.id, 0))
            if b.id not in read_to:
                values["journal_attempted_at"] = tried_at
        if page.journal_counts is not None:
            for inv_id in page.new:
                page.rows[inv_id]["journal_synced_size"] = page.journal_counts.get(inv_id, 0)
        edges = self._edges(entries, callers)
        for inv_id in page.new:
            held.rows.pop(inv_id, None)  # read again (a scan may show a row twice): this copy is newer
        write = self._with_roots(page, held)
        # Past the bound, the oldest held rows go now with a null root (resolved by UPDATE later).
        write += held.take(keep=MAX_HELD_ORPHANS)

        def commit() -> None:
            with transaction.atomic():
                changed = self._upsert_invocations(write, journal_held=page.backfill and page.journal_counts is None)
                self._upsert_journal(entries, edges)
            report.changed += len(changed)
            changes.add(changed)

        try:
            commit()
        except DataError:
            _parse_json(entries)
            commit()
        report.journal_entries += len(entries)
        report.edges += len(edges)

    def _with_roots(self, page: _FirstSight, held: _Held) -> list[dict[str, Any]]:
        """The page's rows to write now, roots filled in where their ancestors are known, and
        the held rows this page resolved; a first-seen row whose chain of parents stops at one
        not in our copy is held instead.

        A held row's missing ancestor can only reach our copy through this scan (one engine
        writes): so only the page's own rows' parents are looked up in our copy."""
        rows = page.rows
        woken = held.wake(rows)
        candidates = {**woken, **rows}

        def find(inv_id: str) -> dict[str, Any] | None:
            return candidates.get(inv_id) or held.rows.get(inv_id)

        unresolved = [v for v in candidates.values() if v["root_id"] is None]
        outside = {v["parent_id"] for v in unresolved if find(v["parent_id"]) is None}
        known: dict[str, str | None] = {}
        if outside:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT id, root_id FROM {Invocation._meta.db_table} WHERE id = ANY(%s)", [list(outside)]
                )
                known = dict(cursor.fetchall())
        # id -> (its root or None, the missing ancestor when its chain stops at one not in our copy).
        outcome: dict[str, tuple[str | None, str | None]] = {}
        bound = len(candidates) + len(held.rows)
        for values in unresolved:
            chain: list[dict[str, Any]] = []
            current = values
            while True:
                if current["root_id"] is not None:
                    result: tuple[str | None, str | None] = (current["root_id"], None)
                    break
                if current["id"] in outcome:
                    result = outcome[current["id"]]
                    break
                if len(chain) > bound:
                    result = (None, None)  # a cycle; Restate makes none, but never loop on one
                    break
                chain.append(current)
                parent = current["parent_id"]
                found = find(parent)
                if found is None:
                    result = (known.get(parent), None if parent in known else parent)
                    break
                current = found
            for link in chain:
                outcome[link["id"]] = result
                if link["id"] in candidates:
                    link["root_id"] = result[0]

        write = []
        for inv_id, values in candidates.items():
            missing = outcome.get(inv_id, (None, None))[1]
            if missing is not None and (inv_id in page.new or inv_id in woken):
                held.hold(values, missing)
            else:
                write.append(values)
        return write

    def _write_held(self, held: _Held, report: StepReport, changes: Changes, *, journal_held: bool) -> None:
        """Write the held rows (their parents never came): with a null root, which
        `_resolve_roots` fills once an ancestor is in our copy."""
        rows = held.take(keep=0)
        if rows:
            changed = self._upsert_invocations(rows, journal_held=journal_held)
            report.changed += len(changed)
            changes.add(changed)

    def _resolve_roots(self, changes: Changes) -> int:
        """Give each child its tree's root once every ancestor is in our copy.

        One UPDATE per tree level still unresolved; the partial index keeps each
        pass to the handful of rows that need it.
        """
        total = 0
        table = Invocation._meta.db_table
        with connection.cursor() as cursor:
            for _ in range(1000):  # a bound, not an expectation: trees are rarely 10 deep
                cursor.execute(
                    f"UPDATE {table} c SET root_id = p.root_id, synced_at = clock_timestamp() FROM {table} p "
                    "WHERE c.root_id IS NULL AND c.parent_id = p.id AND p.root_id IS NOT NULL "
                    "RETURNING c.id, c.root_id"
                )
                resolved = cursor.fetchall()
                if not resolved:
                    break
                changes.add(resolved)
                total += len(resolved)
        return total

    # ------------------------------------------------------------ journals and edges

    def _journal_backlog(self, limit: int) -> list[_Behind]:
        fields = ("id", "root_id", "journal_size", "journal_synced_size", "service_name", "handler_name")
        live = Invocation.objects.filter(gone_from_restate_at__isnull=True)
        # Served by inv_journal_behind_idx; small because it empties every step. Ordered by the
        # index's own column so the LIMIT reads that small index in order: unordered, the planner
        # guesses a third of a million rows match and may scan the whole table for 200 of them.
        rows = list(live.filter(journal_size__gt=F("journal_synced_size")).order_by("id").values_list(*fields)[:limit])
        if len(rows) < limit:
            # Scheduled and queued invocations report journal_size 0 although Restate may
            # already hold their Input: read it once, so a delayed send shows what it will
            # carry. When Restate shows none yet, ask again only after input_retry, not on
            # every step. In inv_input_pending_idx's order the due ones come first, so the
            # cut is made here rather than in SQL (an OR of IS NULL and < would make
            # PostgreSQL filter the whole index instead of reading `limit` entries).
            retry_before = self._db_now() - self.input_retry
            seen = {r[0] for r in rows}
            not_started = (
                live.filter(status__in=NOT_STARTED, journal_synced_size=0)
                .order_by(F("journal_attempted_at").asc(nulls_first=True))
                .values_list(*fields, "journal_attempted_at")[:limit]
            )
            rows += [r[:6] for r in not_started if r[0] not in seen and (r[6] is None or r[6] < retry_before)][
                : limit - len(rows)
            ]
        return [_Behind(*row) for row in rows]

    def _fetch_journals(self, backlog: list[_Behind]) -> list[dict[str, Any]]:
        """The entries we lack: `index >= held` per invocation, in at most JOURNAL_QUERIES_PER_BATCH queries."""
        held = {b.id: b.held for b in backlog}
        ordered = sorted(backlog, key=lambda b: b.held)
        size = -(-len(ordered) // JOURNAL_QUERIES_PER_BATCH)
        groups: list[list[_Behind]] = []
        for start in range(0, len(ordered), size):
            chunk = ordered[start : start + size]
            if groups and groups[-1][0].held == chunk[0].held:
                groups[-1].extend(chunk)  # same first index: one query
            else:
                groups.append(chunk)
        columns = ", ".join(mapping.JOURNAL_COLUMNS)
        entries: list[dict[str, Any]] = []
        for group in groups:
            sql = f"SELECT {columns} FROM sys_journal WHERE id IN {sql_list([b.id for b in group])}"
            if group[0].held:
                sql += f" AND index >= {sql_literal(group[0].held)}"
            for batch in self.client.query_batches(sql):
                # A group reads from its smallest index; skip what we hold of the others.
                entries.extend(mapping.journal_values(row) for row in batch if row["index"] >= held[row["id"]])
        return entries

    def _sync_journals(self, report: StepReport, changes: Changes) -> None:
        done: set[str] = set()
        while backlog := self._journal_backlog(JOURNAL_IDS_PER_QUERY):
            if done.intersection(b.id for b in backlog):
                # Each pass moves every id it read out of the backlog; one that comes back
                # would loop this step forever. Leave it to the next step.
                log.warning("journal backlog did not shrink; continuing next step")
                break
            done.update(b.id for b in backlog)
            entries = self._fetch_journals(backlog)
            edges = self._edges(entries, {b.id: b for b in backlog})
            read_to = _read_to(entries)
            try:
                self._write_journals(entries, edges, backlog, read_to)
            except DataError:
                _parse_json(entries)
                self._write_journals(entries, edges, backlog, read_to)
            changes.add((b.id, b.root_id) for b in backlog if b.id in read_to)
            report.journal_entries += len(entries)
            report.edges += len(edges)

    @staticmethod
    def _edges(entries: list[dict[str, Any]], callers: dict[str, _Behind]) -> list[dict[str, Any]]:
        """The call/send edges these entries record, each with its caller's handler (which never changes)."""
        edges = []
        for entry in entries:
            edge = mapping.edge_values(entry)
            if edge is not None:
                caller = callers[entry["invocation_id"]]
                edge["caller_service"], edge["caller_handler"] = caller.service, caller.handler
                edges.append(edge)
        return edges

    @staticmethod
    def _upsert_journal(
        entries: list[dict[str, Any]], edges: list[dict[str, Any]], *, source: str | None = None
    ) -> int:
        """Write journal entries and edges (or the edges `source` selects); returns the edges written."""
        upsert(
            JournalEntry,
            entries,
            update_fields=["entry_type", "name", "appended_at", "entry", "entry_lite"],
            guard_fields=["entry_lite"],
        )
        written = upsert(
            InvocationEdge,
            edges,
            update_fields=[
                "callee_id",
                "kind",
                "target_service",
                "target_key",
                "target_handler",
                "created_at",
                "fire_at",
            ],
            guard_fields=["callee_id", "kind", "fire_at"],
            returning=["created_at"],
            source=source,
        )
        rollups.mark_dirty(created_at for (created_at,) in written)
        return len(written)

    def _backfill_journals(self, report: StepReport) -> dict[str, int] | None:
        """A first sync reads every journal in one unfiltered scan of sys_journal, before the
        invocations, so each invocation is inserted once with journal_synced_size set.

        Measured at 110,000 entries: 1.6 s of Restate's CPU, against 5.6 s for the same entries
        read by id 200 invocations at a time (each IN list is one lookup per id). The edges an
        entry records need their caller's handler, which only the invocation row has: they are
        staged in a temp table and written, joined with the invocations, after the scan.
        Entries of an invocation purged between this scan and the invocation scan stay behind
        without their row (Restate keeps no tombstone to tell).

        Returns the entries written per invocation (index of the last + 1), or None past
        BACKFILL_COUNTS_MAX invocations.
        """
        counts: dict[str, int] | None = {}
        sql = f"SELECT {', '.join(mapping.JOURNAL_COLUMNS)} FROM sys_journal"

        def chunks() -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
            nonlocal counts
            chunk: dict[tuple[str, int], dict[str, Any]] = {}
            for batch in self.client.query_batches(sql):
                for row in batch:
                    values = mapping.journal_values(row)
                    # A scan without a common snapshot may show an entry twice; one write each.
                    inv_id, index = values["invocation_id"], values["index"]
                    chunk[inv_id, index] = values
                    if counts is not None and counts.get(inv_id, 0) <= index:
                        counts[inv_id] = index + 1
                if counts is not None and len(counts) > BACKFILL_COUNTS_MAX:
                    counts = None
                if len(chunk) >= JOURNAL_BACKFILL_ROWS:
                    yield list(chunk.values()), [e for e in map(mapping.edge_values, chunk.values()) if e is not None]
                    chunk = {}
            if chunk:
                yield list(chunk.values()), [e for e in map(mapping.edge_values, chunk.values()) if e is not None]

        drop_temp(BACKFILL_EDGES)
        stage(BACKFILL_EDGES, InvocationEdge, [])  # there even when no journal records an edge

        def commit(entries: list[dict[str, Any]], edges: list[dict[str, Any]]) -> None:
            with transaction.atomic():
                self._upsert_journal(entries, [])
                stage(BACKFILL_EDGES, InvocationEdge, edges)

        for entries, edges in _prefetched(chunks()):
            try:
                commit(entries, edges)
            except DataError:
                _parse_json(entries)
                commit(entries, edges)
            report.journal_entries += len(entries)
        return counts

    def _backfill_edges(self, report: StepReport) -> None:
        """The staged edges of the invocations now in our copy, each with its caller's handler."""
        qn = connection.ops.quote_name
        caller = {"caller_service": "i.service_name", "caller_handler": "i.handler_name"}
        columns = [f.column for f in InvocationEdge._meta.local_concrete_fields if f.column]
        select = ", ".join(f"{caller.get(c, f'e.{qn(c)}')} AS {qn(c)}" for c in columns)
        source = (
            f"(SELECT DISTINCT ON (e.caller_id, e.journal_index) {select} FROM {BACKFILL_EDGES} e "
            f"JOIN {Invocation._meta.db_table} i ON i.id = e.caller_id)"
        )
        with transaction.atomic():
            report.edges += self._upsert_journal([], [], source=source)

    def _write_journals(
        self,
        entries: list[dict[str, Any]],
        edges: list[dict[str, Any]],
        backlog: list[_Behind],
        read_to: dict[str, int],
    ) -> None:
        with transaction.atomic():
            self._upsert_journal(entries, edges)
            # Everything Restate holds for these is now ours (journal_size as reported,
            # or further when the journal grew since); a later growth of journal_size
            # (a changed row) puts them back in the backlog. Nothing read: remember we
            # tried, so a not-started one is not asked again on every step.
            with connection.cursor() as cursor:
                cursor.execute(
                    f"UPDATE {Invocation._meta.db_table} i SET journal_synced_size = b.size, "
                    "journal_attempted_at = CASE WHEN b.got THEN i.journal_attempted_at ELSE clock_timestamp() END, "
                    "synced_at = CASE WHEN b.got THEN clock_timestamp() ELSE i.synced_at END "
                    "FROM unnest(%s::text[], %s::int[], %s::bool[]) AS b(id, size, got) WHERE i.id = b.id",
                    [
                        [b.id for b in backlog],
                        [max(b.journal_size, b.held, read_to.get(b.id, 0)) for b in backlog],
                        [b.id in read_to for b in backlog],
                    ],
                )

    # ------------------------------------------------------------ snapshots

    def _snapshot(self, sql: str) -> tuple[list[dict[str, Any]], bool]:
        """Rows of a snapshot table, and whether it hit the row cap (then they are a prefix)."""
        rows = self.client.query(f"{sql} LIMIT {self.snapshot_rows + 1}")
        if len(rows) > self.snapshot_rows:
            log.warning("snapshot truncated at %d rows: %s", self.snapshot_rows, sql)
            return rows[: self.snapshot_rows], True
        return rows, False

    def _replace_if_changed(self, model: type[Model], instances: list) -> set[tuple[Any, ...]]:
        """Replace the table's rows with `instances` if they differ; the rows that came or went."""
        fields = [f.attname for f in model._meta.local_concrete_fields if f.column]
        ours = {tuple(row) for row in model._default_manager.values_list(*fields)}
        theirs = {tuple(getattr(obj, f) for f in fields) for obj in instances}
        if ours != theirs:
            replace_all(model, instances)
        return ours ^ theirs

    def _sync_queues(self, report: StepReport, changes: Changes) -> None:
        inbox_rows, inbox_cut = self._snapshot(
            "SELECT service_name, service_key, id, sequence_number, created_at FROM sys_inbox"
        )
        lock_rows, locks_cut = self._snapshot(
            "SELECT service_name, service_key, invocation_id FROM sys_keyed_service_status"
        )
        inbox = [mapping.queued_from_row(r) for r in inbox_rows]
        locks = [mapping.lock_from_row(r) for r in lock_rows]
        self._write_queues(inbox, locks, report, changes)
        report.truncated.update(queues_truncated=inbox_cut, locks_truncated=locks_cut)

    def _write_queues(
        self, inbox: list[QueuedInvocation], locks: list[ObjectLock], report: StepReport, changes: Changes
    ) -> None:
        """Replace our queues and locks; the keys whose queue or holder changed are told, and
        so are the trees of every invocation queued on them (their queue position moved)."""
        with transaction.atomic():
            snapshot_write_lock()
            queued = self._replace_if_changed(QueuedInvocation, inbox)
            held = self._replace_if_changed(ObjectLock, locks)
            keys = {(service, key) for _, service, key, *_ in queued} | {(service, key) for service, key, _ in held}
            if keys:
                affected = {q.invocation_id for q in inbox if (q.service_name, q.service_key) in keys}
                affected |= {row[0] for row in queued} | {row[2] for row in held}
                changes.add(Invocation.objects.filter(id__in=affected).values_list("id", "root_id"))
                events.queues_changed(keys=keys)
        report.queue_rows, report.locks = len(inbox), len(locks)
        report.queue_keys_changed = len(keys)

    def _sync_vqueues(self, report: StepReport, changes: Changes) -> None:
        """Object queues and locks when Restate runs with vqueues (sys_inbox and
        sys_keyed_service_status are empty then). Verified on 1.7.12:
        - an exclusive handler's calls to one object key share a vqueue whose
          sys_vqueue_meta row names the lock (`Service/key`); shared handlers, services
          and workflows queue per service, without a lock name, and are not object queues;
        - an entry waiting for the key is in stage 'inbox' without the lock (a holder
          woken from suspension sits in the inbox with has_lock);
        - a delayed send waits in the inbox from the moment it is sent, with run_at in
          the future: it joins the key's queue only when due (sys_inbox has it only then);
        - sys_locks names the holder (acquired_by), suspended or not.
        Scoped objects (a `scope` on the lock) are left out: one key may then have a lock
        per scope, which our (service, key) rows cannot hold apart.
        """
        inbox_rows, inbox_cut = self._snapshot(
            "SELECT v.entry_id, m.service_name, m.lock_name, v.run_at, v.sequence_number, v.created_at "
            "FROM sys_vqueues v JOIN sys_vqueue_meta m ON m.partition_key = v.partition_key AND m.id = v.id "
            f"WHERE v.stage = {sql_literal('inbox')} AND v.has_lock = {sql_literal(False)} "
            f"AND v.entry_kind = {sql_literal('invocation')} AND m.lock_name IS NOT NULL AND m.scope IS NULL "
            "AND v.run_at <= now() "
            "ORDER BY m.lock_name, v.run_at, v.sequence_number, v.entry_id"
        )
        lock_rows, locks_cut = self._snapshot(
            "SELECT lock_name, acquired_by FROM sys_locks WHERE scope IS NULL AND acquired_by IS NOT NULL"
        )
        inbox = mapping.queued_from_vqueue_rows(inbox_rows)
        locks = [mapping.lock_from_vqueues_row(r) for r in lock_rows]
        self._write_queues(inbox, locks, report, changes)
        report.truncated.update(queues_truncated=inbox_cut, locks_truncated=locks_cut)

    def _sync_promises_of(self, ids: list[str], *, overflow: bool) -> None:
        """Re-read the durable promises of the workflow ids whose invocations this step changed.

        The whole promise table is read with the slow tables (every `slow_every`); without
        this a run seen completed could sit beside its promise still pending for that long.
        A promise is resolved by an invocation on its workflow id (`confirm`), or by the run
        itself, so a change of one of those is when to look."""
        if not ids or overflow:
            return  # a first load: the slow tables read every promise in this step or the next
        workflows = Invocation.objects.filter(id__in=ids, service_type="workflow")
        keys = sorted({(s, k) for s, k in workflows.values_list("service_name", "service_key") if k is not None})
        if not keys:
            return
        by_service: dict[str, list[str]] = {}
        for service, key in keys[:PROMISE_KEYS_PER_STEP]:
            by_service.setdefault(service, []).append(key)
        where = " OR ".join(
            f"(service_name = {sql_literal(service)} AND service_key IN {sql_list(ids)})"
            for service, ids in by_service.items()
        )
        rows = self.client.query(f"{PROMISE_SQL} WHERE {where}")
        theirs = [mapping.promise_from_row(r) for r in rows]
        fields = [f.attname for f in WorkflowPromise._meta.local_concrete_fields if f.column]
        with transaction.atomic():
            snapshot_write_lock()
            ours_rows = WorkflowPromise.objects.none()
            for service, ids in by_service.items():
                ours_rows |= WorkflowPromise.objects.filter(service_name=service, service_key__in=ids)
            ours = {tuple(row) for row in ours_rows.values_list(*fields)}
            changed = ours ^ {tuple(getattr(p, f) for f in fields) for p in theirs}
            if changed:
                ours_rows.delete()
                WorkflowPromise.objects.bulk_create(theirs)
                events.promises_changed(keys={(service, key) for service, key, *_ in changed})

    def _sync_slow_tables(self, report: StepReport) -> None:
        promise_rows, promises_cut = self._snapshot(PROMISE_SQL)
        service_rows, services_cut = self._snapshot("SELECT name, revision, public, ty, deployment_id FROM sys_service")
        deployment_rows, deployments_cut = self._snapshot("SELECT id, ty, endpoint, created_at FROM sys_deployment")
        with transaction.atomic():
            snapshot_write_lock()
            promised = self._replace_if_changed(WorkflowPromise, [mapping.promise_from_row(r) for r in promise_rows])
            events.promises_changed(keys={(service, key) for service, key, *_ in promised})
            self._replace_if_changed(Service, [mapping.service_from_row(r) for r in service_rows])
            self._replace_if_changed(Deployment, [mapping.deployment_from_row(r) for r in deployment_rows])
        report.truncated.update(promises_truncated=promises_cut, catalog_truncated=services_cut or deployments_cut)

    def _check_features(self, state: SyncState) -> None:
        version = self.client.version()
        # With vqueues Restate keeps object queues and locks in other tables (sys_vqueues, sys_locks).
        vqueues = bool(version.get("features", {}).get("vqueues", False))
        queue_tables = SyncState.QueueTables.VQUEUES if vqueues else SyncState.QueueTables.CLASSIC
        if (
            state.restate_version != version.get("version", "")
            or state.queue_tables != queue_tables
            or not state.queues_supported
        ):
            if state.queue_tables != queue_tables:
                log.info("Restate keeps object queues and locks in its %s tables", queue_tables.value)
            state.restate_version = version.get("version", "")
            state.queue_tables = queue_tables
            state.queues_supported = True  # both layouts are mirrored
            SyncState.objects.filter(id=1).update(
                restate_version=state.restate_version, queue_tables=queue_tables, queues_supported=True
            )

    # ------------------------------------------------------------ reconciliation

    def reconcile(self) -> ReconcileReport:
        """Reconcile now, outside a step (tests, operators), telling pages what it changed."""
        changes = Changes()
        try:
            result = self._reconcile(changes)
            self._resolve_roots(changes)
        finally:
            if changes:
                changes.broadcast()
        return result

    def _reconcile(self, changes: Changes) -> ReconcileReport:
        """Make our copy hold what Restate holds, both ways, in bounded pages.

        Restate lists (id, modified_at, status) as an Arrow stream, COPied into a temp
        table; PostgreSQL compares it with ours. Rows missing from our copy, or whose
        modified_at or status differ (both Restate's values: one clock), are re-read
        by id. Rows we hold that the listing lacks are looked up by id before being
        marked gone, so a row created after the listing passed its partition is not
        mistaken for a purge: no clock decides that. A row marked gone that Restate
        still has is revived.
        """
        started = self.clock()
        t0 = time.monotonic()
        report = ReconcileReport()
        table = Invocation._meta.db_table

        def listing() -> Iterator[tuple[Any, ...]]:
            for batch in self.client.query_batches("SELECT id, modified_at, status FROM sys_invocation"):
                for row in batch:
                    yield row["id"], mapping.parse_timestamp(row.get("modified_at")), row.get("status")

        try:
            with transaction.atomic():
                report.listed = copy_into_temp(
                    LISTING_TABLE,
                    columns=[("id", "text"), ("modified_at", "timestamptz"), ("status", "text")],
                    rows=listing(),
                )
                with connection.cursor() as cursor:
                    # One pass over our table (a hash full join with the listing) finds both
                    # directions: listed rows we lack or hold differently, and rows we hold
                    # that were not listed.
                    cursor.execute(
                        f"CREATE TEMP TABLE IF NOT EXISTS {DIFF_TABLE} (id text PRIMARY KEY, listed bool, gone bool)"
                    )
                    cursor.execute(f"TRUNCATE {DIFF_TABLE}")
                    cursor.execute(
                        f"INSERT INTO {DIFF_TABLE} "
                        "SELECT COALESCE(r.id, i.id), r.id IS NOT NULL, i.gone_from_restate_at IS NOT NULL "
                        f"FROM {LISTING_TABLE} r FULL JOIN {table} i ON i.id = r.id "
                        "WHERE (r.id IS NULL AND i.gone_from_restate_at IS NULL) OR (r.id IS NOT NULL AND ("
                        "i.id IS NULL OR i.gone_from_restate_at IS NOT NULL "
                        "OR i.modified_at IS DISTINCT FROM r.modified_at OR i.status IS DISTINCT FROM r.status)) "
                        "ON CONFLICT DO NOTHING"
                    )
            for page in self._temp_pages(DIFF_TABLE, "id, gone", where="listed"):
                self._refetch(page, report, changes)
            for page in self._temp_pages(DIFF_TABLE, "id", where="NOT listed"):
                self._mark_gone([inv_id for (inv_id,) in page], report, changes)
        finally:
            try:
                drop_temp(LISTING_TABLE, DIFF_TABLE)
            except DatabaseError:
                log.warning("could not drop reconciliation temp tables (the connection is closed with them)")
        report.duration_s = time.monotonic() - t0
        SyncState.objects.filter(id=1).update(
            last_reconcile_at=started,
            last_reconcile_gone=report.gone,
            last_reconcile_refetched=report.refetched,
            last_reconcile_revived=report.revived,
        )
        if report.refetched or report.gone:
            log.info("reconciled: %s", report)
        return report

    @staticmethod
    def _temp_pages(temp: str, columns: str, *, where: str) -> Iterator[list[tuple[Any, ...]]]:
        """A temp table's rows by id, IDS_PER_QUERY at a time (keyset: memory stays one page)."""
        last = ""
        while True:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT {columns} FROM {temp} WHERE {where} AND id > %s ORDER BY id LIMIT %s",
                    [last, IDS_PER_QUERY],
                )
                rows = cursor.fetchall()
            if not rows:
                return
            yield rows
            last = rows[-1][0]

    def _refetch(self, page: list[tuple[Any, ...]], report: ReconcileReport, changes: Changes) -> None:
        was_gone = {inv_id for inv_id, gone in page if gone}
        sql = f"SELECT {', '.join(mapping.INVOCATION_COLUMNS)} FROM sys_invocation WHERE id IN {sql_list(p[0] for p in page)}"
        rows = [row for batch in self.client.query_batches(sql) for row in batch]
        if not rows:
            return  # purged since the listing; the next reconciliation marks them
        revive = [row["id"] for row in rows if row["id"] in was_gone]
        with transaction.atomic():
            changes.add(self._upsert_invocations(self._mapped(rows)))
            if revive:
                # The guarded upsert leaves a row that did not change alone, gone mark included.
                with connection.cursor() as cursor:
                    cursor.execute(
                        f"UPDATE {Invocation._meta.db_table} SET gone_from_restate_at = NULL, "
                        "synced_at = clock_timestamp() WHERE id = ANY(%s) AND gone_from_restate_at IS NOT NULL "
                        "RETURNING id, root_id",
                        [revive],
                    )
                    changes.add(cursor.fetchall())
        report.refetched += len(rows)
        report.revived += len(revive)

    def _present_in_restate(self, ids: list[str]) -> set[str]:
        """Which of `ids` Restate holds now.

        Restate refuses a whole query when one id in it is not valid by its rules (length
        and value range, stricter than our pattern): a row that never came from Restate
        (synthetic, hand-made) would block every reconciliation. Halve the list until
        such an id stands alone; Restate cannot hold it.
        """
        try:
            rows = self.client.query(f"SELECT id FROM sys_invocation WHERE id IN {sql_list(ids)}")
        except QueryError as exc:
            if "invocation id" not in str(exc):
                raise
            if len(ids) == 1:
                log.warning("Restate refuses %r as an invocation id; marking it gone", ids[0])
                return set()
            middle = len(ids) // 2
            return self._present_in_restate(ids[:middle]) | self._present_in_restate(ids[middle:])
        return {row["id"] for row in rows}

    def _mark_gone(self, ids: list[str], report: ReconcileReport, changes: Changes) -> None:
        present = self._present_in_restate(ids)
        gone = [inv_id for inv_id in ids if inv_id not in present]
        if not gone:
            return
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {Invocation._meta.db_table} SET gone_from_restate_at = clock_timestamp(), "
                "synced_at = clock_timestamp() WHERE id = ANY(%s) AND gone_from_restate_at IS NULL "
                "RETURNING id, root_id",
                [gone],
            )
            marked = cursor.fetchall()
        changes.add(marked)
        report.gone += len(marked)

    @classmethod
    def from_settings(cls) -> SyncEngine:
        from invocations.restate import client_from_settings

        return cls(client_from_settings())
