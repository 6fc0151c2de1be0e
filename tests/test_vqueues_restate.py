"""Object queues and locks when Restate runs with vqueues (`GET /version` feature
`vqueues`; restate-server 1.7.12 started with RESTATE_EXPERIMENTAL_ENABLE_VQUEUES=true):
sys_inbox and sys_keyed_service_status stay empty, and the sync reads sys_vqueues,
sys_vqueue_meta and sys_locks instead. Against a real server of its own, with the demo's
Python services; the mapping's pure parts are tested on literal rows."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client

from invocations.analysis.deadlocks import deadlocks_refresh
from invocations.mirror.models import Invocation, ObjectLock, QueuedInvocation, SyncState
from invocations.mirror.sync import mapping
from invocations.mirror.sync.engine import SyncEngine
from invocations.reads.selectors.waits import deadlocks_current
from invocations.restate import RestateClient, RestateError, sql_literal
from tests.conftest import sync_until, wait_for_restate


def deadlocks_get() -> list[tuple[set[str], set[tuple[str, str]]]]:
    """The stored current cycles (members, keys) after a detection pass, as the sync loop runs it."""
    deadlocks_refresh()
    return [({m.invocation_id for m in d.members.all()}, {tuple(k) for k in d.keys}) for d in deadlocks_current()]


VQUEUES_ENV = {"RESTATE_EXPERIMENTAL_ENABLE_VQUEUES": "true"}
UNCOVERED = "Restate uses vqueues: queues and locks of scoped objects are not shown"


# ---------------------------------------------------------------- the mapping, on literal rows


@pytest.mark.parametrize(
    ("lock_name", "service", "expected"),
    [
        ("Worker/plain", None, ("Worker", "plain")),
        ("Worker/a/b'c/", None, ("Worker", "a/b'c/")),  # a key may hold '/': the service ends at the first
        ("Worker/a/b", "Worker", ("Worker", "a/b")),
        ("Worker//", "Worker", ("Worker", "/")),
    ],
)
def test_a_lock_name_splits_into_service_and_key(
    lock_name: str, service: str | None, expected: tuple[str, str]
) -> None:
    assert mapping.split_lock_name(lock_name, service) == expected


def test_a_lock_name_without_a_key_is_refused() -> None:
    with pytest.raises(ValueError, match="without a key"):
        mapping.split_lock_name("Worker")


def test_queued_entries_take_their_place_in_the_schedulers_order() -> None:
    def row(entry: str, lock: str, run_at: str, seq: int) -> dict[str, Any]:
        return {
            "entry_id": entry,
            "service_name": "Worker",
            "lock_name": lock,
            "run_at": run_at,
            "sequence_number": seq,
            "created_at": "2026-11-22T23:34:45.603Z",
        }

    rows = [
        # A delayed send keeps its earlier sequence number; once due it waits behind later calls.
        row("inv_delayed", "Worker/k/1", "2026-11-22T23:35:01Z", 8),
        row("inv_later", "Worker/k/1", "2026-11-22T23:34:47Z", 10),
        row("inv_first", "Worker/k/1", "2026-11-22T23:34:47Z", 9),
        row("inv_other", "Worker/k", "2026-11-22T23:40:00Z", 3),
        row("inv_first", "Worker/k/1", "2026-11-22T23:34:47Z", 9),  # read twice across partitions
    ]
    queued = mapping.queued_from_vqueue_rows(rows)
    assert [(q.service_key, q.sequence_number, q.invocation_id) for q in queued] == [
        ("k", 1, "inv_other"),
        ("k/1", 1, "inv_first"),
        ("k/1", 2, "inv_later"),
        ("k/1", 3, "inv_delayed"),
    ]
    assert {q.service_name for q in queued} == {"Worker"}


def test_a_lock_row_names_its_holder() -> None:
    lock = mapping.lock_from_vqueues_row({"lock_name": "Alpha/x/y", "acquired_by": "inv_1holder"})
    assert (lock.service_name, lock.service_key, lock.invocation_id) == ("Alpha", "x/y", "inv_1holder")


class _VersionOnly:
    def __init__(self, features: dict[str, bool]) -> None:
        self.features = features

    def version(self) -> dict[str, Any]:
        return {"version": "1.7.12", "features": self.features}


@pytest.mark.django_db
def test_the_queue_tables_follow_the_feature_both_ways() -> None:
    stub = _VersionOnly({"vqueues": True})
    engine = SyncEngine(stub)  # type: ignore[arg-type] - only version() is asked
    engine._check_features(SyncState.load())
    state = SyncState.load()
    assert (state.queue_tables, state.queues_supported) == ("vqueues", True)
    stub.features = {"vqueues": False}
    engine._check_features(state)
    state = SyncState.load()
    assert (state.queue_tables, state.queues_supported) == ("classic", True)


# ---------------------------------------------------------------- against restate-server with vqueues

integration = pytest.mark.integration


@pytest.fixture(scope="module")
def vqueues_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from demo.stack import DemoStack

    # Its own server, ports and data: the session's demo_stack runs the classic tables.
    stack = DemoStack.start(tmp_path_factory.mktemp("restate-vqueues"), with_ts=False, restate_env=VQUEUES_ENV)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def vq_restate(vqueues_stack: Any) -> Iterator[RestateClient]:
    with RestateClient(vqueues_stack.admin_url, vqueues_stack.ingress_url, timeout=30) as client:
        yield client


@pytest.fixture
def vq_engine(vq_restate: RestateClient, transactional_db: None) -> SyncEngine:
    return SyncEngine(vq_restate, reconcile_every=timedelta(days=1), slow_every=timedelta(0))


@pytest.fixture
def started(vq_restate: RestateClient) -> Iterator[list[str]]:
    """Invocations a test started; killed afterwards (a kill frees their keys)."""
    ids: list[str] = []
    yield ids
    for inv_id in reversed(ids):
        with contextlib.suppress(RestateError):
            vq_restate.kill(inv_id)


def _key_entries(restate: RestateClient, service: str, key: str) -> list[dict[str, Any]]:
    """Restate's own view of a key's vqueue entries waiting in the inbox."""
    lock = sql_literal(f"{service}/{key}")
    return restate.query(
        "SELECT v.entry_id, v.sequence_number, v.run_at, v.run_at <= now() AS due FROM sys_vqueues v "
        "JOIN sys_vqueue_meta m ON m.partition_key = v.partition_key AND m.id = v.id "
        f"WHERE m.lock_name = {lock} AND v.stage = 'inbox' AND v.has_lock = false"
    )


def _lock_holder(restate: RestateClient, service: str, key: str) -> str | None:
    rows = restate.query(f"SELECT acquired_by FROM sys_locks WHERE lock_name = {sql_literal(f'{service}/{key}')}")
    return rows[0]["acquired_by"] if rows else None


def _queue(service: str, key: str) -> list[str]:
    return list(
        QueuedInvocation.objects.filter(service_name=service, service_key=key)
        .order_by("sequence_number")
        .values_list("invocation_id", flat=True)
    )


def _holder(service: str, key: str) -> str | None:
    lock = ObjectLock.objects.filter(service_name=service, service_key=key).first()
    return lock.invocation_id if lock else None


@integration
def test_the_mode_is_detected_recorded_and_said(
    vq_restate: RestateClient, vq_engine: SyncEngine, client: Client
) -> None:
    assert vq_restate.version()["features"]["vqueues"] is True
    vq_engine.sync_once()
    state = SyncState.load()
    assert (state.queue_tables, state.queues_supported) == ("vqueues", True)
    assert state.restate_version == vq_restate.version()["version"]
    body = client.get("/invocations/").content.decode()
    assert UNCOVERED in body and "object queues are not shown" not in body


@integration
def test_calls_queued_on_a_key_are_mirrored_in_order_behind_the_holder(
    vq_restate: RestateClient, vq_engine: SyncEngine, started: list[str]
) -> None:
    key = f"q/{uuid.uuid4().hex[:8]}/it's"  # '/' and a quote: the key is taken whole
    holder = vq_restate.send("Worker", "work", key=key, payload=600)
    started.append(holder)
    wait_for_restate(
        vq_restate,
        f"SELECT acquired_by FROM sys_locks WHERE lock_name = {sql_literal(f'Worker/{key}')}",
        lambda rows: [r["acquired_by"] for r in rows] == [holder],
    )
    # Sent first but due only later: it keeps its earlier sequence number.
    delayed = vq_restate.send("Worker", "work", key=key, payload=1, delay=timedelta(seconds=20))
    delayed_sent = time.monotonic()
    started.append(delayed)
    first = vq_restate.send("Worker", "work", key=key, payload=1)
    started.append(first)
    second = vq_restate.send("Worker", "work", key=key, payload=1)
    started.append(second)

    sync_until(
        vq_engine,
        lambda: len(_queue("Worker", key)) >= 2,
        what="two calls in the key's queue in our copy",
    )
    assert time.monotonic() - delayed_sent < 18, "too slow to see the queue before the delayed send is due"
    assert _queue("Worker", key) == [first, second]  # not yet due: not in the queue
    assert _holder("Worker", key) == holder == _lock_holder(vq_restate, "Worker", key)
    assert {r["entry_id"] for r in _key_entries(vq_restate, "Worker", key)} == {delayed, first, second}
    assert not vq_restate.query("SELECT id FROM sys_inbox")  # the classic table stays empty

    sync_until(vq_engine, lambda: len(_queue("Worker", key)) == 3, timeout=40, what="the delayed send due in the queue")
    # Restate orders a queue by (run_at, sequence_number): the due delayed send waits behind
    # calls sent after it, although its sequence number is lower.
    seq = {r["entry_id"]: r["sequence_number"] for r in _key_entries(vq_restate, "Worker", key)}
    assert seq[delayed] < seq[first] < seq[second]
    assert _queue("Worker", key) == [first, second, delayed]
    head = vq_restate.query(
        "SELECT s.head_entry_id FROM sys_scheduler s JOIN sys_vqueue_meta m "
        "ON m.partition_key = s.partition_key AND m.id = s.id "
        f"WHERE m.lock_name = {sql_literal(f'Worker/{key}')}"
    )
    assert [r["head_entry_id"] for r in head] == [first]

    # Past the row cap the queue is a prefix, and the pages are told.
    SyncEngine(vq_restate, snapshot_rows=2, reconcile_every=timedelta(days=1)).sync_once()
    assert SyncState.load().queues_truncated and QueuedInvocation.objects.count() == 2
    vq_engine.sync_once()
    assert not SyncState.load().queues_truncated

    for inv_id in (holder, delayed, first, second):
        vq_restate.kill(inv_id)
    sync_until(
        vq_engine,
        lambda: not _queue("Worker", key) and _holder("Worker", key) is None,
        what="the killed queue and lock to leave our copy",
    )


@integration
def test_the_two_key_hop_deadlock_is_found_with_exactly_its_members(
    vq_restate: RestateClient, vq_engine: SyncEngine, started: list[str]
) -> None:
    key = f"dl/{uuid.uuid4().hex[:10]}"
    root = vq_restate.send("Alpha", "hop", key=key, payload=["Beta", "Alpha"])
    started.append(root)
    # Deadlocked when the call that comes back to Alpha/key waits in its queue.
    wait_for_restate(
        vq_restate,
        "SELECT v.entry_id FROM sys_vqueues v JOIN sys_vqueue_meta m "
        "ON m.partition_key = v.partition_key AND m.id = v.id "
        f"WHERE m.lock_name = {sql_literal(f'Alpha/{key}')} AND v.stage = 'inbox'",
        lambda rows: len(rows) == 1,
    )
    members = {
        row["id"]
        for row in vq_restate.query(f"SELECT id FROM sys_invocation WHERE target_service_key = {sql_literal(key)}")
    }
    assert len(members) == 3
    sync_until(
        vq_engine,
        lambda: (
            Invocation.objects.filter(id__in=members).count() == len(members)
            and any(found == members for found, _ in deadlocks_get())
        ),
        what=f"the deadlock on {key} in our copy",
    )
    ((found, keys),) = [d for d in deadlocks_get() if root in d[0]]
    assert found == members
    assert keys == {("Alpha", key), ("Beta", key)}
    assert _holder("Alpha", key) == root
    (waiting,) = _queue("Alpha", key)
    assert waiting in members - {root}

    vq_restate.kill(root)  # a kill reaches the whole call tree and frees the keys
    sync_until(
        vq_engine,
        lambda: (
            not any(root in found for found, _ in deadlocks_get())
            and not _queue("Alpha", key)
            and _holder("Alpha", key) is None
            and _holder("Beta", key) is None
        ),
        what="the killed deadlock to leave our copy",
    )
