"""The sync engine against a real restate-server running the demo services.

Each test fires a pattern from the reference pages, runs `sync_once()` until our
copy settles, and checks it against what Restate's own SQL says.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from demo import traffic
from invocations.mirror.sync.engine import SyncEngine
from invocations.models import (
    EdgeKind,
    Invocation,
    InvocationEdge,
    JournalEntry,
    ObjectLock,
    QueuedInvocation,
    SyncState,
)
from invocations.restate import RestateClient, RestateUnavailable, sql_list, sql_literal
from tests.conftest import sync_until, wait_completed, wait_for_restate

pytestmark = pytest.mark.integration

COMPARED = "id, status, invoked_by_id, target, retry_count, journal_size, modified_at, scheduled_at, scheduled_start_at"


def tree_ids(restate: RestateClient, root_id: str) -> list[str]:
    rows = restate.query(
        "WITH RECURSIVE t(id) AS (SELECT id FROM sys_invocation WHERE id = "
        f"{sql_literal(root_id)} UNION ALL SELECT c.id FROM sys_invocation c JOIN t ON c.invoked_by_id = t.id) "
        "SELECT id FROM t"
    )
    return [r["id"] for r in rows]


def mirror_differences(restate: RestateClient, ids: list[str]) -> list[str]:
    """What our copy says differently from Restate's SQL, for these ids (empty = equal)."""
    theirs = {r["id"]: r for r in restate.query(f"SELECT {COMPARED} FROM sys_invocation WHERE id IN {sql_list(ids)}")}
    ours = Invocation.objects.in_bulk(ids)
    diffs = []
    for inv_id in ids:
        row, inv = theirs.get(inv_id), ours.get(inv_id)
        if row is None or inv is None:
            diffs.append(f"{inv_id}: restate={row is not None} ours={inv is not None}")
            continue
        pairs = {
            "status": (row["status"], inv.status),
            "parent": (row.get("invoked_by_id"), inv.parent_id),
            "target": (row["target"], inv.target),
            "retry_count": (row.get("retry_count", 0), inv.retry_count),
            "journal_size": (row.get("journal_size", 0), inv.journal_size),
        }
        diffs += [f"{inv_id} {k}: restate={a!r} ours={b!r}" for k, (a, b) in pairs.items() if a != b]
    return diffs


def settle(engine: SyncEngine, restate: RestateClient, ids: list[str], *, timeout: float = 60) -> None:
    sync_until(engine, lambda: not mirror_differences(restate, ids), timeout=timeout, what=f"mirror of {ids}")


# ------------------------------------------------------------------ call, send, delayed send


def test_request_response_calls_to_service_object_and_workflow(engine: SyncEngine, restate: RestateClient) -> None:
    root = traffic.fire_call_service(restate)[0]
    wait_completed(restate, root)
    ids = tree_ids(restate, root)
    assert len(ids) >= 4, "a Service, a Virtual Object and a Workflow were called"
    settle(engine, restate, ids)

    edges = InvocationEdge.objects.filter(caller_id=root).order_by("journal_index")
    assert {e.kind for e in edges} == {EdgeKind.CALL}
    assert {e.callee_id for e in edges} == set(ids) - {root}
    targets = {e.target_service for e in edges}
    assert {"Greeter", "Counter", "Signup"} <= targets
    # Every node knows its root; the root is its own.
    assert set(Invocation.objects.filter(id__in=ids).values_list("root_id", flat=True)) == {root}
    assert JournalEntry.objects.filter(invocation_id=root, entry_type="Command: Input").exists()


def test_one_way_and_delayed_sends(engine: SyncEngine, restate: RestateClient) -> None:
    root = traffic.fire_delayed_sends(restate)[0]
    rows = wait_for_restate(
        restate,
        f"SELECT id, status, scheduled_at, scheduled_start_at FROM sys_invocation WHERE invoked_by_id = {sql_literal(root)}",
        lambda r: len(r) >= 3,
    )
    ids = [root, *(r["id"] for r in rows)]
    settle(engine, restate, ids)

    edges = list(InvocationEdge.objects.filter(caller_id=root))
    delayed = [e for e in edges if e.kind == EdgeKind.DELAYED_SEND]
    assert delayed, "delayed sends are recorded as such"
    now = datetime.now(UTC)
    for edge in delayed:
        child = Invocation.objects.get(id=edge.callee_id)
        assert child.status == "scheduled", "a delayed child waits in 'scheduled' until its fire time"
        # Restate says journal_size 0 for it, yet holds its Input: we mirror what it will carry.
        assert JournalEntry.objects.filter(invocation_id=child.id, entry_type="Command: Input").exists()
        assert edge.fire_at is not None and edge.fire_at > now + timedelta(minutes=1)
        # Restate's own fire time agrees with the journal's invoke_time.
        assert child.scheduled_start_at is not None
        assert abs((child.scheduled_start_at - edge.fire_at).total_seconds()) < 1
    spans = sorted((e.fire_at - now) for e in delayed)
    assert spans[-1] > timedelta(days=1), "minutes, hours and days away"


def test_sends_do_not_make_the_parent_wait(engine: SyncEngine, restate: RestateClient) -> None:
    root = traffic.fire_sends(restate)[0]
    wait_completed(restate, root)
    children = wait_for_restate(
        restate, f"SELECT id FROM sys_invocation WHERE invoked_by_id = {sql_literal(root)}", lambda r: len(r) >= 2
    )
    settle(engine, restate, [root, *(r["id"] for r in children)])
    kinds = set(InvocationEdge.objects.filter(caller_id=root).values_list("kind", flat=True))
    assert EdgeKind.SEND in kinds
    assert EdgeKind.CALL not in kinds


# ------------------------------------------------------------------ queues, locks, deadlocks


def test_queue_order_and_lock_holder_match_restate(engine: SyncEngine, restate: RestateClient) -> None:
    key = traffic.new_key("q")
    traffic.fire_queue(restate, key=key, n=4)
    inbox_sql = (
        f"SELECT id, sequence_number FROM sys_inbox WHERE service_key = {sql_literal(key)} ORDER BY sequence_number"
    )
    wait_for_restate(restate, inbox_sql, lambda r: len(r) >= 2)

    def ours_matches() -> bool:
        theirs = [r["id"] for r in restate.query(inbox_sql)]
        ours = list(
            QueuedInvocation.objects.filter(service_key=key)
            .order_by("sequence_number")
            .values_list("invocation_id", flat=True)
        )
        holder = restate.query(
            f"SELECT invocation_id FROM sys_keyed_service_status WHERE service_key = {sql_literal(key)}"
        )
        our_holder = list(ObjectLock.objects.filter(service_key=key).values_list("invocation_id", flat=True))
        return bool(theirs) and ours == theirs and [h["invocation_id"] for h in holder] == our_holder

    sync_until(engine, ours_matches, timeout=20, what="queue and lock holder equal Restate's")
    holder = ObjectLock.objects.get(service_key=key)
    assert holder.invocation_id not in set(
        QueuedInvocation.objects.filter(service_key=key).values_list("invocation_id", flat=True)
    )


@pytest.mark.parametrize("pattern", ["cross", "cycle"])
def test_deadlocks_leave_each_key_locked_and_a_caller_queued(
    engine: SyncEngine, restate: RestateClient, pattern: str
) -> None:
    fire = traffic.fire_cross_deadlock if pattern == "cross" else traffic.fire_cycle_deadlock
    key = traffic.new_key(f"dl-{pattern}")
    (root,) = fire(restate, key=key)
    try:
        expected_locks = 2 if pattern == "cross" else 3
        wait_for_restate(
            restate,
            f"SELECT invocation_id FROM sys_keyed_service_status WHERE service_key = {sql_literal(key)}",
            lambda r: len(r) == expected_locks,
        )
        wait_for_restate(
            restate, f"SELECT id FROM sys_inbox WHERE service_key = {sql_literal(key)}", lambda r: len(r) >= 1
        )
        sync_until(
            engine,
            lambda: (
                ObjectLock.objects.filter(service_key=key).count() == expected_locks
                and QueuedInvocation.objects.filter(service_key=key).exists()
            ),
            timeout=20,
            what="deadlock locks and queue mirrored",
        )
        # The queued callee's caller holds a lock: the wait-for chain our analysis will draw.
        queued = QueuedInvocation.objects.filter(service_key=key).first()
        callee = Invocation.objects.get(id=queued.invocation_id)
        assert ObjectLock.objects.filter(invocation_id=callee.parent_id).exists()
    finally:
        restate.kill(root)  # other tests (and /deadlocks/ in a browser test) share this Restate


# ------------------------------------------------------------------ retries, idempotency, saga


def test_retries_are_seen_although_modified_at_does_not_move(engine: SyncEngine, restate: RestateClient) -> None:
    inv_id = traffic.fire_failing(restate)[0]
    sql = f"SELECT retry_count FROM sys_invocation WHERE id = {sql_literal(inv_id)}"
    wait_for_restate(restate, sql, lambda r: r and r[0].get("retry_count", 0) >= 1)
    engine.sync_once()
    first = Invocation.objects.get(id=inv_id).retry_count
    wait_for_restate(restate, sql, lambda r: r[0].get("retry_count", 0) > first)
    sync_until(
        engine, lambda: Invocation.objects.get(id=inv_id).retry_count > first, timeout=30, what="retry_count to grow"
    )
    inv = Invocation.objects.get(id=inv_id)
    assert inv.last_failure and inv.last_failure_error_code is not None
    restate.kill(inv_id)


def test_idempotency_key_resolves_to_the_same_invocation(engine: SyncEngine, restate: RestateClient) -> None:
    key = traffic.new_key("idem")
    ids = traffic.fire_idempotent(restate, key=key)
    assert len(ids) == 1, "two ingress sends with one key are one invocation"
    root = ids[0]
    wait_completed(restate, root)
    settle(engine, restate, tree_ids(restate, root))
    assert Invocation.objects.get(id=root).idempotency_key == f"order-{key}"
    # Two in-handler calls with one idempotency key: one child, reached by both call entries.
    edges = InvocationEdge.objects.filter(caller_id=root, kind=EdgeKind.CALL)
    assert len({e.callee_id for e in edges}) == 1
    child = Invocation.objects.get(id=edges[0].callee_id)
    assert child.idempotency_key == f"greet-{key}"
    assert Invocation.objects.filter(idempotency_key=f"greet-{key}").count() == 1


def test_cancelled_saga_shows_compensations(engine: SyncEngine, restate: RestateClient) -> None:
    saga = traffic.fire_saga(restate)[0]
    children_sql = f"SELECT id, target FROM sys_invocation WHERE invoked_by_id = {sql_literal(saga)}"
    # Seat and room reserved, then the long nap: three children before the cancel.
    before = wait_for_restate(restate, children_sql, lambda r: len(r) >= 3)
    wait_for_restate(
        restate,
        f"SELECT status FROM sys_invocation WHERE id = {sql_literal(saga)}",
        lambda r: r[0]["status"] in ("suspended", "running"),
    )
    assert restate.cancel(saga).ok
    wait_completed(restate, saga)
    after = restate.query(children_sql)
    assert len(after) > len(before), "compensations ran as new children"
    settle(engine, restate, [saga, *(r["id"] for r in after)])
    inv = Invocation.objects.get(id=saga)
    assert inv.completion_result == "failure" and "cancel" in (inv.completion_failure or "").lower()
    assert InvocationEdge.objects.filter(caller_id=saga).count() == len(after)


def test_cross_language_tree(engine: SyncEngine, restate: RestateClient) -> None:
    root = traffic.fire_cross_language(restate)[0]
    wait_completed(restate, root)
    ids = tree_ids(restate, root)
    settle(engine, restate, ids)
    services = set(Invocation.objects.filter(root_id=root).values_list("service_name", flat=True))
    assert "Shipping" in services, "the TypeScript service is part of the tree"
    assert len(ids) >= 3


# ------------------------------------------------------------------ outages and deletions


class StopsRestateMidStep(RestateClient):
    """A real client whose snapshot query first stops the real server: the step
    fails after invocation pages were committed but before the watermark moved."""

    def __init__(self, stack: object, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.stack = stack
        self.armed = True

    def query(self, sql: str) -> list[dict]:
        if self.armed and "sys_inbox" in sql:
            self.armed = False
            self.stack.stop_restate()
        return super().query(sql)


def test_restate_outage_mid_sync_loses_and_duplicates_nothing(
    demo_stack: object, restate: RestateClient, transactional_db: None
) -> None:
    client = StopsRestateMidStep(demo_stack, demo_stack.admin_url, demo_stack.ingress_url, timeout=10)
    engine = SyncEngine(client, reconcile_every=timedelta(days=1), slow_every=timedelta(0))
    before = [traffic.fire_call_service(restate)[0] for _ in range(3)]
    try:
        with pytest.raises(RestateUnavailable):
            engine.sync_once()
        engine.record_failure(RestateUnavailable("restate stopped by the test"))
        state = SyncState.load()
        assert state.consecutive_failures == 1 and "stopped by the test" in state.last_error
        assert state.watermark is None, "a failed step does not move the watermark"
        with pytest.raises(RestateUnavailable):
            engine.sync_once()
    finally:
        demo_stack.start_restate()
    after = [traffic.fire_call_service(restate)[0] for _ in range(3)]
    all_ids: list[str] = []
    for root in before + after:
        wait_completed(restate, root)
        all_ids += tree_ids(restate, root)
    settle(engine, restate, all_ids)
    assert SyncState.load().consecutive_failures == 0
    # Nothing duplicated: one row per Restate invocation, one edge per call entry.
    total = restate.query("SELECT COUNT(*) AS n FROM sys_invocation")[0]["n"]
    assert Invocation.objects.filter(gone_from_restate_at__isnull=True).count() == total
    call_entries = restate.query(
        f"SELECT COUNT(*) AS n FROM sys_journal WHERE id IN {sql_list(all_ids)} AND entry_type IN ('Command: Call', 'Command: OneWayCall')"
    )[0]["n"]
    assert InvocationEdge.objects.filter(caller_id__in=all_ids).count() == call_entries


def test_purged_invocation_is_kept_and_marked_gone(engine: SyncEngine, restate: RestateClient) -> None:
    inv_id = traffic.fire_greet(restate)[0]
    wait_completed(restate, inv_id)
    settle(engine, restate, [inv_id])
    assert engine.reconcile().gone == 0
    assert restate.purge(inv_id).ok
    wait_for_restate(restate, f"SELECT id FROM sys_invocation WHERE id = {sql_literal(inv_id)}", lambda r: not r)
    # A delta never sees a purge: only reconciliation does.
    engine.sync_once()
    assert Invocation.objects.get(id=inv_id).gone_from_restate_at is None
    assert engine.reconcile().gone == 1
    inv = Invocation.objects.get(id=inv_id)
    assert inv.gone_from_restate_at is not None
    assert inv.status == "completed" and JournalEntry.objects.filter(invocation_id=inv_id).exists(), "history is kept"
