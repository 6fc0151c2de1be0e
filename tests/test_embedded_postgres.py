"""The embedded PostgreSQL comes back after its postmaster dies: a real pgserver
cluster in a temporary directory (never the session's database), really killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import OperationalError
from django.test import RequestFactory

from dashboard import embedded_postgres
from dashboard.middleware import DatabaseUnavailableMiddleware


@pytest.fixture
def cluster() -> Iterator[Any]:
    """A pgserver cluster of this test's own, joined the way settings.py joins ./data's."""
    import pgserver

    # Not under tmp_path: as root, pgserver runs PostgreSQL as another user, and every
    # pytest session that starts on this machine makes /tmp/pytest-of-root private again.
    with tempfile.TemporaryDirectory(prefix="pg-recovery-") as tmp:
        server = pgserver.get_server(Path(tmp) / "pg", cleanup_mode="stop")
        try:
            yield server
        finally:
            server.cleanup()
            # pgserver leaves it running when it counts other users; a failed test must not leak it.
            if (pid := embedded_postgres.postmaster_pid(server.pgdata)) is not None:
                os.kill(pid, signal.SIGINT)
                deadline = time.monotonic() + 10
                while embedded_postgres.is_running(server.pgdata) and time.monotonic() < deadline:
                    time.sleep(0.05)


def can_query(uri: str) -> bool:
    try:
        with psycopg.connect(uri, connect_timeout=3) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def kill_postmaster(server: Any, sig: signal.Signals) -> int:
    pid = embedded_postgres.postmaster_pid(server.pgdata)
    assert pid is not None and can_query(server.get_uri())
    os.kill(pid, sig)
    deadline = time.monotonic() + 15
    while embedded_postgres.is_running(server.pgdata):
        assert time.monotonic() < deadline, "the postmaster did not go away"
        time.sleep(0.05)
    assert not can_query(server.get_uri())
    return pid


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_a_dead_postmaster_is_started_again_on_the_same_data(cluster: Any, sig: signal.Signals) -> None:
    uri = cluster.get_uri()
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    old_pid = kill_postmaster(cluster, sig)

    # A SIGKILLed postmaster lingers as a zombie until init reaps it; allow for a slow init.
    assert embedded_postgres.ensure_running_again(cluster.pgdata, wait_s=30) is True

    new_pid = embedded_postgres.postmaster_pid(cluster.pgdata)
    assert new_pid is not None and new_pid != old_pid
    with psycopg.connect(uri) as conn:  # the same URL: same socket directory
        assert conn.execute("SELECT v FROM kept").fetchone() == (42,)
    # Up already: nothing to do.
    assert embedded_postgres.ensure_running_again(cluster.pgdata) is False
    assert embedded_postgres.postmaster_pid(cluster.pgdata) == new_pid


def test_started_again_in_the_background_for_a_web_request(cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded_postgres, "_last_background_attempt", float("-inf"))
    kill_postmaster(cluster, signal.SIGKILL)
    assert embedded_postgres.ensure_running_again_soon(data_dir=cluster.pgdata) is True
    deadline = time.monotonic() + 30
    while not can_query(cluster.get_uri()):
        assert time.monotonic() < deadline, "the background attempt did not bring the server back"
        time.sleep(0.2)


def test_the_last_process_to_exit_stops_the_server_despite_killed_users_and_restarts(cluster: Any) -> None:
    # pgserver stops the server when the last process using it exits: it counts them in a
    # file a SIGKILLed sync engine never takes itself off, and stops the postmaster it saw
    # when it joined, which is not the one running after another process restarted it.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    handles = Path(cluster.pgdata) / ".handle_pids.json"
    handles.write_text(json.dumps([os.getpid(), dead.pid]))
    kill_postmaster(cluster, signal.SIGKILL)
    restart_elsewhere = (
        "import sys; from pathlib import Path; from dashboard import embedded_postgres; "
        "assert embedded_postgres.ensure_running_again(Path(sys.argv[1]), wait_s=30)"
    )
    subprocess.run([sys.executable, "-c", restart_elsewhere, str(cluster.pgdata)], check=True, timeout=60)
    assert embedded_postgres.is_running(cluster.pgdata), "the other process left it running"

    embedded_postgres._prepare_cleanup(cluster.pgdata)  # what our exit hook runs...
    assert json.loads(handles.read_text()) == [os.getpid()]
    cluster.cleanup()  # ...before pgserver's
    assert not embedded_postgres.is_running(cluster.pgdata)


def test_nothing_to_restart_when_the_database_is_not_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    # What a process started with DATABASE_URL looks like: settings never called ensure_running.
    monkeypatch.setattr(embedded_postgres, "_data_dir", None)
    assert embedded_postgres.ensure_running_again() is False
    assert embedded_postgres.ensure_running_again_soon(min_interval_s=0) is False


def test_the_503_handler_starts_the_server_again_in_the_background_at_most_every_few_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path | None] = []
    release = threading.Event()

    def slow_start(data_dir: Path | None = None, **_: object) -> bool:
        calls.append(data_dir)
        release.wait(10)  # a start that takes long must not hold the request
        return True

    monkeypatch.setattr(embedded_postgres, "_data_dir", tmp_path)
    monkeypatch.setattr(embedded_postgres, "_last_background_attempt", float("-inf"))
    monkeypatch.setattr(embedded_postgres, "ensure_running_again", slow_start)
    middleware = DatabaseUnavailableMiddleware(lambda request: None)  # type: ignore[arg-type,return-value]
    refused = OperationalError('connection to server on socket "/x/.s.PGSQL.5432" failed: Connection refused')
    try:
        started = time.monotonic()
        for _ in range(5):
            response = middleware.process_exception(RequestFactory().get("/invocations/"), refused)
            assert response is not None and response.status_code == 503
        assert time.monotonic() - started < 1.0
        deadline = time.monotonic() + 5
        while not calls:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert calls == [None], "one attempt for the burst, on this process's own cluster"
    finally:
        release.set()
