"""The sync engine's steps against an in-memory fake of Restate's query API (tests/sync_fake.py):
overlap growth, incremental journals, the not-started Input backlog, truncated snapshots,
commit-then-broadcast when a later page fails, a killed engine's rows told by the next one,
reconciliation both ways, and the failure streak kept while PostgreSQL is down."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import OperationalError, connection

from invocations import events
from invocations.live import fragments
from invocations.mirror.models import Invocation, JournalEntry, SyncState
from invocations.mirror.sync import engine as engine_module
from invocations.mirror.sync.engine import SyncEngine
from invocations.restate import RestateUnavailable
from tests.sync_fake import T0, FakeRestate, fake_id

Sent = list[tuple[str, dict[str, Any]]]


@pytest.fixture
def restate() -> FakeRestate:
    return FakeRestate()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Sent:
    messages: Sent = []
    monkeypatch.setattr(events, "_send", lambda group, message: messages.append((group, message)))
    return messages


def make_engine(restate: FakeRestate, **kwargs: Any) -> SyncEngine:
    options: dict[str, Any] = {
        "reconcile_every": timedelta(days=1),
        "slow_every": timedelta(0),
        "overlap": timedelta(seconds=5),
    }
    options.update(kwargs)
    engine = SyncEngine(restate, **options)  # type: ignore[arg-type]
    SyncState.objects.update_or_create(id=1, defaults={"last_reconcile_at": T0 + timedelta(days=3650)})
    return engine


def listed_ids(sent: Sent) -> set[str]:
    return {i for group, m in sent if group == events.LIST_GROUP for i in m["ids"]}


def tree_groups(sent: Sent) -> set[str]:
    return {group for group, _ in sent if group.startswith("tree.")}


def scan_sql(restate: FakeRestate) -> list[str]:
    return [q for q in restate.queries if q.startswith("SELECT id, target,") and "id IN" not in q]


# ------------------------------------------------------------------ overlap


def test_overlap_is_three_scans_long_and_never_below_the_floor(transactional_db: None, restate: FakeRestate) -> None:
    engine = make_engine(restate)
    assert engine.overlap_for(last_scan_s=None) == timedelta(seconds=5)
    assert engine.overlap_for(last_scan_s=0.2) == timedelta(seconds=5), "the floor holds for quick scans"
    assert engine.overlap_for(last_scan_s=4.0) == timedelta(seconds=12)

    restate.add(1, modified_at=T0)
    engine.sync_once()  # the first load has no window
    state = SyncState.load()
    assert state.watermark == T0 and state.last_scan_s is not None and state.overlap_s is None

    # A long scan (as measured by the last step) widens the next step's window.
    SyncState.objects.filter(id=1).update(last_scan_s=10.0)
    report = engine.sync_once()
    assert report.overlap_s == 30.0
    assert "TIMESTAMP '2026-11-22T11:59:30.000000'" in scan_sql(restate)[-1]

    # A quick one brings it back to the floor.
    SyncState.objects.filter(id=1).update(last_scan_s=0.01)
    assert engine.sync_once().overlap_s == 5.0
    assert "TIMESTAMP '2026-11-22T11:59:55.000000'" in scan_sql(restate)[-1]


def test_a_row_appearing_behind_the_watermark_within_the_window_is_not_lost(
    transactional_db: None, restate: FakeRestate
) -> None:
    engine = make_engine(restate)
    restate.add(1, modified_at=T0 + timedelta(seconds=20))
    engine.sync_once()
    SyncState.objects.filter(id=1).update(last_scan_s=5.0)  # 15 s window
    # Committed during the last scan in a partition already read: 12 s behind the watermark.
    late = restate.add(2, modified_at=T0 + timedelta(seconds=8))
    engine.sync_once()
    assert Invocation.objects.filter(id=late).exists()


# ------------------------------------------------------------------ first sight


def invocation_writes() -> tuple[int, int]:
    """(rows inserted, rows updated) in our invocation table so far, from PostgreSQL's own counters."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")  # this backend's counts, flushed once idle
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT n_tup_ins, n_tup_upd FROM pg_stat_user_tables WHERE relname = %s", [Invocation._meta.db_table]
        )
        inserted, updated = cursor.fetchone()
        return inserted, updated


def add_trees_children_first(restate: FakeRestate, at: timedelta = timedelta(0)) -> list[str]:
    """Restate scans partition by partition: children often come before their parents."""
    ids = [
        restate.add(3, parent=2, journal=2, modified_at=T0 + at),  # a grandchild, two pages before its root
        restate.add(4, parent=1, journal=2, modified_at=T0 + at),
        restate.add(2, parent=1, journal=3, modified_at=T0 + at),
        restate.add(5, journal=1, modified_at=T0 + at),  # a tree that arrives whole in one page
        restate.add(6, parent=5, journal=2, modified_at=T0 + at),
        restate.add(1, journal=4, modified_at=T0 + at),
        restate.add(7, parent=99, journal=1, modified_at=T0 + at),  # its parent is not in Restate's scan at all
    ]
    return ids


@pytest.mark.parametrize(
    ("first_sync", "counts_max"),
    [(True, 1000), (True, 0), (False, 1000)],
    ids=["backfill", "backfill counting entries in SQL", "new rows of a later step"],
)
def test_a_first_sight_writes_each_row_once_with_its_root_and_journal(
    transactional_db: None,
    restate: FakeRestate,
    sent: Sent,
    monkeypatch: pytest.MonkeyPatch,
    first_sync: bool,
    counts_max: int,
) -> None:
    monkeypatch.setattr(engine_module, "BACKFILL_COUNTS_MAX", counts_max)
    engine = make_engine(restate, page_rows=2)
    restate.batch_rows = 2
    if not first_sync:
        # A later step reads the journals of its new rows by id, not in one scan.
        restate.add(50, modified_at=T0)
        engine.sync_once()
        restate.queries.clear()
        sent.clear()
    ids = add_trees_children_first(restate, at=timedelta(minutes=1))
    before = invocation_writes()
    report = engine.sync_once()
    scans = [q for q in restate.journal_queries() if " IN " not in q]
    assert len(scans) == int(first_sync)
    inserted, updated = (after - was for after, was in zip(invocation_writes(), before, strict=True))

    roots = dict(Invocation.objects.filter(id__in=ids).values_list("id", "root_id"))
    assert roots == {
        fake_id(3): fake_id(1), fake_id(4): fake_id(1), fake_id(2): fake_id(1), fake_id(1): fake_id(1),
        fake_id(5): fake_id(5), fake_id(6): fake_id(5), fake_id(7): None,
    }  # fmt: skip
    assert report.roots_resolved == 0, "no root left for the UPDATE pass but the parentless one"
    assert list(Invocation.objects.filter(id__in=ids).values_list("journal_synced_size", flat=True).order_by("id")) == [
        4,
        3,
        2,
        2,
        1,
        2,
        1,
    ]
    assert JournalEntry.objects.filter(invocation_id__in=ids).count() == 15 and report.journal_entries == 15
    assert (inserted, updated) == (len(ids), 0), "each row written once: root and journal state in the insert"
    assert listed_ids(sent) == set(ids)
    assert tree_groups(sent) == {
        events.tree_group(fake_id(1)),
        events.tree_group(fake_id(5)),
        events.tree_group(ids[-1]),
    }

    # The parentless row's parent appears: resolved by the UPDATE pass, as before.
    restate.add(99, modified_at=T0 + timedelta(minutes=5))
    assert engine.sync_once().roots_resolved == 1
    assert Invocation.objects.get(id=ids[-1]).root_id == fake_id(99)


def test_a_backfill_leaves_its_reconciliation_to_the_next_step(transactional_db: None, restate: FakeRestate) -> None:
    engine = make_engine(restate)
    SyncState.objects.filter(id=1).update(last_reconcile_at=None)
    restate.add(1)
    assert engine.sync_once().reconcile is None, "the backfill read every row just now"
    assert engine.sync_once().reconcile is not None, "due in the next step"


def test_rows_past_the_held_bound_are_written_at_once_and_their_roots_still_resolved(
    transactional_db: None, restate: FakeRestate, sent: Sent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "MAX_HELD_ORPHANS", 1)
    engine = make_engine(restate, page_rows=2)
    restate.batch_rows = 2
    add_trees_children_first(restate)
    report = engine.sync_once()
    assert report.roots_resolved >= 1, "a child written before its parent came is completed by the UPDATE pass"
    assert Invocation.objects.filter(root__isnull=True).count() == 1  # the parentless one
    assert tree_groups(sent) >= {events.tree_group(fake_id(1)), events.tree_group(fake_id(5))}


def test_held_rows_are_committed_with_the_pages_read_before_restate_fails(
    transactional_db: None, restate: FakeRestate
) -> None:
    engine = make_engine(restate, page_rows=2)
    restate.batch_rows = 2
    add_trees_children_first(restate)

    def fail_on_the_third_batch(sql: str) -> None:
        if sql.startswith("-- batch 2 of: SELECT id, target,"):
            raise RestateUnavailable("connection lost mid-scan")

    restate.before_query = fail_on_the_third_batch
    with pytest.raises(RestateUnavailable):
        engine.sync_once()
    held = {fake_id(3), fake_id(4), fake_id(2)}  # read, parent not yet seen
    assert set(Invocation.objects.values_list("id", flat=True)) == held | {fake_id(5)}
    assert all(i.journal_synced_size == i.journal_size for i in Invocation.objects.all())
    # A first sync reads every journal before the invocations.
    assert set(JournalEntry.objects.values_list("invocation_id", flat=True)) == set(restate.invocations)

    restate.before_query = None
    engine.sync_once()
    assert Invocation.objects.filter(root_id=fake_id(1)).count() == 4


# ------------------------------------------------------------------ journals


def test_journal_is_read_from_the_first_entry_we_do_not_hold(transactional_db: None, restate: FakeRestate) -> None:
    engine = make_engine(restate)
    a = restate.add(1, status="running", journal=3)
    b = restate.add(2, status="running", journal=1)
    engine.sync_once()
    first = restate.journal_queries()
    assert first and all("index >=" not in q for q in first), "nothing held yet: whole journals"
    assert JournalEntry.objects.filter(invocation_id=a).count() == 3

    for index in (3, 4):
        restate.append_entry(a, index=index)
    restate.append_entry(b, index=1)
    restate.queries.clear()
    report = engine.sync_once()

    queries = restate.journal_queries()
    assert queries, "the grown journals are read"
    assert any("index >= 3" in q and a in q for q in queries)
    assert any("index >= 1" in q and b in q for q in queries)
    assert report.journal_entries == 3, "only the new entries came back and were written"
    assert Invocation.objects.get(id=a).journal_synced_size == 5
    assert JournalEntry.objects.filter(invocation_id=a).count() == 5

    restate.queries.clear()
    engine.sync_once()
    assert not restate.journal_queries(), "nothing grew: no journal query"


def test_a_grown_journal_is_read_with_its_row_and_the_row_written_once(
    transactional_db: None, restate: FakeRestate
) -> None:
    engine = make_engine(restate)
    a = restate.add(1, status="running", journal=2)
    engine.sync_once()
    restate.append_entry(a, index=2)
    restate.queries.clear()
    before = invocation_writes()
    engine.sync_once()
    inserted, updated = (after - was for after, was in zip(invocation_writes(), before, strict=True))
    assert (inserted, updated) == (0, 1), "the row and its journal state in one write"
    assert len(restate.journal_queries()) == 1
    assert Invocation.objects.get(id=a).journal_synced_size == 3


def test_not_started_input_is_asked_for_rarely_not_every_step(transactional_db: None, restate: FakeRestate) -> None:
    engine = make_engine(restate, input_retry=timedelta(minutes=1))
    delayed = restate.add(1, status="scheduled", journal=0, journal_size=0)
    engine.sync_once()
    assert any(delayed in q for q in restate.journal_queries()), "asked once"
    assert Invocation.objects.get(id=delayed).journal_attempted_at is not None

    restate.queries.clear()
    for _ in range(3):
        engine.sync_once()
    assert not restate.journal_queries(), "not asked again on every step"

    # After the retry interval it is asked again, and once Restate shows the Input it is kept.
    Invocation.objects.filter(id=delayed).update(journal_attempted_at=T0 - timedelta(hours=1))
    restate.append_entry(delayed, index=0, bump=False)
    engine.sync_once()
    assert JournalEntry.objects.filter(invocation_id=delayed, entry_type="Command: Input").exists()
    assert Invocation.objects.get(id=delayed).journal_synced_size == 1
    restate.queries.clear()
    Invocation.objects.filter(id=delayed).update(journal_attempted_at=None)
    engine.sync_once()
    assert not restate.journal_queries(), "held: out of the backlog for good"


# ------------------------------------------------------------------ snapshots


def test_snapshots_over_the_cap_are_recorded_as_truncated_and_shown(
    transactional_db: None, restate: FakeRestate
) -> None:
    engine = make_engine(restate, snapshot_rows=2)
    holder = restate.add(1, status="running")
    for n in range(3):
        queued = restate.add(10 + n, status="pending", journal=0, journal_size=0)
        restate.inbox.append(
            {"service_name": "Counter", "service_key": "k", "id": queued, "sequence_number": n, "created_at": T0}
        )
    restate.locks.append({"service_name": "Counter", "service_key": "k", "invocation_id": holder})
    engine.sync_once()

    state = SyncState.load()
    assert state.queues_truncated and not state.locks_truncated
    assert state.snapshots_truncated_at is not None
    assert state.truncated_snapshots == ["queues"]
    html = fragments.sync_state(state)
    assert "Incomplete: queues" in html

    restate.inbox.pop()
    engine.sync_once()
    state = SyncState.load()
    assert not state.queues_truncated and state.truncated_snapshots == []
    assert "Incomplete" not in fragments.sync_state(state)


# ------------------------------------------------------------------ broadcasts


def test_a_failed_step_still_broadcasts_the_pages_it_committed(
    transactional_db: None, restate: FakeRestate, sent: Sent
) -> None:
    engine = make_engine(restate, page_rows=2)
    restate.batch_rows = 2
    ids = [restate.add(n) for n in range(1, 8)]

    def fail_on_the_third_batch(sql: str) -> None:
        if sql.startswith("-- batch 2 of: SELECT id, target,"):
            raise RestateUnavailable("connection lost mid-scan")

    restate.before_query = fail_on_the_third_batch
    with pytest.raises(RestateUnavailable):
        engine.sync_once()
    committed = set(Invocation.objects.values_list("id", flat=True))
    assert committed == set(ids[:4]), "two pages of two committed before the failure"
    assert listed_ids(sent) == committed
    assert tree_groups(sent) == {events.tree_group(i) for i in committed}
    assert SyncState.load().watermark is None, "the watermark did not move"


def test_roots_resolved_in_the_step_are_handed_to_the_broadcast(
    transactional_db: None, restate: FakeRestate, sent: Sent
) -> None:
    engine = make_engine(restate)
    restate.add(1)
    child = restate.add(2, parent=1)
    restate.invocations.pop(fake_id(1))  # Restate shows the child first
    engine.sync_once()
    assert events.tree_group(child) in tree_groups(sent), "an unresolved child is its own tree"

    sent.clear()
    restate.add(1, modified_at=T0 + timedelta(seconds=30))
    engine.sync_once()
    assert Invocation.objects.get(id=child).root_id == fake_id(1)
    assert events.tree_group(fake_id(1)) in tree_groups(sent)
    assert child in listed_ids(sent), "the child's tree changed: it is told too"


class Killed(BaseException):
    """kill -9: nothing after this point runs, not even except/finally broadcasts."""


def test_an_engine_killed_mid_step_leaves_no_page_stale(
    transactional_db: None, restate: FakeRestate, sent: Sent, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_engine(restate)
    ids = [restate.add(n) for n in range(1, 4)]
    first.sync_once()
    assert SyncState.load().last_broadcast_at is not None

    # The next step commits changes, then the process dies before its watermark update.
    for inv_id in ids[:2]:
        restate.invocations[inv_id]["status"] = "completed"
        restate.invocations[inv_id]["modified_at"] = T0 + timedelta(minutes=5)
    watermark = SyncState.load().watermark

    def die(sql: str) -> None:
        if "sys_inbox" in sql:
            raise Killed

    def no_broadcast(self: Any) -> None:
        raise Killed

    restate.before_query = die
    monkeypatch.setattr(engine_module.Changes, "broadcast", no_broadcast)
    sent.clear()
    with pytest.raises(Killed):
        first.sync_once()
    assert not sent and SyncState.load().watermark == watermark
    assert Invocation.objects.filter(id__in=ids[:2], modified_at=T0 + timedelta(minutes=5)).count() == 2

    # A new engine re-reads those rows, finds them equal: without a catch-up nobody would be told.
    monkeypatch.undo()
    monkeypatch.setattr(events, "_send", lambda group, message: sent.append((group, message)))
    restate.before_query = None
    second = make_engine(restate)
    assert second.broadcast_unsent() == 2
    assert listed_ids(sent) == set(ids[:2])
    assert tree_groups(sent) == {events.tree_group(i) for i in ids[:2]}
    sent.clear()
    assert second.sync_once().changed == 0
    assert second.broadcast_unsent() == 0, "told once"


# ------------------------------------------------------------------ reconciliation


def test_reconcile_refetches_missing_and_stale_rows_marks_gone_and_revives(
    transactional_db: None, restate: FakeRestate, sent: Sent
) -> None:
    engine = make_engine(restate)
    ids = [restate.add(n) for n in range(1, 7)]
    engine.sync_once()
    missing, stale, wrongly_gone, purged, brand_new, untouched = ids

    Invocation.objects.filter(id=missing).delete()
    Invocation.objects.filter(id=stale).update(status="running")
    Invocation.objects.filter(id=wrongly_gone).update(gone_from_restate_at=T0)
    restate.invocations.pop(purged)
    # Created after the listing passed its partition: absent from it, present by id.
    restate.unlisted.add(brand_new)
    # Never from Restate, and not even an id Restate accepts in a query.
    invalid = Invocation.objects.get(id=untouched)
    invalid.id = "inv_notARestateId"
    invalid.save(force_insert=True)
    sent.clear()

    report = engine.reconcile()
    assert (report.refetched, report.revived, report.gone) == (3, 1, 2)
    assert Invocation.objects.get(id="inv_notARestateId").gone_from_restate_at is not None
    assert Invocation.objects.filter(id=missing).exists()
    assert Invocation.objects.get(id=stale).status == "completed"
    assert Invocation.objects.get(id=wrongly_gone).gone_from_restate_at is None
    assert Invocation.objects.get(id=purged).gone_from_restate_at is not None
    assert Invocation.objects.get(id=brand_new).gone_from_restate_at is None, "looked up by id before marking"
    assert listed_ids(sent) == {missing, stale, wrongly_gone, purged, "inv_notARestateId"}
    assert untouched not in listed_ids(sent)
    state = SyncState.load()
    assert (state.last_reconcile_refetched, state.last_reconcile_revived, state.last_reconcile_gone) == (3, 1, 2)

    # Lookups by id go in lists of at most 1000, through the quoting function.
    assert all(q.count("'inv_") <= 1000 for q in restate.queries)
    assert engine.reconcile().refetched == 0, "nothing left to fix"


def test_reconcile_pages_through_more_ids_than_one_query_holds(transactional_db: None, restate: FakeRestate) -> None:
    engine = make_engine(restate)
    ids = [restate.add(n, journal=0, journal_size=0) for n in range(2500)]
    report = engine.reconcile()
    assert report.refetched == 2500 and Invocation.objects.count() == 2500
    lookups = [q for q in restate.queries if "FROM sys_invocation WHERE id IN" in q]
    assert len(lookups) == 3 and max(q.count("'inv_") for q in lookups) == 1000
    for inv_id in ids[:1500]:
        restate.invocations.pop(inv_id)
    assert engine.reconcile().gone == 1500


# ------------------------------------------------------------------ failures


def test_failing_since_counts_failures_recorded_while_postgresql_was_down(
    transactional_db: None, restate: FakeRestate
) -> None:
    clock = iter(T0 + timedelta(seconds=10 * n) for n in range(100))
    engine = make_engine(restate, clock=lambda: next(clock))

    def database_down(*args: Any) -> None:
        raise OperationalError("connection refused")

    with connection.execute_wrapper(database_down):
        for _ in range(3):
            engine.record_failure(OperationalError("connection refused"))
    assert SyncState.load().consecutive_failures == 0, "nothing could be written"

    engine.record_failure(RestateUnavailable("Restate is down"), expected_interval_s=4.0)
    state = SyncState.load()
    assert state.failing_since == T0, "the streak began with the first, unrecorded failure"
    assert state.consecutive_failures == 4
    assert state.expected_interval_s == 4.0
    html = fragments.sync_state(state)
    assert "4 failures since" in html

    # A restarted engine continues the streak it finds instead of starting a new one.
    again = make_engine(restate, clock=lambda: T0 + timedelta(hours=1))
    again.record_failure(RestateUnavailable("still down"))
    state = SyncState.load()
    assert state.failing_since == T0 and state.consecutive_failures == 5

    restate.add(1)
    again.sync_once()
    state = SyncState.load()
    assert state.failing_since is None and state.consecutive_failures == 0
