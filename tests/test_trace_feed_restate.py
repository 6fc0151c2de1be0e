"""The push feed end to end, with the real parts: the session's restate-server exports its
spans to a Daphne serving /v1/traces (started here on the port Restate was told), and a
real `manage.py sync_restate` reads the hints. Poll intervals are set to minutes where
only the hint path may explain what the test sees."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from demo.stack import ManagedProcess, spawn, start_web
from invocations.mirror.models import FeedMode, Invocation, ObjectLock, QueuedInvocation, SyncState, TraceFeed
from invocations.mirror.sync.mapping import parse_timestamp
from invocations.restate import RestateClient, sql_literal
from tests.conftest import TRACES_TOKEN

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _database_url() -> str:
    db = connection.settings_dict
    return f"postgresql://{db['USER']}:@/{db['NAME']}?host={db['HOST']}"


def start_receiver(port: int, log_path: Path) -> ManagedProcess:
    return start_web(port, log_path, {"DATABASE_URL": _database_url(), "TRACES_TOKEN": TRACES_TOKEN})


@pytest.fixture
def receiver(traces_port: int, tmp_path: Path, demo_stack: Any) -> Iterator[ManagedProcess]:
    proc = start_receiver(traces_port, tmp_path / "receiver.log")
    try:
        yield proc
    finally:
        proc.stop()


def start_sync(tmp_path: Path, demo_stack: Any, **env: str) -> ManagedProcess:
    return spawn(
        "sync_restate",
        [sys.executable, "manage.py", "sync_restate"],
        tmp_path / "sync.log",
        {
            "DATABASE_URL": _database_url(),
            "RESTATE_ADMIN_URL": demo_stack.admin_url,
            "RESTATE_INGRESS_URL": demo_stack.ingress_url,
            **env,
        },
    )


def wait_until(condition: Callable[[], Any], *, timeout: float, what: str, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.02)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")


@contextmanager
def pushing_sync(
    tmp_path: Path,
    demo_stack: Any,
    restate: RestateClient,
    *,
    db: Callable[[Callable[[], Any]], Any] = lambda read: read(),
    **env: str,
) -> Iterator[Path]:
    """A sync process past its first step and in push mode (a span woke the feed); yields its log.
    `db` runs the waits' database reads (browser tests: off Playwright's loop)."""
    sync = start_sync(tmp_path, demo_stack, **env)
    log = tmp_path / "sync.log"
    try:
        db(lambda: wait_until(first_step_done, timeout=60, what="the first step", log=log))
        restate.call("Greeter", "greet", payload="wake the feed")
        db(lambda: wait_until(in_push_mode, timeout=15, what="push mode", log=log))
        yield log
    finally:
        sync.stop()


def state() -> SyncState:
    return SyncState.objects.get(id=1)


def first_step_done() -> bool:
    return SyncState.objects.filter(id=1, last_success_at__isnull=False).exists()


def in_push_mode() -> bool:
    return SyncState.objects.filter(id=1, feed_mode=FeedMode.PUSH).exists()


def test_hints_reach_the_mirror_within_a_second_while_the_poll_waits_minutes(
    receiver: ManagedProcess, restate: RestateClient, demo_stack: Any, tmp_path: Path
) -> None:
    minutes = {"SYNC_MIN_INTERVAL_S": "300", "SYNC_MAX_INTERVAL_S": "300", "SYNC_SAFETY_NET_S": "300"}
    scheduled: list[str] = []
    try:
        with pushing_sync(tmp_path, demo_stack, restate, **minutes) as log:
            steps = state().last_success_at

            root = restate.send("Orchestrator", "call_all", payload="pushed")
            wait_until(
                lambda: Invocation.objects.filter(root_id=root, status="completed").count() == 4,
                timeout=10,
                what="the tree, completed, in our copy",
                log=log,
            )
            (theirs,) = restate.query(f"SELECT completed_at FROM sys_invocation WHERE id = {sql_literal(root)}")
            ours = Invocation.objects.get(id=root)
            # Our copy holds Restate's completion time, and it arrived within a second of it.
            assert ours.completed_at == parse_timestamp(theirs["completed_at"])
            lag = (ours.synced_at - ours.completed_at).total_seconds()
            assert lag < 1.0, f"the root's completion reached our copy {lag:.2f}s after Restate's"

            # A delayed send announces nothing until it fires; its sender's journal names it.
            sender = restate.send("Orchestrator", "later", payload={"seconds": [3600]})
            child = wait_until(
                lambda: Invocation.objects.filter(parent_id=sender, status="scheduled").first(),
                timeout=5,
                what="the scheduled child, through its sender's hint",
                log=log,
            )
            scheduled.append(child.id)

            # A call queued behind a key's holder: its ingress span names it, and the holder's hint
            # re-reads the key's queue (the lock hand-over is in no span of its own).
            key = f"pushed-{time.time_ns()}"
            holder = restate.send("Worker", "work", key=key, payload=3.0)
            queued = restate.send("Worker", "work", key=key, payload=0.1)
            wait_until(
                lambda: (
                    QueuedInvocation.objects.filter(invocation_id=queued, service_key=key).exists()
                    and ObjectLock.objects.filter(service_key=key, invocation_id=holder).exists()
                ),
                timeout=3,
                what="the queue and its holder, through hints",
                log=log,
            )
            wait_until(
                lambda: (
                    Invocation.objects.filter(id__in=[holder, queued], status="completed").count() == 2
                    and not QueuedInvocation.objects.filter(service_key=key).exists()
                ),
                timeout=10,
                what="the queue drained, through hints",
                log=log,
            )

            assert state().last_success_at == steps, "a full step ran: the hint path alone must explain this"
            feed = TraceFeed.objects.get()
            assert feed.spans > 0 and feed.ids_hinted > 0 and feed.refused == 0
    finally:
        for inv in scheduled:
            restate.kill(inv)


def test_spans_lost_on_the_way_are_caught_by_the_safety_net(
    receiver: ManagedProcess, restate: RestateClient, demo_stack: Any, tmp_path: Path
) -> None:
    env = {"SYNC_MIN_INTERVAL_S": "300", "SYNC_MAX_INTERVAL_S": "300", "SYNC_SAFETY_NET_S": "4"}
    with pushing_sync(tmp_path, demo_stack, restate, SYNC_PUSH_QUIET_S="600", **env) as log:
        receiver.stop()  # Restate's exports now fail: these spans are lost
        lost = restate.send("Greeter", "greet", payload="nobody hears this span")
        wait_until(
            lambda: Invocation.objects.filter(id=lost, status="completed").exists(),
            timeout=12,
            what="the invocation whose spans were lost, found by the safety-net scan",
            log=log,
        )
        assert in_push_mode(), "one lost export is not a reason to leave push mode"
        # Written right after the step's own commit.
        wait_until(lambda: (state().last_net_changed or 0) >= 1, timeout=2, what="the safety net's catch, recorded")


def test_when_spans_stop_the_mirror_falls_back_to_polling_by_itself(
    receiver: ManagedProcess, restate: RestateClient, demo_stack: Any, tmp_path: Path
) -> None:
    env = {"SYNC_MIN_INTERVAL_S": "0.5", "SYNC_MAX_INTERVAL_S": "1", "SYNC_SAFETY_NET_S": "300"}
    with pushing_sync(tmp_path, demo_stack, restate, SYNC_PUSH_QUIET_S="2", **env) as log:
        receiver.stop()
        wait_until(lambda: not in_push_mode(), timeout=10, what="the fall back to polling", log=log)
        assert state().feed_mode_since is not None
        # Polling again: a change no span announces is seen at the polling pace, not in 300 s.
        polled = restate.send("Greeter", "greet", payload="polled")
        wait_until(
            lambda: Invocation.objects.filter(id=polled, status="completed").exists(),
            timeout=6,
            what="a change seen by polling",
            log=log,
        )
