"""Bulk jobs against a real Restate with the demo services: counts that match
Restate's own SQL, stop half-way, a worker killed mid-job (SIGKILL) that resumes
without doing anything twice, and the refusals (typed confirmation, viewers)."""

from __future__ import annotations

import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from demo.counting_proxy import CountingProxy
from demo.stack import ManagedProcess, spawn
from invocations.mirror.actions import Action
from invocations.mirror.models import Invocation
from invocations.mirror.sync.engine import SyncEngine
from invocations.operations import bulk
from invocations.operations.roles import Role, user_create
from invocations.operations.tasks import BULK_QUEUE, bulk_retry_stalled
from invocations.reads.filters import InvocationFilters
from invocations.reads.selectors.jobs import bulk_targets
from invocations.records.models import AuditEntry, AuditKind, BulkJob, BulkJobItem, ItemState, JobState
from invocations.restate import RestateClient, sql_list
from tests.conftest import sync_until, wait_for_restate

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- helpers


def fire_long(restate: RestateClient, n: int, *, minutes: float = 30.0) -> list[str]:
    """`n` Orchestrator.long trees (each calls Sleeper.nap), fired concurrently through the ingress."""
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda _: restate.send("Orchestrator", "long", payload=minutes), range(n)))


def mirror(engine: SyncEngine, ids: list[str]) -> None:
    """Sync until our copy holds every one of `ids` as running (the filter selects from our copy)."""
    sync_until(
        engine,
        lambda: Invocation.objects.filter(id__in=ids, status="running").count() == len(ids),
        what=f"{len(ids)} long invocations running in our copy",
        timeout=90,
    )


def only(ids: list[str], since: datetime) -> InvocationFilters:
    # Orchestrator.long created since the test began: other tests share this Restate.
    return InvocationFilters(service="Orchestrator", handler="long", created_after=since)


def operator(name: str = "operator") -> User:
    return user_create(username=name, password="pw-for-tests-only", role=Role.OPERATOR)  # type: ignore[return-value]


def start_job(user: User, filters: InvocationFilters, action: Action = Action.CANCEL, **kwargs: Any) -> BulkJob:
    return bulk.bulk_start(
        user=user,
        action=action,
        targets=bulk_targets(filters=filters, action=action),
        filter_query=filters.query_string(),
        filter_description=filters.describe(),
        **kwargs,
    )


def restate_completed(restate: RestateClient, ids: list[str], failure: str) -> set[str]:
    rows = restate.query(f"SELECT id, completion_failure FROM sys_invocation WHERE id IN {sql_list(ids)}")
    return {r["id"] for r in rows if r.get("completion_failure") == failure}


def restate_running(restate: RestateClient, ids: list[str]) -> set[str]:
    rows = restate.query(f"SELECT id, status FROM sys_invocation WHERE id IN {sql_list(ids)}")
    return {r["id"] for r in rows if r["status"] != "completed"}


def item_states(job: BulkJob) -> Counter[str]:
    return Counter(BulkJobItem.objects.filter(job=job).values_list("state", flat=True))


def assert_counts_consistent(job: BulkJob) -> None:
    job.refresh_from_db()
    states = item_states(job)
    assert (job.succeeded, job.failed, job.skipped) == (
        states[ItemState.SUCCEEDED],
        states[ItemState.FAILED],
        states[ItemState.SKIPPED],
    )
    assert job.processed == job.total == sum(states.values()), (job.total, states)
    assert not states[ItemState.PENDING] and not states[ItemState.SENT]


def start_worker(tmp_path: Path, *, admin_url: str, ingress_url: str, batch_size: int, name: str) -> ManagedProcess:
    """A real `manage.py procrastinate worker` on the bulk queue, on the test database."""
    db = connection.settings_dict
    env = {
        "DATABASE_URL": f"postgresql://{db['USER']}:@/{db['NAME']}?host={db['HOST']}",
        "RESTATE_ADMIN_URL": admin_url,
        "RESTATE_INGRESS_URL": ingress_url,
        "BULK_BATCH_SIZE": str(batch_size),
    }
    argv = [sys.executable, "manage.py", "procrastinate", "worker", "--queues", BULK_QUEUE, "--name", name]
    return spawn(name, argv, tmp_path / f"{name}.log", env)


def wait_job(job: BulkJob, predicate: Any, *, timeout: float = 120, worker: ManagedProcess | None = None) -> BulkJob:
    deadline = time.monotonic() + timeout
    while True:
        job.refresh_from_db()
        if predicate(job):
            return job
        if worker is not None and not worker.alive():
            pytest.fail(f"worker exited: {worker.log_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            log = worker.log_path.read_text()[-3000:] if worker else ""
            pytest.fail(f"job {job.id} never got there: {job.state} {job.processed}/{job.total}\n{log}")
        time.sleep(0.2)


@pytest.fixture
def proxies() -> Iterator[list[CountingProxy]]:
    made: list[CountingProxy] = []
    yield made
    for proxy in made:
        proxy.close()


# ---------------------------------------------------------------- tests

pytestmark = [pytest.mark.integration]


@pytest.mark.django_db(transaction=True)
def test_bulk_cancel_by_a_real_worker_matches_restates_own_count(
    restate: RestateClient, engine: SyncEngine, demo_stack: Any, tmp_path: Path, proxies: list[CountingProxy]
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    ids = fire_long(restate, 300)
    mirror(engine, ids)
    proxy = CountingProxy(demo_stack.admin_url)
    proxies.append(proxy)
    job = start_job(operator(), only(ids, since), request_key="k-300")
    assert job.total == 300 and job.state == JobState.QUEUED
    # The same key again (a double click): the same job, nothing new deferred.
    assert start_job(User.objects.get(username="operator"), only(ids, since), request_key="k-300").id == job.id
    assert BulkJob.objects.count() == 1

    worker = start_worker(
        tmp_path, admin_url=proxy.url, ingress_url=demo_stack.ingress_url, batch_size=100, name="bulk-a"
    )
    try:
        wait_job(job, lambda j: j.state == JobState.FINISHED, worker=worker)
    finally:
        worker.stop()
    assert_counts_consistent(job)
    assert job.succeeded == 300 and job.failed == 0 and job.skipped == 0
    # Three batches of 100: one status query and 100 PATCHes each.
    assert job.calls_to_restate == 3 + 300
    assert proxy.queries == 3 and sum(proxy.patches.values()) == 300
    assert set(proxy.patched_ids()) == set(ids) and max(proxy.patched_ids().values()) == 1
    # Restate's own SQL says the same: each of the job's invocations ended cancelled.
    wait_for_restate(
        restate,
        f"SELECT count(*) AS n FROM sys_invocation WHERE id IN {sql_list(ids)} AND completion_failure = '[409] cancelled'",
        lambda rows: rows[0]["n"] == job.succeeded,
    )
    batches = AuditEntry.objects.filter(job=job, kind=AuditKind.BULK_BATCH)
    assert batches.count() == 3 and sorted(t for e in batches for t in e.targets) == sorted(ids)
    assert AuditEntry.objects.filter(job=job, kind=AuditKind.BULK_START).get().response == {"total": 300}


@pytest.mark.django_db(transaction=True)
def test_a_job_stopped_half_way_skips_the_rest_which_keep_running(restate: RestateClient, engine: SyncEngine) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    ids = fire_long(restate, 200)
    mirror(engine, ids)
    user = operator()
    job = start_job(user, only(ids, since))
    assert bulk.job_run_batch(job_id=job.id, client=restate, batch_size=50) is True
    assert bulk.job_run_batch(job_id=job.id, client=restate, batch_size=50) is True
    bulk.bulk_stop(user=user, job_id=job.id)
    job.refresh_from_db()
    assert job.state == JobState.STOPPING and job.stop_requested
    assert bulk.job_run_batch(job_id=job.id, client=restate, batch_size=50) is False

    job.refresh_from_db()
    assert job.state == JobState.STOPPED and job.finished_at is not None
    assert_counts_consistent(job)
    assert (job.succeeded, job.skipped, job.failed) == (100, 100, 0)
    skipped = list(BulkJobItem.objects.filter(job=job, state=ItemState.SKIPPED).values_list("invocation_id", flat=True))
    done = list(BulkJobItem.objects.filter(job=job, state=ItemState.SUCCEEDED).values_list("invocation_id", flat=True))
    assert {
        m for m in BulkJobItem.objects.filter(job=job, state=ItemState.SKIPPED).values_list("message", flat=True)
    } == {"Stopped by operator: not sent."}
    wait_for_restate(
        restate,
        f"SELECT id FROM sys_invocation WHERE id IN {sql_list(done)} AND completion_failure = '[409] cancelled'",
        lambda rows: len(rows) == 100,
    )
    assert restate_running(restate, skipped) == set(skipped)
    assert AuditEntry.objects.filter(job=job, kind=AuditKind.BULK_STOP, username="operator").count() == 1
    for inv in skipped:  # leave the shared Restate tidy
        restate.operate("cancel", inv)


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_job_resumes_and_does_nothing_twice(
    restate: RestateClient, engine: SyncEngine, demo_stack: Any, tmp_path: Path, proxies: list[CountingProxy]
) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    ids = fire_long(restate, 200)
    mirror(engine, ids)
    # Slow PATCHes (50 ms each, 16 at a time): a batch of 50 takes ~200 ms, time to kill it inside one.
    proxy = CountingProxy(demo_stack.admin_url, patch_delay_s=0.05)
    proxies.append(proxy)
    job = start_job(operator(), only(ids, since))
    first = start_worker(
        tmp_path, admin_url=proxy.url, ingress_url=demo_stack.ingress_url, batch_size=50, name="bulk-first"
    )
    try:
        # Kill it once a batch is marked sent and at least one earlier batch is recorded.
        wait_job(
            job,
            lambda j: j.succeeded >= 50 and BulkJobItem.objects.filter(job=j, state=ItemState.SENT).exists(),
            worker=first,
        )
        first._signal(signal.SIGKILL)
        first.popen.wait(10)
    finally:
        first.stop()
    job.refresh_from_db()
    in_flight = list(BulkJobItem.objects.filter(job=job, state=ItemState.SENT).values_list("invocation_id", flat=True))
    assert in_flight and job.state == JobState.RUNNING
    patched_before = set(proxy.patched_ids())

    # procrastinate sees the dead worker's silence and puts the task back in the queue.
    deadline = time.monotonic() + 30
    while not bulk_retry_stalled(seconds_since_heartbeat=1):
        assert time.monotonic() < deadline, "the killed worker's job was never found stalled"
        time.sleep(0.5)
    second = start_worker(
        tmp_path, admin_url=proxy.url, ingress_url=demo_stack.ingress_url, batch_size=50, name="bulk-second"
    )
    try:
        wait_job(job, lambda j: j.state == JobState.FINISHED, worker=second)
    finally:
        second.stop()

    assert_counts_consistent(job)
    assert job.succeeded == 200, item_states(job)
    patched = proxy.patched_ids()
    # Nothing twice: no id was PATCHed more than once across both workers.
    assert max(patched.values()) == 1, [i for i, n in patched.items() if n > 1]
    assert set(patched) == set(ids)
    # The in-flight ids the first worker had already sent were settled from Restate's state.
    resent = [i for i in in_flight if i in patched_before]
    print(f"killed with {len(in_flight)} items in flight, {len(resent)} of them already sent")
    for item in BulkJobItem.objects.filter(job=job, invocation_id__in=resent):
        assert item.state == ItemState.SUCCEEDED and "not sent again" in item.message
    wait_for_restate(
        restate,
        f"SELECT count(*) AS n FROM sys_invocation WHERE id IN {sql_list(ids)} AND completion_failure = '[409] cancelled'",
        lambda rows: rows[0]["n"] == 200,
    )


@pytest.mark.django_db(transaction=True)
def test_skips_what_restate_says_is_no_longer_allowed(restate: RestateClient, engine: SyncEngine) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    ids = fire_long(restate, 5)
    mirror(engine, ids)
    job = start_job(operator(), only(ids, since))
    # Cancelled behind our copy's back: the job finds them completed and sends nothing.
    for inv in ids[:2]:
        restate.operate("cancel", inv)
    wait_for_restate(
        restate,
        f"SELECT id FROM sys_invocation WHERE id IN {sql_list(ids[:2])} AND status = 'completed'",
        lambda rows: len(rows) == 2,
    )
    bulk.job_run(job_id=job.id, client=restate)
    assert_counts_consistent(job)
    assert job.state == JobState.FINISHED and job.finished_at is not None
    assert (job.succeeded, job.skipped, job.calls_to_restate) == (3, 2, 1 + 3)
    for item in BulkJobItem.objects.filter(job=job, invocation_id__in=ids[:2]):
        assert item.message.startswith("Now completed ([409] cancelled)") and item.http_status is None


# ---------------------------------------------------------------- the pages' refusals


@pytest.fixture
def viewer_client(db: None) -> Client:
    c = Client()
    c.force_login(user_create(username="viewer", password="pw-for-tests-only", role=Role.VIEWER))
    return c


@pytest.fixture
def operator_client(db: None) -> Client:
    c = Client()
    c.force_login(operator())
    return c


def test_kill_without_typing_its_name_is_refused_with_400(operator_client: Client) -> None:
    response = operator_client.post("/jobs/", {"action": "kill", "filter": "service=Orchestrator", "confirm": ""})
    assert response.status_code == 400
    assert "type" in response.content.decode() and "kill" in response.content.decode()
    response = operator_client.post("/jobs/", {"action": "kill", "filter": "service=Orchestrator", "confirm": "yes"})
    assert response.status_code == 400
    assert not BulkJob.objects.exists()


def test_typed_name_starts_the_job_and_redirects(operator_client: Client) -> None:
    response = operator_client.post("/jobs/", {"action": "kill", "filter": "service=Nobody", "confirm": "kill"})
    job = BulkJob.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.id}/"
    assert job.total == 0 and job.action == "kill" and job.created_by == "operator"
    page = operator_client.get(f"/jobs/{job.id}/")
    assert page.status_code == 200 and "service = Nobody" in page.content.decode()


def test_a_viewer_sees_jobs_but_gets_403_on_start_and_stop(viewer_client: Client) -> None:
    job = BulkJob.objects.create(action="cancel", created_by="someone", filter_description="every invocation")
    assert viewer_client.get("/jobs/").status_code == 200
    page = viewer_client.get(f"/jobs/{job.id}/")
    assert page.status_code == 200 and "Stop" not in page.content.decode()
    assert viewer_client.post("/jobs/", {"action": "cancel", "filter": ""}).status_code == 403
    assert viewer_client.post(f"/jobs/{job.id}/stop/").status_code == 403
    assert viewer_client.get("/jobs/new/?action=cancel").status_code == 403
    job.refresh_from_db()
    assert not job.stop_requested and BulkJob.objects.count() == 1
    assert "Bulk action" not in viewer_client.get("/invocations/").content.decode()


@pytest.mark.parametrize(
    ("method", "url", "data", "status"),
    [
        ("post", "/jobs/", {"action": "explode", "filter": ""}, 400),
        ("post", "/jobs/", {"filter": ""}, 400),
        ("post", "/jobs/", {"action": "cancel", "filter": "created_after=yesterday"}, 400),
        ("post", "/jobs/", {"action": "cancel", "filter": "", "request_key": "x" * 65}, 400),
        ("get", "/jobs/new/?action=explode", None, 400),
        ("get", "/jobs/new/", None, 400),
        ("post", "/jobs/999999/stop/", {}, 404),
        ("get", "/jobs/999999/", None, 404),
        ("get", "/jobs/1/?state=nonsense", None, 404),
        ("get", "/jobs/99999999999999999999999/", None, 404),
        ("get", "/invocations/?job=abc", None, 400),
        ("get", "/jobs/1/stop/", None, 405),
    ],
)
def test_bad_input_is_a_clear_4xx(operator_client: Client, method: str, url: str, data: Any, status: int) -> None:
    response = (
        getattr(operator_client, method)(url, data) if data is not None else getattr(operator_client, method)(url)
    )
    assert response.status_code == status, response.content[:500]


def test_dry_run_counts_only_what_the_action_may_touch(operator_client: Client) -> None:
    from tests import factories

    running = [factories.create_invocation(status="running", target="Svc/run") for _ in range(3)]
    factories.create_invocation(status="completed", target="Svc/run")
    page = operator_client.get("/jobs/new/?action=cancel&filter=service%3DSvc")
    text = page.content.decode()
    assert page.status_code == 200
    assert "<b>3</b> of 4 matching" in text and all(inv.id in text for inv in running)
    kill = operator_client.get("/jobs/new/?action=kill&filter=service%3DSvc").content.decode()
    assert 'name="confirm"' in kill and "Type <b>kill</b>" in kill
    assert 'name="confirm"' not in text


def test_the_list_filters_to_a_jobs_invocations(operator_client: Client) -> None:
    from tests import factories

    a, b = factories.create_invocation(status="running"), factories.create_invocation(status="running")
    job = BulkJob.objects.create(action="cancel", created_by="operator")
    BulkJobItem.objects.create(job=job, invocation_id=a.id)
    text = operator_client.get(f"/invocations/?job={job.id}").content.decode()
    assert a.id in text and b.id not in text


def test_a_lost_answer_is_re_checked_once_before_it_counts_as_failed() -> None:
    from invocations.operations.bulk import _after_sending
    from invocations.restate import RestateUnavailable

    lost = RestateUnavailable("connection reset")
    assert _after_sending(Action.CANCEL, lost, resumed=False) is None, "left `sent`: the next batch re-checks it"
    verdict = _after_sending(Action.CANCEL, lost, resumed=True)
    assert verdict is not None and verdict.state == ItemState.FAILED and "twice" in verdict.message
