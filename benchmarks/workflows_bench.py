"""Workflows benchmark: `make bench-workflows` (python -m benchmarks.workflows_bench).

/workflows/ lists workflow runs among every invocation of our copy. This fills a scratch
database (dropped at the end) with --runs workflow runs over three workflow services (one
with a tenth of them), two interactions per run, a promise per run and --others ordinary
invocations interleaved in time; 90% of the runs completed, the rest suspended, running,
backing-off or paused (the rarest). Times, median and p95 over --reps, server time in-process:

- the selector `workflow_runs_page` (newest page, a page deep in by its cursor, by service,
  by a common and a rare status, by both) and `workflow_run_status_counts`;
- the whole pages `/workflows/`, `/workflows/?status=paused` and one workflow id's page
  (its state read from Restate is left out: pointed at a closed port, it answers at once).

Baseline, in the same run: the invocation list's own first page (`inv_created_idx`), and
the same selectors with the two partial indexes of migration 0015 dropped.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from benchmarks.scratch import ScratchDatabase

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
INDEXES = ("wf_run_created_idx", "wf_run_status_idx")


def say(text: str) -> None:
    print(text, flush=True)


def timed(func: Callable[[], object], reps: int) -> tuple[float, float]:
    seconds = []
    for _ in range(reps):
        started = time.perf_counter()
        func()
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    return statistics.median(seconds), seconds[min(len(seconds) - 1, int(0.95 * len(seconds)))]


def fill(runs: int, others: int) -> None:
    from django.db import connection

    total = runs * 3 + others
    with connection.cursor() as cursor:
        # Invocation g: one in (total / runs) is a run, the two after it its interactions, the
        # rest ordinary services; created 1 ms apart, so runs spread over the whole table.
        step = total // runs
        cursor.execute(
            "INSERT INTO invocations_invocation (id, target, service_name, service_key, handler_name, service_type, "
            "status, completion_result, invoked_by, created_at, modified_at, completed_at, completion_retention, "
            "first_seen_at, synced_at, journal_size, retry_count, journal_synced_size) "
            "SELECT 'inv_1w' || lpad(g::text, 30, '0'), t.service || '/k/' || t.handler, t.service, "
            "CASE WHEN t.kind = 'other' THEN NULL ELSE 'wf-' || (g / %s) END, t.handler, "
            "CASE WHEN t.kind = 'other' THEN 'service' ELSE 'workflow' END, t.status, "
            "CASE WHEN t.status = 'completed' THEN 'success' END, 'ingress', "
            "%s + g * interval '1 ms', %s + g * interval '1 ms', "
            "CASE WHEN t.status = 'completed' THEN %s + g * interval '1 ms' + interval '2 s' END, 'PT86400S', "
            "%s, %s, 3, 1, 3 "
            "FROM generate_series(0, %s) g, LATERAL (SELECT "
            "CASE WHEN g %% %s = 0 AND g / %s < %s THEN 'run' WHEN g %% %s IN (1, 2) AND g / %s < %s THEN 'interaction' "
            "ELSE 'other' END AS kind) k, LATERAL (SELECT k.kind, "
            "CASE WHEN k.kind = 'other' THEN 'Greeter' WHEN (g / %s) %% 10 = 0 THEN 'Onboarding' "
            "WHEN (g / %s) %% 2 = 0 THEN 'Signup' ELSE 'Checkout' END AS service, "
            "CASE k.kind WHEN 'run' THEN 'run' WHEN 'interaction' THEN 'status' ELSE 'greet' END AS handler, "
            "CASE WHEN k.kind <> 'run' OR (g / %s) %% 100 < 90 THEN 'completed' WHEN (g / %s) %% 100 < 95 THEN 'suspended' "
            "WHEN (g / %s) %% 100 < 98 THEN 'running' WHEN (g / %s) %% 100 < 99 THEN 'backing-off' ELSE 'paused' END "
            "AS status) t",
            [
                step,
                T0,
                T0,
                T0,
                T0,
                T0,
                total - 1,
                step,
                step,
                runs,
                step,
                step,
                runs,
                step,
                step,
                step,
                step,
                step,
                step,
            ],
        )
        cursor.execute(
            "INSERT INTO invocations_workflowpromise (service_name, service_key, key, completed, success_value) "
            "SELECT service_name, service_key, 'confirmed', status = 'completed', "
            "CASE WHEN status = 'completed' THEN '\"ok\"' END FROM invocations_invocation "
            "WHERE service_type = 'workflow' AND handler_name = 'run'"
        )
        cursor.execute(
            "INSERT INTO invocations_service (name, service_type, revision, public) VALUES "
            "('Signup', 'workflow', 1, true), ('Checkout', 'workflow', 1, true), ('Onboarding', 'workflow', 1, true), "
            "('Greeter', 'service', 1, true)"
        )
        # Index-only scans need the visibility map, which autovacuum keeps current on a live table.
        cursor.execute("VACUUM ANALYZE")


def counts() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(*) FILTER (WHERE service_type = 'workflow' AND handler_name = 'run'), "
            "count(*) FILTER (WHERE service_type = 'workflow' AND handler_name = 'run' AND status = 'paused') "
            "FROM invocations_invocation"
        )
        total, runs, paused = cursor.fetchone()
    return f"{total:,} invocations, {runs:,} workflow runs ({paused:,} paused)"


def measure(reps: int, client: object, label: str) -> None:
    from invocations.reads.selectors.invocations import invocation_list
    from invocations.reads.selectors.workflows import workflow_run_status_counts, workflow_runs_page

    deep = workflow_runs_page()
    for _ in range(100):  # 100 pages in: the cursor of page 101
        assert deep.next_cursor is not None
        deep = workflow_runs_page(before=deep.next_cursor)
    cursor = deep.next_cursor
    say(f"\n{label}")
    rows: list[tuple[str, Callable[[], object]]] = [
        ("baseline: invocation list, first page", lambda: invocation_list()),
        ("runs, newest page", lambda: workflow_runs_page()),
        ("runs, page 101 (by its cursor)", lambda: workflow_runs_page(before=cursor)),
        ("runs, service=Onboarding", lambda: workflow_runs_page(service="Onboarding")),
        ("runs, status=completed", lambda: workflow_runs_page(status="completed")),
        ("runs, status=paused", lambda: workflow_runs_page(status="paused")),
        ("runs, service=Onboarding&status=paused", lambda: workflow_runs_page(service="Onboarding", status="paused")),
        ("status counts, every service", lambda: workflow_run_status_counts()),
        ("status counts, service=Onboarding", lambda: workflow_run_status_counts(service="Onboarding")),
        ("GET /workflows/", lambda: client.get("/workflows/")),  # type: ignore[attr-defined]
        ("GET /workflows/?status=paused", lambda: client.get("/workflows/?status=paused")),  # type: ignore[attr-defined]
        ("GET /workflows/Signup/wf-102/", lambda: client.get("/workflows/Signup/wf-102/")),  # type: ignore[attr-defined]
    ]
    for name, func in rows:
        median, p95 = timed(func, reps)
        say(f"  {name:42} median {median * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--others", type=int, default=700_000, help="ordinary invocations besides the workflows'")
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args(argv)

    scratch = ScratchDatabase.create("workflows")
    try:
        os.environ["DATABASE_URL"] = scratch.url
        os.environ["LOG_LEVEL"] = "WARNING"
        import django

        django.setup()
        from django.conf import settings
        from django.contrib.auth.models import User
        from django.core.management import call_command
        from django.db import connection
        from django.test import Client

        from demo.stack import free_port

        settings.RESTATE_ADMIN_URL = f"http://127.0.0.1:{free_port()}"  # nobody listens: the state read fails fast
        call_command("migrate", verbosity=0)
        client = Client(HTTP_HOST="localhost")
        client.force_login(User.objects.create_user("bench"))
        say(f"Workflows benchmark ({os.cpu_count()} CPUs; server time in-process)")
        started = time.perf_counter()
        fill(args.runs, args.others)
        say(f"filled in {time.perf_counter() - started:.0f} s: {counts()}")
        measure(args.reps, client, "with the partial indexes of 0015")
        with connection.cursor() as cursor:
            for name in INDEXES:
                cursor.execute(f"DROP INDEX {name}")
            cursor.execute("ANALYZE invocations_invocation")
        measure(args.reps, client, f"baseline: without them ({', '.join(INDEXES)} dropped)")
        from django.db import connections

        connections.close_all()
    finally:
        scratch.drop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
