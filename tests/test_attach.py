"""Attach against a real Restate with the demo services and a real procrastinate
worker (`manage.py procrastinate worker --queues attach`, a separate process on the
test database). Restate's ingress sits behind a counting proxy, so the tests can
say how many attach requests reached it."""

from __future__ import annotations

import http.server
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.test import Client, override_settings

from demo.stack import ManagedProcess, log_tail, spawn
from invocations.mirror.models import Invocation
from invocations.operations import attach as attach_service
from invocations.operations.roles import Role, user_create
from invocations.reads.presenters.attach import fetch_note
from invocations.records.models import AttachState, AttachWait
from invocations.restate import RestateClient, sql_literal
from tests.conftest import sync_until, wait_completed, wait_for_restate

pytestmark = pytest.mark.integration


class CountingProxy:
    """A tiny HTTP proxy in front of Restate's ingress that counts GETs by path.
    One thread per request: an attach held through it blocks only its own thread."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with proxy.lock:
                    proxy.counts[self.path] += 1
                try:
                    response = httpx.get(proxy.upstream + self.path, timeout=httpx.Timeout(10, read=None))
                except httpx.TransportError:
                    self.send_error(502)
                    return
                self.send_response(response.status_code)
                self.send_header("content-type", response.headers.get("content-type", "application/json"))
                self.send_header("content-length", str(len(response.content)))
                self.end_headers()
                self.wfile.write(response.content)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self, suffix: str, containing: str = "") -> int:
        with self.lock:
            return sum(n for path, n in self.counts.items() if path.endswith(suffix) and containing in path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(demo_stack: Any) -> Iterator[CountingProxy]:
    p = CountingProxy(demo_stack.ingress_url)
    yield p
    p.close()


def _database_url() -> str:
    db = connection.settings_dict
    return f"postgresql://{db['USER']}:@/{db['NAME']}?host={db['HOST']}"


def start_attach_worker(log_path: Path, ingress_url: str, extra_env: dict[str, str] | None = None) -> ManagedProcess:
    argv = [sys.executable, "manage.py", "procrastinate", "worker", "--queues", "attach", "--concurrency", "50"]
    env = {"DATABASE_URL": _database_url(), "RESTATE_INGRESS_URL": ingress_url, **(extra_env or {})}
    proc = spawn("attach worker", argv, log_path, env)
    # The worker registers itself (a heartbeat row) once it listens for jobs.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not proc.alive():
            raise AssertionError(f"attach worker exited:\n{log_tail(log_path)}")
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM procrastinate_workers WHERE last_heartbeat > now() - interval '5 s'")
            if cursor.fetchone()[0] > 0:
                return proc
        time.sleep(0.2)
    proc.stop()
    raise AssertionError(f"attach worker did not start:\n{log_tail(log_path)}")


@pytest.fixture
def worker(transactional_db: None, proxy: CountingProxy, demo_stack: Any, tmp_path: Path) -> Iterator[ManagedProcess]:
    proc = start_attach_worker(tmp_path / "attach-worker.log", proxy.url)
    with override_settings(RESTATE_INGRESS_URL=proxy.url, RESTATE_ADMIN_URL=demo_stack.admin_url):
        yield proc
    proc.stop()


def wait_for(condition: Callable[[], bool], *, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for: {what}")
        time.sleep(0.2)


def session_for(role: Role) -> Client:
    name = f"{role.value}-{uuid.uuid4().hex[:6]}"
    user = user_create(username=name, password=None, role=role)
    c = Client()
    c.force_login(user)
    return c


def post_attach(c: Client, invocation_id: str, *, htmx: bool = True) -> Any:
    headers = {"HX-Request": "true"} if htmx else {}
    return c.post(f"/invocations/{invocation_id}/attach/", headers=headers)


def attach_jobs(invocation_id: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'attach_wait' AND args->>'invocation_id' = %s",
            [invocation_id],
        )
        return cursor.fetchone()[0]


def running(restate: RestateClient, invocation_id: str) -> None:
    wait_for_restate(
        restate,
        f"SELECT status FROM sys_invocation WHERE id = {sql_literal(invocation_id)}",
        lambda rows: bool(rows) and rows[0]["status"] == "running",
    )


def test_two_sessions_share_one_wait_on_restate_and_a_reload_shows_it(
    worker: ManagedProcess, proxy: CountingProxy, restate: RestateClient
) -> None:
    nap = restate.send("Sleeper", "nap", payload=0.12)  # ~7 s
    running(restate, nap)
    viewer, operator = session_for(Role.VIEWER), session_for(Role.OPERATOR)

    first = post_attach(viewer, nap)
    assert first.status_code == 200, first.content
    assert "Waiting for the result" in first.content.decode()
    second = post_attach(operator, nap)
    assert "Waiting for the result" in second.content.decode()
    # A reload (a GET) shows the same wait, started by the first session.
    again = viewer.get(f"/invocations/{nap}/attach/")
    assert "Waiting for the result" in again.content.decode()
    assert "started by viewer-" in again.content.decode()

    wait_for(lambda: proxy.count("/attach", nap) >= 1, timeout=30, what="the worker to attach")
    assert AttachWait.objects.get(pk=nap).state == AttachState.WAITING
    wait_for(
        lambda: AttachWait.objects.get(pk=nap).state != AttachState.WAITING,
        timeout=60,
        what="the result to arrive in AttachWait",
    )
    wait = AttachWait.objects.get(pk=nap)
    assert wait.state == AttachState.SUCCEEDED, (wait.state, wait.body, wait.message)
    assert "slept" in wait.body and wait.http_status == 200 and wait.finished_at is not None
    # Two sessions, one reload: one non-blocking look and ONE attach reached Restate.
    assert proxy.count("/attach", nap) == 1
    assert proxy.count("/output", nap) == 1
    assert attach_jobs(nap) == 1
    page = operator.get(f"/invocations/{nap}/attach/").content.decode()
    assert "Succeeded" in page and "slept 0.12 min" in page


def test_attaching_to_a_completed_invocation_with_a_key_shows_its_output_at_once(
    worker: ManagedProcess, proxy: CountingProxy, restate: RestateClient
) -> None:
    inv = restate.send("Greeter", "greet", payload="attach-now", idempotency_key=f"attach-{uuid.uuid4().hex[:8]}")
    wait_completed(restate, inv)
    response = post_attach(session_for(Role.VIEWER), inv)
    body = response.content.decode()
    assert "Succeeded" in body and "Hello, attach-now!" in body
    assert AttachWait.objects.get(pk=inv).state == AttachState.SUCCEEDED
    assert attach_jobs(inv) == 0, "a completed invocation needs no wait job"
    assert proxy.count("/attach", inv) == 0 and proxy.count("/output", inv) == 1


def test_attaching_to_a_purged_invocation_says_so(
    worker: ManagedProcess, proxy: CountingProxy, restate: RestateClient
) -> None:
    inv = restate.send("Greeter", "greet", payload="purge-me", idempotency_key=f"purge-{uuid.uuid4().hex[:8]}")
    wait_completed(restate, inv)
    assert restate.purge(inv).ok
    body = post_attach(session_for(Role.VIEWER), inv).content.decode()
    assert "Purged or expired" in body and "can no longer be fetched" in body
    wait = AttachWait.objects.get(pk=inv)
    assert wait.state == AttachState.NOT_FOUND and wait.http_status == 404
    assert attach_jobs(inv) == 0


def test_a_failure_arrives_with_its_text(worker: ManagedProcess, restate: RestateClient) -> None:
    nap = restate.send("Sleeper", "nap", payload=30)
    running(restate, nap)
    viewer = session_for(Role.VIEWER)
    post_attach(viewer, nap)
    wait_for(lambda: attach_jobs(nap) == 1, what="the job")
    wait_for(
        lambda: AttachWait.objects.get(pk=nap).state == AttachState.WAITING and _job_doing(nap), what="job running"
    )
    assert restate.cancel(nap).ok
    wait_for(lambda: AttachWait.objects.get(pk=nap).state != AttachState.WAITING, what="the failure")
    wait = AttachWait.objects.get(pk=nap)
    assert wait.state == AttachState.FAILED and wait.http_status == 409
    page = viewer.get(f"/invocations/{nap}/attach/").content.decode()
    assert "Failed" in page and "[409] cancelled" in page


def _job_doing(invocation_id: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'attach_wait' AND status = 'doing'"
            " AND args->>'invocation_id' = %s",
            [invocation_id],
        )
        return cursor.fetchone()[0] == 1


def test_a_workflow_attaches_by_workflow_id(
    worker: ManagedProcess, proxy: CountingProxy, restate: RestateClient, engine: Any
) -> None:
    wf_id = f"attach-{uuid.uuid4().hex[:8]}"
    run = restate.send("Signup", "run", key=wf_id, payload=f"{wf_id}@example.com")
    running(restate, run)
    sync_until(engine, lambda: Invocation.objects.filter(pk=run).exists(), what="the run in our copy")
    viewer = session_for(Role.VIEWER)
    body = post_attach(viewer, run).content.decode()
    assert "Waiting for the result" in body and f"workflow id (Signup/{wf_id})" in body
    wait_for(lambda: proxy.count(f"/restate/workflow/Signup/{wf_id}/attach") == 1, what="the attach by workflow id")
    assert proxy.count("/attach", run) == 0
    restate.call("Signup", "confirm", key=wf_id, payload="CODE-1")
    wait_for(lambda: AttachWait.objects.get(pk=run).state != AttachState.WAITING, what="the workflow's result")
    wait = AttachWait.objects.get(pk=run)
    assert wait.state == AttachState.SUCCEEDED and "confirmed with CODE-1" in wait.body


def test_no_user_key_note_and_what_restate_really_answers(restate: RestateClient, engine: Any, client: Any) -> None:
    """DESIGN says "without a user key: can only wait". Restate 1.7.12 keeps every result
    for its completion retention: a child invocation (no key at all) answers /output."""
    root = restate.send("Orchestrator", "long", payload=0.02)
    wait_completed(restate, root)
    child = wait_for_restate(
        restate, f"SELECT id FROM sys_invocation WHERE invoked_by_id = {sql_literal(root)}", lambda rows: bool(rows)
    )[0]["id"]
    wait_completed(restate, child)
    sync_until(engine, lambda: Invocation.objects.filter(pk=child, status="completed").exists(), what="the child")
    inv = Invocation.objects.get(pk=child)
    assert inv.idempotency_key is None and inv.invoked_by == "service"
    assert restate.output(child).http_status == 200  # the fact the note rests on
    page = client.get(f"/invocations/{child}/").content.decode()
    assert "The caller set no idempotency key: the result can be waited for." in page
    assert "1 day after completion" in page
    # Where Restate reports no completion retention (older Restate), it can only wait.
    inv.completion_retention = None
    assert fetch_note(inv) == (
        "The caller set no idempotency key: the result can be waited for, but not fetched after completion."
    )


def test_only_logged_in_users_attach(transactional_db: None) -> None:
    anonymous = Client()
    response = anonymous.post("/invocations/inv_1aaaaaaaaaaaaaaaaaaaaa/attach/")
    assert response.status_code == 302 and "/login/" in response["Location"]
    viewer = session_for(Role.VIEWER)
    assert viewer.post("/invocations/not-an-id/attach/").status_code == 400
    assert viewer.delete("/invocations/inv_1aaaaaaaaaaaaaaaaaaaaa/attach/").status_code == 405
    with pytest.raises(attach_service.NotAllowed):
        attach_service.attach_request(user=AnonymousUser(), invocation_id="inv_1aaaaaaaaaaaaaaaaaaaaa")
