"""The sync engine: one `sync_once()` step mirrors Restate into PostgreSQL.

Why it is shaped this way (all measured, see DESIGN.md):
- Restate filters by scanning, so one scan per step serves both the delta
  (`modified_at` >= watermark - overlap) and the active set (retries change
  rows without bumping `modified_at`).
- A strict watermark loses rows committed during a scan, so each step re-reads
  an overlap window taken from Restate's own clock (its `modified_at` values).
- The scan is streamed as Arrow and written page by page, so memory stays flat
  however many rows Restate holds.
- The journal is read by id (indexed) and only for invocations whose journal
  grew, never filtered by entry type or time (a scan of a much larger table).
- Purges and expiries leave no trace in a delta; a periodic id listing finds them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DataError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from invocations.mirror import events
from invocations.mirror.models import (
    Deployment,
    Invocation,
    InvocationEdge,
    JournalEntry,
    ObjectLock,
    QueuedInvocation,
    Service,
    SyncState,
    WorkflowPromise,
)
from invocations.mirror.status import NOT_STARTED, QUIET_STATUSES
from invocations.mirror.sync import mapping
from invocations.mirror.sync.writes import copy_ids_into_temp, replace_all, upsert
from invocations.restate import RestateClient, sql_list, sql_literal

log = logging.getLogger(__name__)

# Snapshot tables are small in practice; the cap keeps a pathological one from eating memory.
SNAPSHOT_LIMIT = 100_000
JOURNAL_IDS_PER_QUERY = 200
# Ids kept for the live-update broadcast; past this (a first load) pages are told "everything changed".
MAX_TRACKED_CHANGES = 5000
INVOCATION_UPDATE_FIELDS = [
    f.name
    for f in Invocation._meta.local_concrete_fields
    if f.name not in {"id", "first_seen_at", "synced_at", "journal_synced_size", "gone_from_restate_at"}
]
# Columns whose change means "this invocation changed" (modified_at alone misses retries).
INVOCATION_GUARD_FIELDS = [
    "modified_at", "status", "retry_count", "next_retry_at", "last_failure_error_code", "last_failure",
    "journal_size", "running_at", "completed_at", "completion_result", "inboxed_at", "scheduled_start_at",
    "pinned_deployment_id",
]  # fmt: skip


@dataclass
class StepReport:
    rows_read: int = 0
    changed: int = 0
    journal_entries: int = 0
    edges: int = 0
    roots_resolved: int = 0
    queue_rows: int | None = None
    locks: int | None = None
    reconciled_gone: int | None = None
    watermark: datetime | None = None
    duration_s: float = 0.0
    changed_ids: list[str] = field(default_factory=list, repr=False)


class SyncEngine:
    def __init__(
        self,
        client: RestateClient,
        *,
        page_rows: int | None = None,
        overlap: timedelta | None = None,
        reconcile_every: timedelta | None = None,
        slow_every: timedelta = timedelta(seconds=15),
        clock: Callable[[], datetime] = timezone.now,
    ) -> None:
        self.client = client
        self.page_rows = page_rows or settings.SYNC_PAGE_ROWS
        self.overlap = overlap if overlap is not None else timedelta(seconds=settings.SYNC_OVERLAP_S)
        self.reconcile_every = reconcile_every or timedelta(seconds=settings.SYNC_RECONCILE_EVERY_S)
        self.slow_every = slow_every
        self.clock = clock
        self._last_slow: datetime | None = None

    # ------------------------------------------------------------ the step

    def sync_once(self) -> StepReport:
        t0 = time.monotonic()
        started = self.clock()
        state = SyncState.load()
        report = StepReport()

        slow_due = self._last_slow is None or started - self._last_slow >= self.slow_every
        if slow_due:
            self._check_features(state)

        max_modified = self._sync_invocations(state.watermark, report)
        report.roots_resolved = self._resolve_roots()
        self._sync_journals(report)
        if state.queues_supported:
            report.queue_rows, report.locks = self._sync_queues()
        if slow_due:
            self._sync_slow_tables()
            self._last_slow = started
        if state.last_reconcile_at is None or started - state.last_reconcile_at >= self.reconcile_every:
            report.reconciled_gone = self.reconcile(state=state)

        report.watermark = max(filter(None, [state.watermark, max_modified]), default=None)
        report.duration_s = time.monotonic() - t0
        SyncState.objects.filter(id=1).update(
            watermark=report.watermark,
            last_attempt_at=started,
            last_success_at=self.clock(),
            mirrored_as_of=started,
            last_duration_s=report.duration_s,
            last_rows=report.rows_read,
            last_changed=report.changed,
            consecutive_failures=0,
            last_error="",
        )
        events.sync_step_committed(changed_ids=report.changed_ids, overflow=report.changed > len(report.changed_ids))
        return report

    def record_failure(self, exc: BaseException) -> None:
        """Say on the page why the mirror is stale. The database may be the thing that is down."""
        message = f"{type(exc).__name__}: {exc}"[:2000]
        try:
            connection.close()  # a broken connection must not be reused
            SyncState.load()
            SyncState.objects.filter(id=1).update(
                last_attempt_at=self.clock(),
                last_error=message,
                last_error_at=self.clock(),
                consecutive_failures=F("consecutive_failures") + 1,
            )
        except Exception:  # noqa: BLE001 - the database is down too; the log is all we have
            log.warning("could not record sync failure in the database: %s", message)
            return
        events.sync_step_committed(changed_ids=[])

    # ------------------------------------------------------------ invocations

    def invocation_scan_sql(self, watermark: datetime | None) -> str:
        sql = f"SELECT {', '.join(mapping.INVOCATION_COLUMNS)} FROM sys_invocation"
        if watermark is not None:
            since = sql_literal(watermark - self.overlap)
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

    def _sync_invocations(self, watermark: datetime | None, report: StepReport) -> datetime | None:
        max_modified: datetime | None = None
        for page in self._pages(self.invocation_scan_sql(watermark)):
            now = self.clock()
            by_id = {row["id"]: mapping.invocation_from_row(row, now=now) for row in page}
            report.rows_read += len(page)
            page_max = max(inv.modified_at for inv in by_id.values())
            max_modified = page_max if max_modified is None else max(max_modified, page_max)
            changed = upsert(
                Invocation,
                list(by_id.values()),
                update_fields=INVOCATION_UPDATE_FIELDS,
                guard_fields=INVOCATION_GUARD_FIELDS,
                keep_existing_fields=["root"],
                insert_sql={"first_seen_at": "clock_timestamp()", "synced_at": "clock_timestamp()"},
                update_sql={"synced_at": "clock_timestamp()", "gone_from_restate_at": "NULL"},
                returning=["id"],
            )
            report.changed += len(changed)
            room = MAX_TRACKED_CHANGES - len(report.changed_ids)
            report.changed_ids.extend(row[0] for row in changed[: max(room, 0)])
        return max_modified

    def _resolve_roots(self) -> int:
        """Give each child its tree's root once every ancestor is in our copy.

        One UPDATE per tree level still unresolved; the partial index keeps each
        pass to the handful of rows that need it.
        """
        total = 0
        table = Invocation._meta.db_table
        with connection.cursor() as cursor:
            for _ in range(1000):  # a bound, not an expectation: trees are rarely 10 deep
                cursor.execute(
                    f"UPDATE {table} c SET root_id = p.root_id FROM {table} p "
                    "WHERE c.root_id IS NULL AND c.parent_id = p.id AND p.root_id IS NOT NULL"
                )
                if cursor.rowcount == 0:
                    break
                total += cursor.rowcount
        return total

    # ------------------------------------------------------------ journals and edges

    def _journal_backlog(self, limit: int) -> list[tuple[str, int]]:
        # Served by inv_journal_behind_idx; small because it empties every step.
        # Scheduled and queued invocations report journal_size 0 although Restate
        # already holds their Input: read that once, so a delayed send shows what it will carry.
        behind = Q(journal_size__gt=F("journal_synced_size")) | Q(status__in=NOT_STARTED, journal_synced_size=0)
        return list(
            Invocation.objects.filter(behind, gone_from_restate_at__isnull=True).values_list("id", "journal_size")[
                :limit
            ]
        )

    def _sync_journals(self, report: StepReport) -> None:
        seen_empty: set[str] = set()
        while backlog := [
            b for b in self._journal_backlog(JOURNAL_IDS_PER_QUERY + len(seen_empty)) if b[0] not in seen_empty
        ]:
            backlog = backlog[:JOURNAL_IDS_PER_QUERY]
            ids = [inv_id for inv_id, _ in backlog]
            columns = ", ".join(mapping.JOURNAL_COLUMNS)
            entries: list[JournalEntry] = []
            for batch in self.client.query_batches(f"SELECT {columns} FROM sys_journal WHERE id IN {sql_list(ids)}"):
                entries.extend(mapping.journal_entry_from_row(row) for row in batch)
            edges = [e for e in map(mapping.edge_from_journal_entry, entries) if e is not None]
            fetched: dict[str, int] = {}
            for entry in entries:
                fetched[entry.invocation_id] = fetched.get(entry.invocation_id, 0) + 1
            # A not-yet-started invocation whose Input Restate does not show yet stays in
            # the backlog for the next step, but not again in this one.
            seen_empty.update(inv_id for inv_id, size in backlog if not size and not fetched.get(inv_id))
            try:
                self._write_journals(entries, edges, backlog, fetched)
            except DataError:
                # Restate's entry_json went to jsonb unparsed; if one is not valid JSON, keep it as text.
                for entry in entries:
                    entry.entry = mapping.load_json(entry.entry)
                self._write_journals(entries, edges, backlog, fetched)
            report.journal_entries += len(entries)
            report.edges += len(edges)

    def _write_journals(
        self,
        entries: list[JournalEntry],
        edges: list[InvocationEdge],
        backlog: list[tuple[str, int]],
        fetched: dict[str, int],
    ) -> None:
        with transaction.atomic():
            upsert(
                JournalEntry,
                entries,
                update_fields=["entry_type", "name", "appended_at", "entry", "entry_lite"],
                guard_fields=["entry_lite"],
            )
            upsert(
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
            )
            # Everything Restate holds for these is now ours; a later growth of
            # journal_size (a changed row) puts them back in the backlog.
            with connection.cursor() as cursor:
                cursor.execute(
                    f"UPDATE {Invocation._meta.db_table} i SET journal_synced_size = b.size "
                    "FROM unnest(%s::text[], %s::int[]) AS b(id, size) WHERE i.id = b.id",
                    [[i for i, _ in backlog], [max(size, fetched.get(i, 0)) for i, size in backlog]],
                )

    # ------------------------------------------------------------ snapshots

    def _snapshot(self, sql: str) -> list[dict[str, Any]]:
        rows = self.client.query(f"{sql} LIMIT {SNAPSHOT_LIMIT + 1}")
        if len(rows) > SNAPSHOT_LIMIT:
            log.warning("snapshot truncated at %d rows: %s", SNAPSHOT_LIMIT, sql)
            rows = rows[:SNAPSHOT_LIMIT]
        return rows

    def _replace_if_changed(self, model: type, instances: list) -> None:
        fields = [f.attname for f in model._meta.local_concrete_fields if f.column]
        ours = {tuple(row) for row in model.objects.values_list(*fields)}
        theirs = {tuple(getattr(obj, f) for f in fields) for obj in instances}
        if ours != theirs:
            replace_all(model, instances)

    def _sync_queues(self) -> tuple[int, int]:
        inbox = [
            mapping.queued_from_row(r)
            for r in self._snapshot("SELECT service_name, service_key, id, sequence_number, created_at FROM sys_inbox")
        ]
        locks = [
            mapping.lock_from_row(r)
            for r in self._snapshot("SELECT service_name, service_key, invocation_id FROM sys_keyed_service_status")
        ]
        with transaction.atomic():
            self._replace_if_changed(QueuedInvocation, inbox)
            self._replace_if_changed(ObjectLock, locks)
        return len(inbox), len(locks)

    def _sync_slow_tables(self) -> None:
        promises = [
            mapping.promise_from_row(r)
            for r in self._snapshot(
                "SELECT service_name, service_key, key, completed, completion_success_value_utf8, completion_failure FROM sys_promise"
            )
        ]
        services = [
            mapping.service_from_row(r)
            for r in self._snapshot("SELECT name, revision, public, ty, deployment_id FROM sys_service")
        ]
        deployments = [
            mapping.deployment_from_row(r)
            for r in self._snapshot("SELECT id, ty, endpoint, created_at FROM sys_deployment")
        ]
        with transaction.atomic():
            self._replace_if_changed(WorkflowPromise, promises)
            self._replace_if_changed(Service, services)
            self._replace_if_changed(Deployment, deployments)

    def _check_features(self, state: SyncState) -> None:
        version = self.client.version()
        # With vqueues Restate keeps queues in other tables whose shape we have not verified.
        queues_supported = not version.get("features", {}).get("vqueues", False)
        if state.restate_version != version.get("version", "") or state.queues_supported != queues_supported:
            state.restate_version = version.get("version", "")
            state.queues_supported = queues_supported
            SyncState.objects.filter(id=1).update(
                restate_version=state.restate_version, queues_supported=queues_supported
            )
            if not queues_supported:
                log.warning("Restate uses vqueues: object queues and locks are not mirrored")

    # ------------------------------------------------------------ reconciliation

    def reconcile(self, *, state: SyncState | None = None) -> int:
        """Mark invocations Restate no longer has (purged, expired) as gone; keep our copy."""
        started = self.clock()

        def ids() -> Iterator[str]:
            for batch in self.client.query_batches("SELECT id FROM sys_invocation"):
                for row in batch:
                    yield row["id"]

        table = Invocation._meta.db_table
        with transaction.atomic():
            copy_ids_into_temp("sync_present_ids", ids())
            with connection.cursor() as cursor:
                # Only rows we had before the listing began: a row inserted since may
                # simply be newer than the listing, not gone.
                cursor.execute(
                    f"UPDATE {table} i SET gone_from_restate_at = %s, synced_at = clock_timestamp() "
                    "WHERE i.gone_from_restate_at IS NULL AND i.first_seen_at < %s "
                    "AND NOT EXISTS (SELECT 1 FROM sync_present_ids p WHERE p.id = i.id)",
                    [started, started],
                )
                gone = cursor.rowcount
            SyncState.objects.filter(id=1).update(last_reconcile_at=started, last_reconcile_gone=gone)
        if state is not None:
            state.last_reconcile_at = started
        return gone

    @classmethod
    def from_settings(cls) -> SyncEngine:
        from invocations.restate import client_from_settings

        return cls(client_from_settings())
