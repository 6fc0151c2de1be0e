"""Shared fixtures. Integration tests run against a real restate-server with the
real demo services (started once per session on free ports) and the embedded
PostgreSQL; nothing here is a fake."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from invocations.mirror.sync.engine import StepReport, SyncEngine
from invocations.restate import RestateClient

# The token the session's Restate sends with its spans (as `make run` does with its own).
TRACES_TOKEN = "test-traces-token"


@pytest.fixture(scope="session", autouse=True)
def _one_round_password_hashing() -> None:
    from django.conf import settings
    from django.contrib.auth import hashers

    settings.PASSWORD_HASHERS = ["tests.hashers.OneRoundPBKDF2PasswordHasher"]
    hashers.get_hashers.cache_clear()
    hashers.get_hashers_by_algorithm.cache_clear()


@pytest.fixture(scope="session")
def traces_port() -> int:
    """Where the session's Restate exports its spans: a receiver listens there only while a
    test that wants spans runs (`traces_receiver`); otherwise Restate's exports fail and
    are dropped, which is what a user's Restate does while the dashboard is down."""
    from demo.stack import free_port

    return free_port()


@pytest.fixture(scope="session")
def demo_stack(tmp_path_factory: pytest.TempPathFactory, traces_port: int) -> Iterator[Any]:
    from demo.stack import DemoStack, tracing_env

    stack = DemoStack.start(
        tmp_path_factory.mktemp("restate"),
        restate_env=tracing_env(f"http://127.0.0.1:{traces_port}/v1/traces", token=TRACES_TOKEN),
    )
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def restate(demo_stack: Any) -> Iterator[RestateClient]:
    with RestateClient(demo_stack.admin_url, demo_stack.ingress_url, timeout=30) as client:
        yield client


@pytest.fixture
def engine(restate: RestateClient, transactional_db: None) -> SyncEngine:
    # Reconcile on demand only (tests call engine.reconcile()), so steps stay quick.
    return SyncEngine(restate, reconcile_every=timedelta(days=1), slow_every=timedelta(0))


def sync_until(
    engine: SyncEngine, condition: Callable[[], bool], *, timeout: float = 60.0, what: str = ""
) -> StepReport:
    """Run sync steps until `condition()` holds; fail with `what` if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        report = engine.sync_once()
        if condition():
            return report
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for: {what or condition}")
        time.sleep(0.3)


def wait_for_restate(
    restate: RestateClient, sql: str, predicate: Callable[[list[dict]], bool], *, timeout: float = 60.0
) -> list[dict]:
    """Poll Restate's own SQL until `predicate(rows)`; returns the rows."""
    deadline = time.monotonic() + timeout
    while True:
        rows = restate.query(sql)
        if predicate(rows):
            return rows
        if time.monotonic() > deadline:
            pytest.fail(f"Restate never satisfied the condition for: {sql}\nlast rows: {rows[:5]}")
        time.sleep(0.3)


@pytest.fixture
def client(db: None) -> Any:
    """pytest-django's test client, signed in as an ordinary user (every page needs a login)."""
    from django.contrib.auth.models import User
    from django.test import Client

    c = Client()
    c.force_login(User.objects.create_user("op", password="pw-for-tests-only"))
    return c


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def wait_completed(restate: RestateClient, invocation_id: str, *, timeout: float = 60.0) -> None:
    """Wait until Restate's own SQL says the invocation completed."""
    from invocations.restate import sql_literal

    wait_for_restate(
        restate,
        f"SELECT status FROM sys_invocation WHERE id = {sql_literal(invocation_id)}",
        lambda rows: bool(rows) and rows[0]["status"] == "completed",
        timeout=timeout,
    )
