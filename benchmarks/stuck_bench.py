"""/stuck/ at scale: `python -m benchmarks.stuck_bench [--count 1000000] [--stuck 100000]`.

In a scratch database (dropped at the end): `manage.py generate_invocations --count N`,
then `--stuck` of its rows made unfinished in the mix an incident has (suspended and
running ones with journals whose open waits are calls, sleeps, promises or none,
backing-off ones with error codes, queued ones on object keys with their holders,
scheduled, paused, ready) and a few stored deadlocks. Measured in-process, median and
p95 over `--reps` rounds: the /stuck/ page (view, queries, template), its live fragment,
the grouping alone, the list links it hands out (`waiting=` and `error_code=`), and a
detail panel; baseline: a bare `GROUP BY status` count over the same rows, the least
any per-reason page must read. EXPLAIN ANALYZE of the grouped queries is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import time
from collections.abc import Callable, Sequence

from benchmarks.scratch import ScratchDatabase

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")


def say(text: str) -> None:
    print(text, flush=True)


def timed(func: Callable[[], object], reps: int) -> tuple[float, float]:
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        func()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return statistics.median(samples) * 1000, samples[min(len(samples) - 1, int(len(samples) * 0.95))] * 1000


# Make `stuck` rows unfinished, with journals for the running and suspended ones. Every
# choice is a hash of the row number, so the same seed gives the same incident.
STUCK_SQL = [
    "CREATE TEMP TABLE pick AS SELECT id, row_number() OVER (ORDER BY md5(id)) AS n FROM invocations_invocation "
    "WHERE id LIKE 'inv\\_1gen%%'",
    "DELETE FROM pick WHERE n > %(stuck)s",
    "CREATE INDEX ON pick (id)",
    "ANALYZE pick",
    # 40% suspended, 10% running, 15% backing-off, 10% scheduled, 15% pending, 7% paused, 3% ready.
    "UPDATE invocations_invocation i SET status = CASE WHEN p.n %% 100 < 40 THEN 'suspended' "
    "WHEN p.n %% 100 < 50 THEN 'running' WHEN p.n %% 100 < 65 THEN 'backing-off' WHEN p.n %% 100 < 75 THEN 'scheduled' "
    "WHEN p.n %% 100 < 90 THEN 'pending' WHEN p.n %% 100 < 97 THEN 'paused' ELSE 'ready' END, "
    "completed_at = NULL, completion_result = NULL, completion_failure = NULL, gone_from_restate_at = NULL, "
    "retry_count = 1 + p.n %% 7, next_retry_at = now() + (p.n %% 60) * interval '1 second', "
    "last_failure = 'boom', last_failure_error_code = (ARRAY['RT0007', '500', 'RT0001'])[1 + p.n %% 3], "
    "scheduled_start_at = now() + (p.n %% 600) * interval '1 minute', "
    "inboxed_at = created_at, journal_size = 3, journal_synced_size = 3 "
    "FROM pick p WHERE p.id = i.id",
    # Queued ones wait on 2,000 keys of one object; each key has a holder among the running ones.
    "UPDATE invocations_invocation SET service_name = 'Cart', handler_name = 'checkout', "
    "service_key = 'cart-' || (abs(hashtext(id)) %% 2000)::text, service_type = 'virtual_object' "
    "WHERE status = 'pending' AND id LIKE 'inv\\_1gen%%'",
    "INSERT INTO invocations_queuedinvocation (invocation_id, service_name, service_key, sequence_number, created_at) "
    "SELECT id, service_name, service_key, row_number() OVER (PARTITION BY service_key ORDER BY created_at), created_at "
    "FROM invocations_invocation WHERE status = 'pending' AND id LIKE 'inv\\_1gen%%'",
    "INSERT INTO invocations_objectlock (service_name, service_key, invocation_id) "
    "SELECT 'Cart', 'cart-' || k::text, (SELECT id FROM invocations_invocation WHERE status = 'running' "
    "AND id LIKE 'inv\\_1gen%%' ORDER BY id OFFSET k LIMIT 1) FROM generate_series(0, 1999) k",
    # Journals: Input, then one wait per kind in turn (the fourth kind: a sleep already done).
    "INSERT INTO invocations_journalentry (invocation_id, index, entry_type, name, appended_at, entry, entry_lite) "
    "SELECT i.id, 0, 'Command: Input', '', i.created_at, '{}'::jsonb, '{\"Command\": {\"Input\": {}}}'::jsonb "
    "FROM invocations_invocation i JOIN pick p ON p.id = i.id WHERE i.status IN ('running', 'suspended')",
    "INSERT INTO invocations_journalentry (invocation_id, index, entry_type, name, appended_at, entry, entry_lite) "
    "SELECT i.id, 1, CASE p.n %% 4 WHEN 0 THEN 'Command: Call' WHEN 1 THEN 'Command: Sleep' "
    "WHEN 2 THEN 'Command: GetPromise' ELSE 'Command: Sleep' END, '', i.created_at, '{}'::jsonb, "
    "CASE p.n %% 4 WHEN 0 THEN jsonb_build_object('Command', jsonb_build_object('Call', jsonb_build_object("
    '\'invocation_id\', i.id, \'invocation_target\', \'{"Service": {"name": "Greeter", "handler": "greet"}}\'::jsonb, '
    "'invocation_id_completion_id', 1, 'result_completion_id', 2))) "
    'WHEN 2 THEN \'{"Command": {"GetPromise": {"key": "confirmed", "completion_id": 1}}}\'::jsonb '
    'ELSE \'{"Command": {"Sleep": {"wake_up_time": 1900000000000, "completion_id": 1}}}\'::jsonb END '
    "FROM invocations_invocation i JOIN pick p ON p.id = i.id WHERE i.status IN ('running', 'suspended')",
    "INSERT INTO invocations_journalentry (invocation_id, index, entry_type, name, appended_at, entry, entry_lite) "
    "SELECT i.id, 2, CASE p.n %% 4 WHEN 0 THEN 'Notification: CallInvocationId' ELSE 'Notification: Sleep' END, "
    "'', i.created_at, '{}'::jsonb, CASE p.n %% 4 WHEN 0 THEN "
    '\'{"Notification": {"id": {"CompletionId": 1}}}\'::jsonb '
    'ELSE \'{"Notification": {"id": {"CompletionId": 1}}}\'::jsonb END '
    "FROM invocations_invocation i JOIN pick p ON p.id = i.id "
    "WHERE i.status IN ('running', 'suspended') AND p.n %% 4 IN (0, 3)",
    # Every other invocation has a journal too (as in Restate: at least its Input), so the
    # planner sees a journal table of realistic size: several entries per invocation.
    "INSERT INTO invocations_journalentry (invocation_id, index, entry_type, name, appended_at, entry, entry_lite) "
    "SELECT i.id, k, CASE k WHEN 0 THEN 'Command: Input' WHEN 1 THEN 'Command: Call' "
    "WHEN 2 THEN 'Notification: CallInvocationId' WHEN 3 THEN 'Notification: Call' ELSE 'Command: Output' END, "
    "'', i.created_at, '{}'::jsonb, CASE k WHEN 1 THEN '{\"Command\": {\"Call\": {\"result_completion_id\": 2}}}'::jsonb "
    'WHEN 3 THEN \'{"Notification": {"id": {"CompletionId": 2}}}\'::jsonb ELSE \'{}\'::jsonb END '
    "FROM invocations_invocation i CROSS JOIN generate_series(0, 4) k "
    "WHERE i.status = 'completed' AND i.id LIKE 'inv\\_1gen%%'",
    # Five current deadlocks of three members each (taken from the suspended ones).
    "INSERT INTO invocations_deadlock (id, keys, suggested_id, since, detected_at, from_truncated) "
    "SELECT 'bench' || k, '[]'::jsonb, '', now(), now(), false FROM generate_series(1, 5) k",
    "INSERT INTO invocations_deadlockmember (deadlock_id, position, invocation_id) "
    "SELECT 'bench' || (1 + r / 3), r %% 3, id FROM (SELECT id, row_number() OVER (ORDER BY id) - 1 AS r "
    "FROM invocations_invocation WHERE status = 'suspended' AND id LIKE 'inv\\_1gen%%' ORDER BY id LIMIT 15) m",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="invocations generated")
    parser.add_argument("--stuck", type=int, default=100_000, help="of them, unfinished")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database (its name is printed)")
    parser.add_argument("--reuse", help="a database kept by --keep: migrate it and measure again, no generation")
    args = parser.parse_args(argv)
    if args.reuse:
        args.keep = True
        scratch = ScratchDatabase.create("stuck")
        scratch.drop()
        scratch = ScratchDatabase(scratch.server_url, args.reuse)
    else:
        scratch = ScratchDatabase.create("stuck")
    try:
        os.environ["DATABASE_URL"] = scratch.url
        os.environ["LOG_LEVEL"] = "WARNING"
        import django

        django.setup()
        from django.contrib.auth.models import User
        from django.core.management import call_command
        from django.db import connection
        from django.test import Client

        from invocations.live import fragments
        from invocations.mirror.models import Invocation
        from invocations.reads.presenters.stuck import invocation_stuck, stuck_context
        from invocations.reads.selectors import stuck as selectors
        from invocations.reads.selectors.stuck import ReasonKind

        call_command("migrate", verbosity=0)
        t0 = time.monotonic()
        if not args.reuse:
            say(f"generating {args.count:,} invocations, {args.stuck:,} of them unfinished")
            call_command("generate_invocations", count=args.count, big_tree=0, stdout=io.StringIO())
        with connection.cursor() as cursor:
            if not args.reuse:
                for sql in STUCK_SQL:
                    cursor.execute(sql, {"stuck": args.stuck})
            cursor.execute("VACUUM ANALYZE")
            cursor.execute("SELECT status, count(*) FROM invocations_invocation GROUP BY 1 ORDER BY 1")
            statuses = cursor.fetchall()
            cursor.execute("SELECT count(*) FROM invocations_journalentry")
            journal = cursor.fetchone()[0]  # type: ignore[index]
        say(f"  {time.monotonic() - t0:.0f} s; statuses {dict(statuses)}; {journal:,} journal entries")

        user, _ = User.objects.get_or_create(username="bench")
        client = Client(HTTP_HOST="localhost")
        client.force_login(user)

        def count_by_status() -> None:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT status, count(*) FROM invocations_invocation WHERE status <> 'completed' GROUP BY 1"
                )
                cursor.fetchall()

        def page() -> None:
            response = client.get("/stuck/")
            assert response.status_code == 200

        waiting = Invocation.objects.filter(status="suspended").values_list("id", flat=True)[1000]
        context = stuck_context()
        links = {section.reason: section.rows[0][1] for section in context["sections"] if section.rows}
        sleep_link = links[ReasonKind.WAIT_SLEEP]
        say(f"  a /stuck/ link: {sleep_link}")
        figures = [
            ("baseline: SELECT status, count(*) ... GROUP BY status (unfinished)", count_by_status),
            ("/stuck/ page (view + queries + template)", page),
            ("stuck_overview() alone (the grouping)", selectors.stuck_overview),
            ("live fragment, a fresh render", lambda: fragments.stuck_groups(fresh_after=time.time())),
            ("list: /stuck/'s link to its oldest sleeping group", lambda: client.get(sleep_link)),
            ("list: /stuck/'s link to a backing-off group", lambda: client.get(links[ReasonKind.BACKING_OFF])),
            (
                "list ?status=suspended&waiting=sleep, unbounded",
                lambda: client.get("/invocations/?status=suspended&waiting=sleep&sort=created"),
            ),
            (
                "list ?status=suspended&waiting=none, unbounded",
                lambda: client.get("/invocations/?status=suspended&waiting=none&sort=created"),
            ),
            (
                "detail panel: invocation_stuck() of a waiting one",
                lambda: invocation_stuck(Invocation.objects.get(id=waiting)),
            ),
        ]
        say(f"\n{'figure':<62} {'median':>9} {'p95':>9}")
        for name, func in figures:
            func()  # warm
            median, p95 = timed(func, args.reps)
            say(f"{name:<62} {median:7.1f}ms {p95:7.1f}ms")

        overview = selectors.stuck_overview()
        say(
            f"\nreasons: { {r.value: t.count for r, t in overview.totals.items()} }; "
            f"classified {overview.waiting_classified:,} of {overview.waiting_total:,} running/suspended"
        )
        say("\nEXPLAIN ANALYZE of the queries behind /stuck/:")
        queries: list[str] = []
        with connection.execute_wrapper(
            lambda execute, sql, params, many, context: (
                (queries.append(sql % tuple(_literal(p) for p in (params or ()))) if params else queries.append(sql))
                or execute(sql, params, many, context)
            )
        ):
            selectors.stuck_overview()
        with connection.cursor() as cursor:
            for sql in queries:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS OFF, COSTS OFF) " + sql)
                plan = [row[0] for row in cursor.fetchall()]
                total = next((line for line in reversed(plan) if "Execution Time" in line), "")
                say(f"- {sql[:140]}...\n    {total.strip()}; top: {plan[0].strip()[:120]}")
        if args.keep:
            say(f"kept: --reuse {scratch.name}")
    finally:
        if not args.keep:
            from django.core.exceptions import ImproperlyConfigured
            from django.db import connections

            with contextlib.suppress(ImproperlyConfigured):  # Django never set up: nothing to close
                connections.close_all()
            scratch.drop()
    return 0


def _literal(value: object) -> str:
    from django.db import connection
    from psycopg.sql import Literal

    return Literal(value).as_string(connection.connection)


if __name__ == "__main__":
    raise SystemExit(main())
