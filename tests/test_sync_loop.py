"""The sync loop (what `manage.py sync_restate` runs): pacing, a capped and jittered
backoff that survives thousands of failures, the stored poll interval, and one
engine at a time through PostgreSQL's advisory lock. The wait is injected: no sleeping."""

from __future__ import annotations

import logging
import random
import time
from datetime import timedelta

import psycopg
import pytest
from django.conf import settings
from django.db import connection

from invocations.mirror.models import Invocation, SyncState
from invocations.mirror.sync.engine import SyncEngine
from invocations.mirror.sync.lock import EngineLock
from invocations.mirror.sync.loop import SyncLoop, backoff_interval
from tests.sync_fake import T0, FakeRestate


def make_loop(restate: FakeRestate, *, lock: EngineLock | None = None, seed: int = 1) -> SyncLoop:
    engine = SyncEngine(restate, reconcile_every=timedelta(days=1), slow_every=timedelta(0))  # type: ignore[arg-type]
    return SyncLoop(engine, lock=lock, rng=random.Random(seed))


def test_backoff_is_capped_jittered_and_cannot_overflow() -> None:
    rng = random.Random(7)
    cap = settings.SYNC_BACKOFF_CAP_S
    for failures in (0, 1, 5, 1023, 1024, 1025, 10**6, 10**18):
        interval = backoff_interval(failures=failures, rng=rng)
        assert settings.SYNC_MIN_INTERVAL_S <= interval <= cap
    late = {round(backoff_interval(failures=5000, rng=rng), 6) for _ in range(50)}
    assert len(late) > 40, "jittered: replicas do not retry in lockstep"


def test_the_loop_survives_thousands_of_failures(transactional_db: None) -> None:
    restate = FakeRestate(down=True)
    times = iter(T0 + timedelta(seconds=n) for n in range(10**6))
    loop = make_loop(restate)
    loop.engine.clock = lambda: next(times)
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return len(waits) >= 2000

    loop.run(wait=wait)

    assert len(waits) == 2000
    assert all(settings.SYNC_MIN_INTERVAL_S <= w <= settings.SYNC_BACKOFF_CAP_S for w in waits)
    assert max(waits) > settings.SYNC_BACKOFF_CAP_S / 2, "it does back off"
    assert waits[0] <= 2 * settings.SYNC_MIN_INTERVAL_S, "and starts small"
    state = SyncState.load()
    assert state.consecutive_failures == 2000
    # The clock ticks a second per call: the streak began at the first failure, not the latest.
    assert state.failing_since is not None and state.failing_since < T0 + timedelta(seconds=5)
    assert state.last_error_at is not None and state.last_error_at > T0 + timedelta(seconds=2000)
    assert "fake Restate is down" in state.last_error
    assert state.expected_interval_s == waits[-1], "pages know how long the loop waits now"

    # Restate comes back: one step and the streak is over.
    restate.down = False
    restate.add(1)
    report = loop.step()
    assert report is not None and report.changed == 1
    state = SyncState.load()
    assert (state.consecutive_failures, state.failing_since, state.last_error) == (0, None, "")
    assert loop.next_interval() == pytest.approx(max(settings.SYNC_MIN_INTERVAL_S, 4 * report.duration_s))
    assert state.expected_interval_s == loop.next_interval()


def test_the_loop_broadcasts_what_a_previous_engine_left_untold_before_its_first_step(
    transactional_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    restate = FakeRestate()
    restate.add(1)
    make_loop(restate).engine.sync_once()
    # A previous engine committed this row and died before broadcasting it.
    Invocation.objects.update(status="running", synced_at=T0 + timedelta(days=3650))
    calls: list[str] = []
    loop = make_loop(restate)
    original = loop.engine.broadcast_unsent
    monkeypatch.setattr(loop.engine, "broadcast_unsent", lambda: calls.append("catch-up") or original())
    loop.step()
    loop.step()
    assert calls == ["catch-up"], "once per engine start (and per lock takeover)"


# ------------------------------------------------------------------ one engine at a time


def test_a_second_engine_stands_by_and_takes_over_when_the_first_dies(
    transactional_db: None, caplog: pytest.LogCaptureFixture
) -> None:
    first_lock, second_lock = EngineLock(), EngineLock()
    restate = FakeRestate()
    restate.add(1)
    first, second = make_loop(restate, lock=first_lock), make_loop(restate, lock=second_lock)
    try:
        assert first.step() is not None
        with caplog.at_level(logging.INFO, logger="invocations.sync"):
            assert second.step() is None
            assert second.step() is None
        assert second.standing_by
        assert second.next_interval() == settings.SYNC_STANDBY_POLL_S
        assert [r.getMessage() for r in caplog.records].count("another sync engine holds the lock; standing by") == 1

        # The first engine's process dies: PostgreSQL ends its session, and the lock with it.
        assert first_lock._conn is not None
        pid = first_lock._conn.info.backend_pid
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
            assert cursor.fetchone()[0]
            # pg_terminate_backend only signals: the session (and its lock) ends a moment later.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
                if cursor.fetchone()[0] == 0:
                    break
                time.sleep(0.02)
        assert second.step() is not None, "the standby took over and synced"
        assert not second.standing_by

        # The first one, if it were still running, notices it lost the lock and stands by.
        assert first.step() is None and first.standing_by
    finally:
        first.close()
        second.close()


def test_connections_say_who_they_are(transactional_db: None) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SHOW application_name")
        assert cursor.fetchone()[0] == "restate-dashboard-web"
    lock = EngineLock()
    try:
        assert lock.try_acquire()
        assert lock._conn is not None
        name = lock._conn.execute("SHOW application_name").fetchone()
        assert name is not None and name[0] == "restate-dashboard-web-lock"
        assert lock.held()
    finally:
        lock.release()
    assert not lock.held()


def test_a_released_lock_is_free_for_the_next_engine(transactional_db: None) -> None:
    first, second = EngineLock(), EngineLock()
    try:
        assert first.try_acquire() and not second.try_acquire()
        first.release()
        assert second.try_acquire()
    finally:
        first.release()
        second.release()


def test_lock_failures_are_not_fatal(transactional_db: None) -> None:
    def refuse() -> psycopg.Connection:
        raise psycopg.OperationalError("connection refused")

    lock = EngineLock(connect=refuse)
    assert not lock.try_acquire()
    assert not lock.held()
