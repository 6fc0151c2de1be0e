"""Our copy of Restate's state. Restate forgets completed invocations after
their retention; these tables keep them (marked `gone_from_restate_at`), so
history outlives Restate and pages never scan Restate itself.

Ids are Restate's own strings. Parent/root are plain columns rather than
foreign keys with constraints: a child is often synced before its parent, and a
parent may have been purged from Restate before we ever saw it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import models
from django.utils import timezone

from invocations.mirror.status import COMPLETION_FAILURE, NOT_STARTED, InvocationStatus
from invocations.restate import WORKFLOW_MAIN_HANDLER


class Invocation(models.Model):
    id = models.CharField(primary_key=True, max_length=100)
    target = models.CharField(max_length=600)
    service_name = models.CharField(max_length=255)
    service_key = models.TextField(null=True, blank=True)
    handler_name = models.CharField(max_length=255)
    service_type = models.CharField(max_length=32)  # service, virtual_object, workflow
    status = models.CharField(max_length=32, choices=InvocationStatus.choices)
    completion_result = models.CharField(max_length=32, null=True, blank=True)  # success / failure
    completion_failure = models.TextField(null=True, blank=True)  # e.g. "[409] cancelled"

    idempotency_key = models.TextField(null=True, blank=True)
    invoked_by = models.CharField(max_length=32, blank=True)  # ingress, service, subscription, restart_as_new
    # db_index=False: inv_parent_idx / inv_root_idx below are the indexes; Django's
    # automatic ones (and their _like copies) only duplicated them, at a cost to every sync write.
    parent = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        db_constraint=False,
        db_index=False,
        on_delete=models.DO_NOTHING,
        related_name="+",
    )
    invoked_by_target = models.CharField(max_length=600, null=True, blank=True)
    # The top of the call tree; null until the sync has seen every ancestor.
    root = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        db_constraint=False,
        db_index=False,
        on_delete=models.DO_NOTHING,
        related_name="+",
    )
    restarted_from = models.CharField(max_length=100, null=True, blank=True)
    pinned_deployment_id = models.CharField(max_length=100, null=True, blank=True)
    trace_id = models.CharField(max_length=64, null=True, blank=True)

    journal_size = models.IntegerField(default=0)
    retry_count = models.IntegerField(default=0)
    next_retry_at = models.DateTimeField(null=True, blank=True)
    last_failure = models.TextField(null=True, blank=True)
    # Restate's codes are strings: HTTP-like ("500") or its own ("RT0007").
    last_failure_error_code = models.CharField(max_length=32, null=True, blank=True)
    last_failure_related_command_name = models.TextField(null=True, blank=True)

    created_at = models.DateTimeField()
    modified_at = models.DateTimeField()
    inboxed_at = models.DateTimeField(null=True, blank=True)
    scheduled_at = models.DateTimeField(null=True, blank=True)
    scheduled_start_at = models.DateTimeField(null=True, blank=True)  # when a delayed send fires
    running_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    completion_retention = models.CharField(max_length=64, null=True, blank=True)  # ISO-8601 duration
    journal_retention = models.CharField(max_length=64, null=True, blank=True)

    # Ours, not Restate's.
    first_seen_at = models.DateTimeField()
    synced_at = models.DateTimeField()  # when our copy last changed (commit time of that sync step)
    journal_synced_size = models.IntegerField(default=0)  # journal entries we hold
    # When we last asked Restate for a not-started invocation's Input and got nothing:
    # it is asked again only after SYNC_INPUT_RETRY_S, not on every step.
    journal_attempted_at = models.DateTimeField(null=True, blank=True)
    gone_from_restate_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # The list page: newest first, keyset on (created_at, id).
            models.Index(fields=["-created_at", "-id"], name="inv_created_idx"),
            # The list sorted by last modification.
            models.Index(fields=["-modified_at", "-id"], name="inv_modified_idx"),
            # The list sorted by duration; only completed invocations have one.
            models.Index(
                models.F("completed_at") - models.F("created_at"),
                "id",
                name="inv_duration_idx",
                condition=models.Q(completed_at__isnull=False),
            ),
            # (The id-prefix search, LIKE 'inv_1ab%', uses the pattern-ops index Django creates for the primary key.)
            # The list filtered by status (chips), newest first.
            models.Index(fields=["status", "-created_at"], name="inv_status_created_idx"),
            # The list filtered by service/handler, and the service map's percentiles: completed_at
            # included, so the latest completed durations of a handler are an index-only scan
            # (measured at 30k rows: 74 -> 24 ms for 20 handlers' samples).
            models.Index(
                fields=["service_name", "handler_name", "-created_at"],
                name="inv_target_created_idx",
                include=["completed_at"],
            ),
            # Children of an invocation (tree expansion, "parent" filter).
            models.Index(fields=["parent"], name="inv_parent_idx"),
            # A whole call tree in one query (detail page).
            models.Index(fields=["root"], name="inv_root_idx"),
            # The sync's root resolution: rows whose ancestors were not all seen yet.
            models.Index(fields=["parent"], name="inv_unresolved_root_idx", condition=models.Q(root__isnull=True)),
            # The sync's journal backlog: invocations whose journal grew since we last read it.
            models.Index(
                fields=["id"],
                name="inv_journal_behind_idx",
                condition=models.Q(journal_size__gt=models.F("journal_synced_size"))
                & models.Q(gone_from_restate_at__isnull=True),
            ),
            # Not-yet-started invocations whose Input we have not read (Restate says journal_size 0),
            # never tried first, then by when we last tried: the due ones are at the front and a
            # LIMITed scan in this order never reads the ones tried recently.
            models.Index(
                models.F("journal_attempted_at").asc(nulls_first=True),
                name="inv_input_pending_idx",
                condition=models.Q(status__in=NOT_STARTED, journal_synced_size=0)
                & models.Q(gone_from_restate_at__isnull=True),
            ),
            # The outcome filter and chips (failed / cancelled / killed, newest first): failures
            # are rare, so without it a count or a page of them scans most of the table.
            models.Index(
                fields=["completion_failure", "-created_at", "-id"],
                name="inv_failure_created_idx",
                condition=models.Q(completion_result=COMPLETION_FAILURE),
            ),
            # One virtual object key's latest invocations (the key's page, selectors.objects.object_key_get:
            # `WHERE service_name = %s AND service_key = %s ORDER BY created_at DESC, id DESC LIMIT 20`),
            # and the list's service + key filter. Keyless invocations are left out: they never match.
            models.Index(
                fields=["service_name", "service_key", "-created_at", "-id"],
                name="inv_object_key_created_idx",
                condition=models.Q(service_key__isnull=False),
            ),
            # Idempotency-key search; most invocations from services have none.
            models.Index(
                fields=["idempotency_key"],
                name="inv_idempotency_idx",
                condition=models.Q(idempotency_key__isnull=False),
            ),
            # /stuck/ (reads.selectors.stuck.stuck_overview): the unfinished invocations grouped by
            # status and target, the queued ones by key, the oldest running/suspended ones sampled;
            # every column those queries read is here, so they are index-only scans of the
            # unfinished rows alone (100k of 1M: 441 -> 69 ms for the per-status groups).
            models.Index(
                fields=["status", "service_name", "handler_name", "created_at", "id"],
                name="inv_stuck_idx",
                include=[
                    "service_key",
                    "last_failure_error_code",
                    "modified_at",
                    "scheduled_start_at",
                    "next_retry_at",
                    "inboxed_at",
                    "journal_size",
                    "journal_synced_size",
                ],
                condition=~models.Q(status=InvocationStatus.COMPLETED) & models.Q(gone_from_restate_at__isnull=True),
            ),
            # /workflows/ (reads.selectors.workflows): workflow runs newest first, keyset on (created_at, id),
            # `WHERE service_type = 'workflow' AND handler_name = 'run' ORDER BY created_at DESC, id DESC LIMIT 51`;
            # service and status included, so a filter on either is checked in the index. Without it the
            # runs were found by reading every invocation newest first (runs are a small part of all).
            models.Index(
                fields=["-created_at", "-id"],
                name="wf_run_created_idx",
                include=["service_name", "status"],
                condition=models.Q(service_type="workflow", handler_name=WORKFLOW_MAIN_HANDLER),
            ),
            # /workflows/?status=S[&service=W] (`... AND status = %s [AND service_name = %s] ORDER BY created_at
            # DESC, id DESC`), and its status chips (`... GROUP BY status`: an index-only scan of the runs alone).
            models.Index(
                fields=["status", "service_name", "-created_at", "-id"],
                name="wf_run_status_idx",
                condition=models.Q(service_type="workflow", handler_name=WORKFLOW_MAIN_HANDLER),
            ),
            # /delayed/ (reads.selectors.delayed): the pending delayed messages in fire order, keyset
            # on (scheduled_start_at, id) (`WHERE status = 'scheduled' AND gone_from_restate_at IS NULL
            # ORDER BY scheduled_start_at, id LIMIT 51`), and the chart's counts per bucket (`date_bin`
            # over the same rows, GROUP BY). The target and sender filters read included columns, so
            # every one of those queries is an index-only scan of the scheduled rows alone.
            models.Index(
                fields=["scheduled_start_at", "id"],
                name="inv_delayed_fire_idx",
                include=["service_name", "handler_name", "invoked_by_target"],
                condition=models.Q(status=InvocationStatus.SCHEDULED) & models.Q(gone_from_restate_at__isnull=True),
            ),
            # The same rows by target: /delayed/ filtered by target service (and handler) in fire order,
            # and its chart's buckets as ranges (`WHERE service_name = %s AND handler_name = %s AND
            # scheduled_start_at >= %s AND scheduled_start_at < %s`); without it PostgreSQL took
            # inv_stuck_idx and read every scheduled row of the target for each bar (236 ms).
            models.Index(
                fields=["service_name", "handler_name", "scheduled_start_at", "id"],
                name="inv_delayed_target_idx",
                condition=models.Q(status=InvocationStatus.SCHEDULED) & models.Q(gone_from_restate_at__isnull=True),
            ),
            # The same rows, fire times alone: /delayed/'s chart counts each bucket as a range of it
            # (reads.selectors.delayed.delayed_fire_counts, `SELECT count(*) ... WHERE status = 'scheduled'
            # AND gone_from_restate_at IS NULL AND scheduled_start_at >= %s AND scheduled_start_at < %s`),
            # a sixth of the index above: 107,000 messages in a week counted in 22 ms instead of 31.
            models.Index(
                fields=["scheduled_start_at"],
                name="inv_delayed_count_idx",
                condition=models.Q(status=InvocationStatus.SCHEDULED) & models.Q(gone_from_restate_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.target} ({self.status})"

    @property
    def duration(self) -> timedelta | None:
        """Created to completed, or to now while it is still going; None before a delayed send fires."""
        if self.status == InvocationStatus.SCHEDULED:
            return None
        end: datetime = self.completed_at or timezone.now()
        return end - self.created_at


class EdgeKind(models.TextChoices):
    CALL = "call"  # request-response: the caller waits
    SEND = "send"  # one-way: the caller may finish first
    DELAYED_SEND = "delayed_send"  # one-way with a fire time in the future


class InvocationEdge(models.Model):
    """One `Command: Call` or `Command: OneWayCall` journal entry of the caller."""

    pk = models.CompositePrimaryKey("caller_id", "journal_index")
    caller_id = models.CharField(max_length=100)
    journal_index = models.IntegerField()
    # The caller's handler, copied from its invocation row when the edge is written (an edge
    # never changes its caller): the service map's rollups group edges by it without a join.
    caller_service = models.CharField(max_length=255)
    caller_handler = models.CharField(max_length=255)
    callee_id = models.CharField(max_length=100, null=True, blank=True)
    kind = models.CharField(max_length=16, choices=EdgeKind.choices)
    target_service = models.CharField(max_length=255)
    target_key = models.TextField(null=True, blank=True)
    target_handler = models.CharField(max_length=255)
    created_at = models.DateTimeField(null=True, blank=True)  # journal appended_at
    fire_at = models.DateTimeField(null=True, blank=True)  # delayed sends only

    class Meta:
        indexes = [
            # "Who called/sent to this invocation, and how" for the detail page's tree.
            models.Index(fields=["callee_id"], name="edge_callee_idx"),
            # The service map's edge aggregate: edges whose journal time is in the window
            # (service_map.service_map_get, `WHERE e.created_at >= since`).
            models.Index(fields=["created_at"], name="edge_created_idx"),
        ]

    @property
    def target(self) -> str:
        middle = f"/{self.target_key}" if self.target_key is not None else ""
        return f"{self.target_service}{middle}/{self.target_handler}"


class ServiceMapHour(models.Model):
    """Invocations created in one UTC hour, per handler: the service map's node counts.

    Derived from `Invocation` by `invocations.mirror.rollups` (hours marked dirty by the
    sync engine, recomputed by the rollup worker); a window sums its hours.
    """

    pk = models.CompositePrimaryKey("hour", "service_name", "handler_name")
    hour = models.DateTimeField()  # the start of the hour, UTC
    service_name = models.CharField(max_length=255)
    handler_name = models.CharField(max_length=255)
    service_type = models.CharField(max_length=32)
    invocations = models.IntegerField()
    completed = models.IntegerField()  # completed_at set
    failed = models.IntegerField()  # completion_result = 'failure'
    from_ingress = models.IntegerField()  # invoked_by = 'ingress' and no parent: roots sent from outside


class ServiceMapPair(models.Model):
    """A caller handler, callee handler and kind the rollups have counted edges of.

    `ServiceMapEdgeHour` counts by its integer id: a week of a dense map is ~150k hour
    rows, and summing them by an integer key costs a third of summing by five names.
    Never deleted (a handful per pair of handlers that ever talked).
    """

    id = models.BigAutoField(primary_key=True)
    caller_service = models.CharField(max_length=255)
    caller_handler = models.CharField(max_length=255)
    callee_service = models.CharField(max_length=255)
    callee_handler = models.CharField(max_length=255)
    kind = models.CharField(max_length=16, choices=EdgeKind.choices)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["caller_service", "caller_handler", "callee_service", "callee_handler", "kind"],
                name="smpair_unique",
            )
        ]


class ServiceMapEdgeHour(models.Model):
    """Call/send journal entries appended in one UTC hour, per caller handler, callee handler and kind."""

    pk = models.CompositePrimaryKey("hour", "pair")
    hour = models.DateTimeField()
    # No constraint and no index of its own, like the mirror's other references: the
    # primary key serves every read (a window's hours), and pairs are never deleted.
    pair = models.ForeignKey(
        ServiceMapPair, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+"
    )
    count = models.IntegerField()


class RollupDirtyHour(models.Model):
    """An hour whose rows changed since its rollups were computed.

    Marked in the same transaction as the change (an upsert on the hour that bumps
    `version`), so a crash between a commit and the refresh leaves the hour dirty. The
    refresher deletes a mark only at the version it read: a change committed during a
    refresh keeps its hour dirty for the next one.
    """

    hour = models.DateTimeField(primary_key=True)
    version = models.BigIntegerField(default=1)
    marked_at = models.DateTimeField()  # first marked (kept while it stays dirty)


class RollupState(models.Model):
    """The rollups' single row: `generation` grows with every refresh that rewrote an hour,
    so a cached map is current exactly while the generation it was computed at is."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    generation = models.BigIntegerField(default=0)
    refreshed_at = models.DateTimeField(null=True, blank=True)  # the last refresh that rewrote an hour
    last_refresh_s = models.FloatField(null=True, blank=True)
    last_hours = models.IntegerField(default=0)  # hours it rewrote
    rebuilt_at = models.DateTimeField(null=True, blank=True)


class DrawingCache(models.Model):
    """Drawings shared by every web process, zlib-compressed: Graphviz's layouts
    ("layout:" + a hash of the DOT source) and rendered service maps ("map:" + a hash of
    what they show and of the code that draws them).

    Not Restate's state: a cache, so a graph laid out or a map rendered once is not done
    again by another process (dot costs 0.1-0.4 s for a dense map, rendering ~0.1 s).
    Bounded by `invocations.reads.presenters.service_map` (the newest entries of each kind kept).
    """

    key = models.CharField(primary_key=True, max_length=100)
    value = models.BinaryField()
    created_at = models.DateTimeField()


class JournalEntry(models.Model):
    pk = models.CompositePrimaryKey("invocation_id", "index")
    invocation_id = models.CharField(max_length=100)
    index = models.IntegerField()
    entry_type = models.CharField(max_length=64)
    name = models.TextField(null=True, blank=True)
    appended_at = models.DateTimeField(null=True, blank=True)
    entry = models.JSONField(null=True, blank=True)  # entry_json (with payloads)
    entry_lite = models.JSONField(null=True, blank=True)  # entry_lite_json


class QueuedInvocation(models.Model):
    """A virtual object key's inbox (`sys_inbox`), replaced wholesale each sync step."""

    invocation_id = models.CharField(primary_key=True, max_length=100)
    service_name = models.CharField(max_length=255)
    service_key = models.TextField()
    sequence_number = models.BigIntegerField()
    created_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # A key's queue in order (object page, "who waits behind whom").
            models.Index(fields=["service_name", "service_key", "sequence_number"], name="queue_key_seq_idx"),
        ]


class ObjectLock(models.Model):
    """Who holds a virtual object key's exclusive lock (`sys_keyed_service_status`)."""

    pk = models.CompositePrimaryKey("service_name", "service_key")
    service_name = models.CharField(max_length=255)
    service_key = models.TextField()
    invocation_id = models.CharField(max_length=100)

    class Meta:
        indexes = [
            # "Does this invocation hold a lock?" on the detail page and in deadlock analysis.
            models.Index(fields=["invocation_id"], name="lock_holder_idx"),
        ]


class WorkflowPromise(models.Model):
    pk = models.CompositePrimaryKey("service_name", "service_key", "key")
    service_name = models.CharField(max_length=255)
    service_key = models.TextField()
    key = models.TextField()
    completed = models.BooleanField(default=False)
    success_value = models.TextField(null=True, blank=True)
    failure = models.TextField(null=True, blank=True)


class Service(models.Model):
    name = models.CharField(primary_key=True, max_length=255)
    service_type = models.CharField(max_length=32)
    revision = models.IntegerField(default=0)
    public = models.BooleanField(default=True)
    deployment_id = models.CharField(max_length=100, null=True, blank=True)


class Deployment(models.Model):
    id = models.CharField(primary_key=True, max_length=100)
    deployment_type = models.CharField(max_length=32)
    endpoint = models.TextField(null=True, blank=True)
    created_at = models.DateTimeField(null=True, blank=True)


class FeedMode(models.TextChoices):
    POLL = "poll"
    PUSH = "push"


class SyncState(models.Model):
    """The sync engine's single row: where it is, and how it is doing (shown on every page)."""

    class QueueTables(models.TextChoices):
        """Where Restate keeps object queues and locks (`GET /version` feature `vqueues`)."""

        CLASSIC = "classic"  # sys_inbox, sys_keyed_service_status
        VQUEUES = "vqueues"  # sys_vqueues + sys_vqueue_meta, sys_locks

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    watermark = models.DateTimeField(null=True, blank=True)  # max Restate modified_at seen
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    # Our copy reflects Restate as of this moment: the start of the last good step.
    mirrored_as_of = models.DateTimeField(null=True, blank=True)
    last_duration_s = models.FloatField(null=True, blank=True)
    last_rows = models.IntegerField(default=0)  # rows read from Restate in the last step
    last_changed = models.IntegerField(default=0)  # rows that differed from our copy
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.IntegerField(default=0)
    last_reconcile_at = models.DateTimeField(null=True, blank=True)
    last_reconcile_gone = models.IntegerField(default=0)
    last_reconcile_refetched = models.IntegerField(default=0)  # missing or stale rows re-read by id
    last_reconcile_revived = models.IntegerField(default=0)  # marked gone, yet Restate still had them
    restate_version = models.CharField(max_length=32, blank=True)
    # Which of Restate's tables object queues and locks are mirrored from (see QueueTables).
    queue_tables = models.CharField(max_length=16, choices=QueueTables.choices, default=QueueTables.CLASSIC)
    # Whether object queues and locks are mirrored at all: True in both layouts (kept for pages that ask).
    queues_supported = models.BooleanField(default=True)
    # First failure of the current streak (null while healthy); kept in the engine's memory
    # while PostgreSQL is down and written once it is back.
    failing_since = models.DateTimeField(null=True, blank=True)
    # The loop's current wait between steps (poll interval or backoff): a last success
    # older than a few of these means the sync froze or died.
    expected_interval_s = models.FloatField(null=True, blank=True)
    # Seconds the last invocation scan took, and the overlap window it was read with.
    last_scan_s = models.FloatField(null=True, blank=True)
    overlap_s = models.FloatField(null=True, blank=True)
    # Snapshots that hit SYNC_SNAPSHOT_ROWS: what we hold of them is a prefix, not the whole.
    queues_truncated = models.BooleanField(default=False)  # sys_inbox, or sys_vqueues' waiting entries
    locks_truncated = models.BooleanField(default=False)  # sys_keyed_service_status, or sys_locks
    promises_truncated = models.BooleanField(default=False)  # sys_promise
    catalog_truncated = models.BooleanField(default=False)  # sys_service, sys_deployment
    snapshots_truncated_at = models.DateTimeField(null=True, blank=True)  # when one was last found truncated
    # PostgreSQL's clock, like Invocation.synced_at: every row synced up to this moment was
    # broadcast. A restarted engine broadcasts the rows synced after it (see SyncEngine.broadcast_unsent).
    last_broadcast_at = models.DateTimeField(null=True, blank=True)
    # How the mirror learns of changes: "push" while Restate's trace spans arrive (hints
    # re-read by id; the full scan is a slow safety net), "poll" otherwise. Written by the loop.
    feed_mode = models.CharField(max_length=8, choices=FeedMode.choices, default=FeedMode.POLL)
    feed_mode_since = models.DateTimeField(null=True, blank=True)
    # The last hint pass that committed a change (push mode's freshness; steps are 30 s apart then).
    last_hint_at = models.DateTimeField(null=True, blank=True)
    # Rows the last step found changed in push mode: what the spans did not announce (scheduled,
    # inboxed) or what was lost on the way; zero most of the time.
    last_net_changed = models.IntegerField(null=True, blank=True)

    @classmethod
    def load(cls) -> SyncState:
        state, _ = cls.objects.get_or_create(id=1)
        return state

    @property
    def lag(self) -> timedelta | None:
        if self.mirrored_as_of is None:
            return None
        return timezone.now() - self.mirrored_as_of

    @property
    def healthy(self) -> bool:
        return self.consecutive_failures == 0 and self.last_success_at is not None

    @property
    def truncated_snapshots(self) -> list[str]:
        """What the pages must not present as complete."""
        flags = [
            (self.queues_truncated, "queues"),
            (self.locks_truncated, "locks"),
            (self.promises_truncated, "promises"),
            (self.catalog_truncated, "services"),
        ]
        return [name for truncated, name in flags if truncated]


class SyncHint(models.Model):
    """ "Re-read this invocation from Restate now": written by actions (in the same
    transaction as their audit entry) and consumed by the sync engine, which keeps
    re-reading the id until `until`, because Restate applies an action
    asynchronously (a cancel reaches the children over the next moments).

    One row per invocation, so the queue is bounded by the number of distinct ids
    hinted, however often they are hinted.
    """

    invocation_id = models.CharField(primary_key=True, max_length=100)
    requested_at = models.DateTimeField()
    until = models.DateTimeField()
    # Read at least once, whatever `until` says: a span's hint follows for no time at all
    # (Restate exports the span after the state it describes is readable).
    read = models.BooleanField(default=False)


class TraceFeed(models.Model):
    """What the OTLP receiver got from Restate: one row, written by the web processes that
    receive (never by the sync engine), shown on the sync line; the sync loop reads
    `last_received_at` to choose push or poll, and `last_dropped_at` to scan at once when
    the hint queue was full."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    requests = models.BigIntegerField(default=0)
    spans = models.BigIntegerField(default=0)
    ids_hinted = models.BigIntegerField(default=0)
    last_received_at = models.DateTimeField(null=True, blank=True)
    refused = models.BigIntegerField(default=0)
    last_refused_at = models.DateTimeField(null=True, blank=True)
    last_refusal = models.TextField(blank=True)
    ids_dropped = models.BigIntegerField(default=0)  # hints refused because the queue was full
    last_dropped_at = models.DateTimeField(null=True, blank=True)

    @classmethod
    def load(cls) -> TraceFeed:
        feed, _ = cls.objects.get_or_create(id=1)
        return feed


class SpanKind(models.TextChoices):
    INGRESS = "ingress"  # `ingress <svc>/<handler>`: the ingress accepted the request
    START = "start"  # `invocation-start`
    ATTEMPT = "attempt"  # `invocation-attempt`: one per attempt, ends with it
    END = "end"  # `invocation-end`


class InvocationSpan(models.Model):
    """One of Restate's trace spans about an invocation, kept (SPANS_KEEP_S, SPANS_MAX_ROWS)
    to draw attempts: running time apart from waiting, every retry and suspension.

    Not a foreign key: a span can arrive before the sync has mirrored its invocation."""

    class Status(models.IntegerChoices):
        UNSET = 0
        OK = 1
        ERROR = 2

    id = models.BigAutoField(primary_key=True)
    invocation_id = models.CharField(max_length=100)
    kind = models.CharField(max_length=8, choices=SpanKind.choices)
    trace_id = models.CharField(max_length=32)
    span_id = models.CharField(max_length=16)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField()
    status = models.SmallIntegerField(choices=Status.choices, default=Status.UNSET)
    status_message = models.TextField(blank=True)
    deployment_id = models.CharField(max_length=100, blank=True)
    deployment_address = models.TextField(blank=True)
    result = models.CharField(max_length=16, blank=True)  # invocation-end: success / failure
    received_at = models.DateTimeField()

    class Meta:
        indexes = [
            # The attempts of one invocation, in order (detail page, waterfall).
            models.Index(fields=["invocation_id", "started_at"], name="span_invocation_idx"),
            # Retention: DELETE ... WHERE received_at < cutoff.
            models.Index(fields=["received_at"], name="span_received_idx"),
        ]
        constraints = [
            # An exporter retrying a batch it thinks failed sends the same spans again.
            models.UniqueConstraint(fields=["trace_id", "span_id"], name="span_unique"),
        ]


class Deadlock(models.Model):
    """A cycle in the wait-for graph, as `invocations.analysis.deadlocks` found it in
    our copy: kept while it lasts (`resolved_at` null) and for a while after it broke,
    so an incident can be read afterwards. Derived data, like the rollups.
    """

    # A hash of the sorted member ids: the same cycle found again is the same row.
    id = models.CharField(primary_key=True, max_length=64)
    keys = models.JSONField(default=list)  # [[service, key], ...]: the locks the cycle holds, in wait order
    suggested_id = models.CharField(max_length=100)  # the member to cancel (the youngest)
    # When the cycle closed: the latest start among its members' waits (journal time of the
    # call, or when the queued call entered the inbox).
    since = models.DateTimeField(null=True, blank=True)
    detected_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    # Found while a queue or lock snapshot was truncated: the cycle is real, but others may be missed.
    from_truncated = models.BooleanField(default=False)

    class Meta:
        indexes = [
            # /deadlocks/: the current cycles (few), and the recently broken ones newest first.
            models.Index(fields=["-resolved_at"], name="deadlock_resolved_idx"),
        ]


class DeadlockMember(models.Model):
    """One invocation of a cycle, at its place in wait order (each waits on the next)."""

    pk = models.CompositePrimaryKey("deadlock_id", "position")
    deadlock = models.ForeignKey(
        Deadlock, on_delete=models.CASCADE, db_constraint=False, db_index=False, related_name="members"
    )
    position = models.IntegerField()
    invocation_id = models.CharField(max_length=100)

    class Meta:
        indexes = [
            # "Is this invocation (or anything in this tree) part of a deadlock?": banners and stuck reasons.
            models.Index(fields=["invocation_id"], name="deadlock_member_inv_idx"),
        ]
