"""The service map's hourly rollups (invocations/mirror/rollups.py): equal to a direct
aggregate of the rows after random syncs across hours, dirty hours marked by the sync
engine in its own transactions and cleared only at the version read, the worker's step,
generate_invocations, and the migration that gives edges their caller's handler."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.db import OperationalError, connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from invocations.management.commands import refresh_rollups
from invocations.mirror import rollups
from invocations.mirror.models import (
    Invocation,
    InvocationEdge,
    RollupDirtyHour,
    RollupState,
    ServiceMapEdgeHour,
    ServiceMapHour,
    ServiceMapPair,
    SyncState,
)
from invocations.mirror.sync.engine import SyncEngine
from invocations.restate import RestateClient
from tests.factories import build_edge, build_invocation
from tests.sync_fake import T0, FakeRestate, fake_id

HANDLERS = [("Greeter", "greet", "service"), ("Cart", "add", "virtual_object"), ("Signup", "run", "workflow")]


def direct_nodes() -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """What the rollups must say, counted from the rows here in Python."""
    out: dict[tuple[Any, ...], list[Any]] = {}
    for i in Invocation.objects.all():
        row = out.setdefault((rollups.hour_of(i.created_at), i.service_name, i.handler_name), ["", 0, 0, 0, 0])
        row[0] = max(row[0], i.service_type)
        row[1] += 1
        row[2] += i.completed_at is not None
        row[3] += i.completion_result == "failure"
        row[4] += i.invoked_by == "ingress" and i.parent_id is None
    return {k: tuple(v) for k, v in out.items()}


def direct_edges() -> dict[tuple[Any, ...], int]:
    callers = {i.id: (i.service_name, i.handler_name) for i in Invocation.objects.all()}
    out: Counter[tuple[Any, ...]] = Counter()
    for e in InvocationEdge.objects.exclude(created_at=None):
        assert (e.caller_service, e.caller_handler) == callers[e.caller_id], "the caller's handler, denormalized"
        out[
            (
                rollups.hour_of(e.created_at),
                e.caller_service,
                e.caller_handler,
                e.target_service,
                e.target_handler,
                e.kind,
            )
        ] += 1  # type: ignore[arg-type]
    return dict(out)


def rolled_nodes() -> dict[tuple[Any, ...], tuple[Any, ...]]:
    return {
        (r.hour, r.service_name, r.handler_name): (r.service_type, r.invocations, r.completed, r.failed, r.from_ingress)
        for r in ServiceMapHour.objects.all()
    }


PAIR = ("pair__caller_service", "pair__caller_handler", "pair__callee_service", "pair__callee_handler", "pair__kind")


def rolled_edges() -> dict[tuple[Any, ...], int]:
    rows = list(ServiceMapEdgeHour.objects.values_list("hour", *PAIR, "count"))
    assert len(rows) == ServiceMapEdgeHour.objects.count(), "every row's pair exists"
    return {tuple(r[:-1]): r[-1] for r in rows}


def assert_rollups_match() -> None:
    assert rolled_nodes() == direct_nodes()
    assert rolled_edges() == direct_edges()


# ------------------------------------------------------------------ random syncs across hours


class World:
    """Restate's state (the fake), changed at random: new invocations created over the last
    hours, completions (some failed) of old and new ones, calls and sends appended to journals."""

    def __init__(self, restate: FakeRestate, rng: random.Random) -> None:
        self.restate, self.rng = restate, rng
        self.now = T0
        self.n = 0

    def tick(self) -> None:
        self.now += timedelta(seconds=30)

    def any_hour(self) -> datetime:
        return self.now - timedelta(minutes=self.rng.uniform(0, 48 * 60))

    def new(self) -> str:
        self.n += 1
        rows = self.restate.invocations
        parent = self.rng.choice(list(rows)) if rows and self.rng.random() < 0.5 else None
        inv_id = self.restate.add(self.n, status="running", modified_at=self.now)
        service, handler, ty = self.rng.choice(HANDLERS)
        row = rows[inv_id]
        row.update(
            target=f"{service}/{handler}",
            target_service_name=service,
            target_handler_name=handler,
            target_service_ty=ty,
            created_at=self.any_hour(),
            invoked_by=self.rng.choice(["service", "subscription"]) if parent else "ingress",
        )
        if parent:
            row["invoked_by_id"] = parent
        return inv_id

    def complete(self, inv_id: str) -> None:
        row = self.restate.invocations[inv_id]
        row.update(
            status="completed",
            completion_result="failure" if self.rng.random() < 0.3 else "success",
            completed_at=self.now,
            modified_at=self.now,
        )

    def call(self, inv_id: str) -> None:
        """A call or (delayed) send appended to the journal, at some hour of the last 48."""
        journal = self.restate.journals[inv_id]
        service, handler, _ = self.rng.choice(HANDLERS)
        kind = self.rng.choice(["Call", "OneWayCall", "delayed"])
        body: dict[str, Any] = {"invocation_target": {"Service": {"name": service, "handler": handler}}}
        if kind == "delayed":
            body["invoke_time"] = int((self.now + timedelta(hours=1)).timestamp() * 1000)
        entry_type = "Command: Call" if kind == "Call" else "Command: OneWayCall"
        journal.append(
            {
                "id": inv_id,
                "index": len(journal),
                "entry_type": entry_type,
                "appended_at": self.any_hour(),
                "entry_json": "{}",
                "entry_lite_json": json.dumps({"Command": {entry_type.split(": ")[1]: body}}),
            }
        )
        row = self.restate.invocations[inv_id]
        row.update(journal_size=len(journal), modified_at=self.now)

    def change_at_random(self) -> None:
        self.tick()
        for _ in range(self.rng.randint(5, 25)):
            self.new()
        running = [i for i, r in self.restate.invocations.items() if r["status"] == "running"]
        for inv_id in self.rng.sample(running, k=min(len(running), self.rng.randint(0, 15))):
            self.complete(inv_id)
        for inv_id in self.rng.sample(running, k=min(len(running), self.rng.randint(0, 10))):
            if self.restate.invocations[inv_id]["status"] == "running":
                self.call(inv_id)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rollups_equal_a_direct_aggregate_after_random_syncs_across_hours(transactional_db: None, seed: int) -> None:
    rng = random.Random(seed)
    restate = FakeRestate()
    engine = SyncEngine(restate, reconcile_every=timedelta(days=1), slow_every=timedelta(0))  # type: ignore[arg-type]
    SyncState.objects.update_or_create(id=1, defaults={"last_reconcile_at": T0 + timedelta(days=3650)})
    world = World(restate, rng)
    refreshes = 0
    for round_no in range(12):
        world.change_at_random()
        engine.sync_once()
        # Every hour the step wrote is marked; some steps pass before the next refresh.
        if rng.random() < 0.6 or round_no == 11:
            report = rollups.refresh_dirty()
            refreshes += 1
            assert report.pending == 0 and not RollupDirtyHour.objects.exists()
            assert_rollups_match()
    assert Invocation.objects.count() > 100 and InvocationEdge.objects.count() > 20
    assert len({h for h, *_ in rolled_nodes()}) >= 24, "rows spread over the hours"
    assert RollupState.objects.get().generation >= refreshes
    # A rebuild from scratch agrees with what the increments built.
    before = (rolled_nodes(), rolled_edges())
    rollups.rebuild()
    assert (rolled_nodes(), rolled_edges()) == before


def test_a_step_marks_the_hours_it_changed_including_old_ones(transactional_db: None) -> None:
    restate = FakeRestate()
    engine = SyncEngine(restate, reconcile_every=timedelta(days=1), slow_every=timedelta(0))  # type: ignore[arg-type]
    SyncState.objects.update_or_create(id=1, defaults={"last_reconcile_at": T0 + timedelta(days=3650)})
    old = restate.add(1, status="running", modified_at=T0)
    restate.invocations[old]["created_at"] = T0 - timedelta(hours=5, minutes=30)
    engine.sync_once()
    assert set(RollupDirtyHour.objects.values_list("hour", flat=True)) == {T0 - timedelta(hours=6)}
    rollups.refresh_dirty()
    assert not RollupDirtyHour.objects.exists()

    # Completing five hours later dirties the hour it was created in, not the hour it completed in.
    restate.invocations[old].update(status="completed", completed_at=T0 + timedelta(seconds=10))
    restate.invocations[old]["modified_at"] = T0 + timedelta(seconds=10)
    engine.sync_once()
    assert set(RollupDirtyHour.objects.values_list("hour", flat=True)) == {T0 - timedelta(hours=6)}
    # A step that changed nothing marks nothing.
    rollups.refresh_dirty()
    engine.sync_once()
    assert not RollupDirtyHour.objects.exists()
    assert_rollups_match()


def test_a_change_committed_during_a_refresh_keeps_its_hour_dirty(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    a = build_invocation(created_at=T0)
    Invocation.objects.bulk_create([a])
    rollups.mark_dirty([a.created_at])
    original = rollups._recompute

    def recompute_while_the_sync_writes(cursor: Any, hours: list[datetime]) -> None:
        original(cursor, hours)
        # The sync commits a row of the same hour after the recount read the rows.
        Invocation.objects.bulk_create([build_invocation(created_at=T0 + timedelta(minutes=1))])
        rollups.mark_dirty([T0 + timedelta(minutes=1)])

    monkeypatch.setattr(rollups, "_recompute", recompute_while_the_sync_writes)
    rollups.refresh_dirty()
    assert list(RollupDirtyHour.objects.values_list("hour", "version")) == [(T0, 2)], "still dirty"
    monkeypatch.setattr(rollups, "_recompute", original)
    rollups.refresh_dirty()
    assert not RollupDirtyHour.objects.exists()
    assert ServiceMapHour.objects.get().invocations == 2


def test_hours_are_utc_hours_and_a_refresh_rewrites_only_dirty_ones(db: None) -> None:
    assert rollups.hour_of(datetime(2026, 11, 22, 17, 59, 59, tzinfo=UTC)) == datetime(2026, 11, 22, 17, tzinfo=UTC)
    half_hour_zone = timezone.get_fixed_timezone(330)  # UTC+5:30: its hours are not UTC hours
    assert rollups.hour_of(datetime(2026, 11, 22, 23, 10, tzinfo=half_hour_zone)) == datetime(
        2026, 11, 22, 17, tzinfo=UTC
    )
    Invocation.objects.bulk_create(
        [build_invocation(created_at=T0), build_invocation(created_at=T0 + timedelta(hours=1))]
    )
    rollups.rebuild()
    ServiceMapHour.objects.filter(hour=T0).update(invocations=99)  # not dirty: left alone
    rollups.mark_dirty([T0 + timedelta(hours=1, minutes=3)])
    report = rollups.refresh_dirty()
    assert report.hours == 1
    assert dict(ServiceMapHour.objects.values_list("hour", "invocations")) == {T0: 99, T0 + timedelta(hours=1): 1}
    rollups.rebuild()
    assert_rollups_match()


def test_pairs_are_added_once_and_recounting_draws_no_new_ids(db: None) -> None:
    caller = build_invocation(created_at=T0)
    Invocation.objects.bulk_create([caller])
    InvocationEdge.objects.bulk_create([build_edge(caller, None), build_edge(caller, None, kind="send")])
    rollups.mark_dirty([T0])
    rollups.refresh_dirty()
    ids = set(ServiceMapPair.objects.values_list("id", flat=True))
    assert len(ids) == 2
    for _ in range(3):
        rollups.mark_dirty([T0])
        rollups.refresh_dirty()
    rollups.rebuild()
    assert set(ServiceMapPair.objects.values_list("id", flat=True)) == ids
    with connection.cursor() as cursor:  # no sequence value drawn for pairs that exist
        cursor.execute(
            f"SELECT last_value FROM pg_sequences WHERE sequencename LIKE '{ServiceMapPair._meta.db_table}%%'"
        )
        assert cursor.fetchone()[0] == max(ids)
    assert_rollups_match()


def test_an_edge_whose_caller_we_never_held_is_left_out(db: None) -> None:
    caller = build_invocation(created_at=T0)
    orphan = build_edge(caller, None)
    orphan.caller_service = orphan.caller_handler = ""
    Invocation.objects.bulk_create([caller])
    InvocationEdge.objects.bulk_create([build_edge(caller, None), orphan])
    rollups.rebuild()
    assert list(ServiceMapEdgeHour.objects.values_list("pair__caller_service", "count")) == [("Greeter", 1)]


# ------------------------------------------------------------------ the worker


def test_the_worker_step_refreshes_and_backs_off_while_postgresql_is_down(
    db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = refresh_rollups.Command()
    Invocation.objects.bulk_create([build_invocation(created_at=T0)])
    rollups.mark_dirty([T0])
    report = command.step()
    assert report is not None and report.hours == 1 and not RollupDirtyHour.objects.exists()
    assert command.interval == refresh_rollups.MIN_INTERVAL_S
    assert ServiceMapHour.objects.get().invocations == 1

    def down(**kwargs: Any) -> rollups.RefreshReport:
        raise OperationalError("the server closed the connection")

    monkeypatch.setattr(rollups, "refresh_dirty", down)
    monkeypatch.setattr(connection, "close", lambda: None)  # the test's transaction stays open
    intervals = []
    for _ in range(6):
        assert command.step() is None
        intervals.append(command.interval)
    assert command.failures == 6
    assert all(refresh_rollups.MIN_INTERVAL_S <= i <= refresh_rollups.MAX_INTERVAL_S for i in intervals)
    monkeypatch.undo()
    assert command.step() is not None and command.failures == 0


@pytest.mark.integration
def test_a_real_sync_step_marks_its_hours_and_the_worker_counts_them(
    engine: SyncEngine, restate: RestateClient
) -> None:
    from demo import traffic
    from tests.conftest import sync_until, wait_completed

    (root,) = traffic.fire_call_service(restate)
    wait_completed(restate, root)
    sync_until(
        engine,
        lambda: (
            InvocationEdge.objects.filter(caller_id=root).exists()
            and not Invocation.objects.filter(root_id=root, completed_at=None).exists()
        ),
        what="the call tree synced, completed, with its edges",
    )
    hours = set(RollupDirtyHour.objects.values_list("hour", flat=True))
    assert rollups.hour_of(Invocation.objects.get(id=root).created_at) in hours
    report = refresh_rollups.Command().step()
    assert report is not None and report.hours >= 1
    assert not RollupDirtyHour.objects.exists()
    assert_rollups_match()
    callers = set(ServiceMapEdgeHour.objects.values_list("pair__caller_service", "pair__caller_handler"))
    assert ("Orchestrator", "call_all") in callers
    # A step with nothing new marks nothing.
    engine.sync_once()
    assert not RollupDirtyHour.objects.filter(hour__lt=rollups.hour_of(timezone.now())).exists()


# ------------------------------------------------------------------ first loads


def test_generate_invocations_fills_callers_and_rebuilds_the_rollups(transactional_db: None) -> None:
    call_command("generate_invocations", count=3000, big_tree=500, seed=3, verbosity=0)
    assert_rollups_match()
    assert sum(ServiceMapHour.objects.values_list("invocations", flat=True)) == 3000
    assert RollupState.objects.get().rebuilt_at is not None
    call_command("generate_invocations", delete=True, verbosity=0)
    assert not ServiceMapHour.objects.exists() and not ServiceMapEdgeHour.objects.exists()


@pytest.fixture
def migrated_back_to_latest(transactional_db: None) -> Iterator[None]:
    """Whatever a migration test leaves applied, the next tests find every migration applied."""
    yield
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


def test_the_migration_gives_edges_their_callers_handler_and_marks_every_hour(migrated_back_to_latest: None) -> None:
    before, after = (
        [("invocations", "0006_sync_reconcile_backlog_failures")],
        [("invocations", "0007_service_map_rollups")],
    )
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    old_invocation, old_edge = (
        old.get_model("invocations", "Invocation"),
        old.get_model("invocations", "InvocationEdge"),
    )
    fields = {"status": "completed", "invoked_by": "ingress", "service_type": "service"}
    times = {"modified_at": T0, "first_seen_at": T0, "synced_at": T0}
    old_invocation.objects.create(
        id=fake_id(1), target="Cart/add", service_name="Cart", handler_name="add", created_at=T0, **fields, **times
    )
    old_invocation.objects.create(
        id=fake_id(2), target="Greeter/greet", service_name="Greeter", handler_name="greet",
        created_at=T0 + timedelta(hours=2), **fields, **times,
    )  # fmt: skip
    edge = {"kind": "call", "target_service": "Greeter", "target_handler": "greet"}
    old_edge.objects.create(caller_id=fake_id(1), journal_index=1, created_at=T0 + timedelta(hours=3), **edge)
    old_edge.objects.create(caller_id=fake_id(99), journal_index=1, created_at=T0, **edge)  # a caller never held

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(after)
    callers = dict(InvocationEdge.objects.values_list("caller_id", "caller_service").order_by("caller_id"))
    assert callers == {fake_id(1): "Cart", fake_id(99): ""}
    assert InvocationEdge.objects.get(caller_id=fake_id(1)).caller_handler == "add"
    marked = set(RollupDirtyHour.objects.values_list("hour", flat=True))
    assert marked == {T0, T0 + timedelta(hours=2), T0 + timedelta(hours=3)}
    rollups.refresh_dirty()
    by_hour: dict[datetime, int] = defaultdict(int)
    for hour, n in ServiceMapHour.objects.values_list("hour", "invocations"):
        by_hour[hour] += n
    assert by_hour == {T0: 1, T0 + timedelta(hours=2): 1}
    assert list(ServiceMapEdgeHour.objects.values_list("pair__caller_handler", "pair__callee_handler", "count")) == [
        ("add", "greet", 1)
    ]
