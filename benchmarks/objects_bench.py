"""Objects benchmark: `make bench-objects` (python -m benchmarks.objects_bench).

/objects/ ranks every key with a lock holder or a queue, so its cost grows with the
number of busy keys, not with the invocation table. This fills a scratch database
(dropped at the end) with K locked keys (1 in 7 of a second service), 2K queued calls
on 1.5K keys (so K/2 keys queue with nobody holding them) and 4K invocations, for
each K of --keys, and times, median and p95 over --reps:

- the selector `busy_keys_page` (first page, page 100, filtered by the smaller service);
- the whole page `/objects/` and a key's page `/objects/<service>/<key>/` (Django's test
  Client in-process, logged in; the key's state read from Restate is left out: it is
  pointed at a closed port and answers at once).

Baseline: the same at --baseline keys, in the same run. Past RANK_CAP busy keys the
page orders by queue length alone; the report says which order each size got.
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
USERNAME = "bench"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


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


def fill(keys: int) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE invocations_invocation, invocations_objectlock, invocations_queuedinvocation")
        # Invocation g works on key g mod 1.5K; the first K run (and hold their key), the next
        # 2K are pending (queued), the rest completed.
        cursor.execute(
            "INSERT INTO invocations_invocation (id, target, service_name, service_key, handler_name, service_type, "
            "status, invoked_by, created_at, modified_at, first_seen_at, synced_at, journal_size, retry_count, "
            "journal_synced_size, inboxed_at, running_at) "
            "SELECT 'inv_1b' || lpad(g::text, 30, '0'), 'Worker/k/work', "
            "CASE WHEN (g %% %s) %% 7 = 0 THEN 'Other' ELSE 'Worker' END, 'k' || (g %% %s), 'work', 'virtual_object', "
            "CASE WHEN g < %s THEN 'running' WHEN g < %s THEN 'pending' ELSE 'completed' END, 'ingress', "
            "%s + g * interval '1 ms', %s, %s, %s, 0, 1, 0, %s + g * interval '1 ms', %s + g * interval '1 ms' "
            "FROM generate_series(0, %s) g",
            [keys * 3 // 2, keys * 3 // 2, keys, 3 * keys, T0, T0, T0, T0, T0, T0, 4 * keys - 1],
        )
        cursor.execute(
            "INSERT INTO invocations_objectlock (service_name, service_key, invocation_id) "
            "SELECT service_name, service_key, id FROM invocations_invocation WHERE status = 'running'"
        )
        cursor.execute(
            "INSERT INTO invocations_queuedinvocation (invocation_id, service_name, service_key, sequence_number) "
            "SELECT id, service_name, service_key, row_number() OVER (ORDER BY created_at) "
            "FROM invocations_invocation WHERE status = 'pending'"
        )
        cursor.execute("ANALYZE")


def measure(keys: int, reps: int, client: object) -> None:
    from invocations.reads.selectors.objects import RANK_CAP, busy_keys_page

    fill(keys)
    first = busy_keys_page()
    order = "ranked by waits" if first.ranked else f"by queue length alone (past RANK_CAP={RANK_CAP:,})"
    say(f"\n{keys:,} locked keys, {first.total:,} busy keys, {2 * keys:,} queued calls: {order}")
    rows = [
        ("busy_keys_page, first page", lambda: busy_keys_page()),
        ("busy_keys_page, page 100", lambda: busy_keys_page(page=100)),
        ("busy_keys_page, service=Other", lambda: busy_keys_page(service="Other")),
        ("GET /objects/", lambda: client.get("/objects/")),  # type: ignore[attr-defined]
        ("GET /objects/?service=Other", lambda: client.get("/objects/?service=Other")),  # type: ignore[attr-defined]
        ("GET /objects/Worker/k1/", lambda: client.get("/objects/Worker/k1/")),  # type: ignore[attr-defined]
    ]
    for label, func in rows:
        median, p95 = timed(func, reps)
        say(f"  {label:34} median {median * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--keys", type=int, nargs="+", default=[5_000, 50_000], help="locked keys per measurement")
    parser.add_argument("--baseline", type=int, default=500, help="locked keys for the baseline")
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args(argv)

    scratch = ScratchDatabase.create("objects")
    try:
        os.environ["DATABASE_URL"] = scratch.url
        os.environ["LOG_LEVEL"] = "WARNING"
        import django

        django.setup()
        from django.conf import settings
        from django.contrib.auth.models import User
        from django.core.management import call_command
        from django.test import Client

        from demo.stack import free_port

        settings.RESTATE_ADMIN_URL = f"http://127.0.0.1:{free_port()}"  # nobody listens: the state read fails fast
        call_command("migrate", verbosity=0)
        client = Client(HTTP_HOST="localhost")
        client.force_login(User.objects.create_user(USERNAME))
        say(f"Objects benchmark ({os.cpu_count()} CPUs; server time in-process)")
        for keys in [args.baseline, *args.keys]:
            measure(keys, args.reps, client)
        from django.db import connections

        connections.close_all()
    finally:
        scratch.drop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
