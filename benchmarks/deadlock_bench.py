"""Deadlock detection at 100,000 waiting invocations (generated), on a scratch database.

One detection pass is what the sync loop runs after a step that changed something:
read the wait-for graph from our copy, find its cycles, store the difference. The
target (issue 8) is under 1 s at 100,000 waiting invocations, with a cost linear in
the number of waiting invocations, not in the size of our copy. Printed:

- one pass at 10,000 / 50,000 / 100,000 waiting invocations (the same shapes scaled),
  split into read / detect / write, and the cost per 1,000 waiting invocations (flat =
  linear); the baseline, measured in the same run, is a bare read of the same rows
  (the three SELECTs with nothing computed or written);
- the 100,000 case again with 400,000 completed invocations (and their call edges)
  added to the table: the cost must not follow them;
- a pass that finds one cycle broken (its member completed), as after a cancel.

Shapes: chains of request-response calls (each caller waits on its callee, the leaf
runs), object keys with ten calls queued behind a running holder each, and twenty
deadlocks (ten across two keys, ten across three).

`make bench-deadlocks`
"""

from __future__ import annotations

import os
import statistics
import time

from benchmarks.report import progress, say, table
from benchmarks.scratch import ScratchDatabase

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

DEADLOCKS_2, DEADLOCKS_3 = 10, 10
REPEATS = 5


def _generate(cursor: object, *, waiting: int, completed: int, tag: str) -> None:
    """Insert `waiting` waiting invocations (half in call chains, half queued) plus the
    leaves and holders they wait on, and `completed` finished ones with their edges."""
    from invocations.mirror.models import Invocation, InvocationEdge, ObjectLock, QueuedInvocation

    inv, edge = Invocation._meta.db_table, InvocationEdge._meta.db_table
    queue, lock = QueuedInvocation._meta.db_table, ObjectLock._meta.db_table
    chains = waiting // 2 // 4  # chains of 5: four callers waiting, one leaf running
    keys = waiting // 2 // 10  # ten queued behind each holder
    columns = (
        "id, target, service_name, service_key, handler_name, service_type, status, invoked_by, created_at, "
        "modified_at, journal_size, retry_count, first_seen_at, synced_at, journal_synced_size"
    )

    def invocations(select: str) -> None:
        cursor.execute(f"INSERT INTO {inv} ({columns}) {select}")  # type: ignore[attr-defined]

    # Call chains: c<tag>_<chain>_<depth>; depth 0..3 wait on depth+1; depth 4 runs.
    invocations(
        f"SELECT 'c{tag}_' || c || '_' || d, 'Svc/h', 'Svc', NULL, 'h', 'service', "
        "CASE WHEN d = 4 THEN 'running' ELSE 'suspended' END, 'service', now() - interval '1 hour' + d * interval '1 s', "
        f"now(), 2, 0, now(), now(), 2 FROM generate_series(1, {chains}) c, generate_series(0, 4) d"
    )
    cursor.execute(  # type: ignore[attr-defined]
        f"INSERT INTO {edge} (caller_id, journal_index, caller_service, caller_handler, callee_id, kind, "
        "target_service, target_key, target_handler, created_at) "
        f"SELECT 'c{tag}_' || c || '_' || d, 1, 'Svc', 'h', 'c{tag}_' || c || '_' || (d + 1), 'call', 'Svc', NULL, 'h', "
        f"now() - interval '1 hour' FROM generate_series(1, {chains}) c, generate_series(0, 3) d"
    )
    # Object keys: a running holder h<tag>_<k> and ten pending q<tag>_<k>_<n> in its inbox.
    invocations(
        f"SELECT 'h{tag}_' || k, 'Obj/' || k || '/run', 'Obj', '{tag}' || k, 'run', 'virtual_object', 'running', "
        f"'ingress', now() - interval '2 hour', now(), 2, 0, now(), now(), 2 FROM generate_series(1, {keys}) k"
    )
    invocations(
        f"SELECT 'q{tag}_' || k || '_' || n, 'Obj/' || k || '/run', 'Obj', '{tag}' || k, 'run', 'virtual_object', "
        "'pending', 'ingress', now() - interval '1 hour' + n * interval '1 s', now(), 0, 0, now(), now(), 0 "
        f"FROM generate_series(1, {keys}) k, generate_series(1, 10) n"
    )
    cursor.execute(  # type: ignore[attr-defined]
        f"INSERT INTO {lock} (service_name, service_key, invocation_id) "
        f"SELECT 'Obj', '{tag}' || k, 'h{tag}_' || k FROM generate_series(1, {keys}) k"
    )
    cursor.execute(  # type: ignore[attr-defined]
        f"INSERT INTO {queue} (invocation_id, service_name, service_key, sequence_number, created_at) "
        f"SELECT 'q{tag}_' || k || '_' || n, 'Obj', '{tag}' || k, n, now() - interval '1 hour' + n * interval '1 s' "
        f"FROM generate_series(1, {keys}) k, generate_series(1, 10) n"
    )
    # Deadlocks: holder a_i of A/i calls B/i (b2_i, queued behind b_i, who calls A/i: a2_i,
    # queued behind a_i); the three-key ones go through C as well.
    for i in range(DEADLOCKS_2 + DEADLOCKS_3):
        ring = ["A", "B"] if i < DEADLOCKS_2 else ["A", "B", "C"]
        for n, svc in enumerate(ring):
            nxt = ring[(n + 1) % len(ring)]
            holder, queued = f"d{tag}_{i}_{svc}", f"d{tag}_{i}_{nxt}_q"
            for inv_id, service, status in ((holder, svc, "suspended"), (queued, nxt, "pending")):
                invocations(
                    f"SELECT '{inv_id}', '{service}/{tag}{i}/hop', '{service}', '{tag}{i}', 'hop', 'virtual_object', "
                    f"'{status}', 'service', now() - interval '5 min' + {n} * interval '1 s', now(), 2, 0, now(), now(), 2"
                )
            cursor.execute(  # type: ignore[attr-defined]
                f"INSERT INTO {edge} (caller_id, journal_index, caller_service, caller_handler, callee_id, kind, "
                f"target_service, target_key, target_handler, created_at) VALUES ('{holder}', 1, '{svc}', 'hop', "
                f"'{queued}', 'call', '{nxt}', '{tag}{i}', 'hop', now() - interval '4 min')"
            )
            cursor.execute(  # type: ignore[attr-defined]
                f"INSERT INTO {lock} (service_name, service_key, invocation_id) VALUES ('{svc}', '{tag}{i}', '{holder}')"
            )
            cursor.execute(  # type: ignore[attr-defined]
                f"INSERT INTO {queue} (invocation_id, service_name, service_key, sequence_number, created_at) "
                f"VALUES ('{queued}', '{nxt}', '{tag}{i}', 1, now() - interval '4 min')"
            )
    if completed:
        invocations(
            f"SELECT 'x{tag}_' || n, 'Svc/h', 'Svc', NULL, 'h', 'service', 'completed', 'service', "
            "now() - interval '1 day', now(), 2, 0, now(), now(), 2 "
            f"FROM generate_series(1, {completed}) n"
        )
        cursor.execute(  # type: ignore[attr-defined]
            f"INSERT INTO {edge} (caller_id, journal_index, caller_service, caller_handler, callee_id, kind, "
            "target_service, target_key, target_handler, created_at) "
            f"SELECT 'x{tag}_' || n, 1, 'Svc', 'h', 'x{tag}_' || (n + 1), 'call', 'Svc', NULL, 'h', now() - interval '1 day' "
            f"FROM generate_series(1, {completed - 1}) n"
        )
    cursor.execute(f"ANALYZE {inv}; ANALYZE {edge}; ANALYZE {queue}; ANALYZE {lock}")  # type: ignore[attr-defined]


def _clear(cursor: object) -> None:
    from invocations.mirror.models import (
        Deadlock,
        DeadlockMember,
        Invocation,
        InvocationEdge,
        ObjectLock,
        QueuedInvocation,
    )

    tables = [
        m._meta.db_table for m in (Invocation, InvocationEdge, ObjectLock, QueuedInvocation, Deadlock, DeadlockMember)
    ]
    cursor.execute(f"TRUNCATE {', '.join(tables)}")  # type: ignore[attr-defined]


def _bare_read_s() -> float:
    """The baseline: the same reads, nothing computed or written."""
    from invocations.analysis.deadlocks import wait_graph_rows

    t0 = time.perf_counter()
    wait_graph_rows()
    return time.perf_counter() - t0


def _passes() -> tuple[list[object], list[float]]:
    from invocations.analysis.deadlocks import deadlocks_refresh

    reports, bare = [], []
    for _ in range(REPEATS):
        reports.append(deadlocks_refresh())
        bare.append(_bare_read_s())
    return reports, bare


def main() -> int:
    scratch = None
    try:
        progress("scratch database + migrations")
        scratch = ScratchDatabase.create("deadlocks")
        os.environ["DATABASE_URL"] = scratch.url
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        call_command("migrate", verbosity=0)
        from invocations.analysis.deadlocks import deadlocks_refresh
        from invocations.mirror.models import Deadlock, Invocation

        say(
            f"Deadlock detection benchmark ({os.cpu_count()} CPUs); one pass = read + detect + write, median of {REPEATS}"
        )
        rows = []
        per_1000 = {}
        for waiting, completed in ((10_000, 0), (50_000, 0), (100_000, 0), (100_000, 400_000)):
            with connection.cursor() as cursor:
                _clear(cursor)
                progress(f"generating {waiting:,} waiting + {completed:,} completed invocations")
                _generate(cursor, waiting=waiting, completed=completed, tag="t")
            first = deadlocks_refresh()  # opens the twenty cycles
            reports, bare = _passes()
            med = statistics.median(r.duration_s for r in reports)  # type: ignore[attr-defined]
            mid = sorted(reports, key=lambda r: r.duration_s)[len(reports) // 2]  # type: ignore[attr-defined]
            base = statistics.median(bare)
            per_1000[(waiting, completed)] = med / mid.waiting * 1000  # type: ignore[attr-defined]
            rows.append(
                [
                    f"{waiting:,} waiting" + (f" + {completed:,} completed" if completed else ""),
                    f"{mid.waiting:,}",  # type: ignore[attr-defined]
                    first.cycles,
                    f"{mid.read_s * 1000:.0f}",  # type: ignore[attr-defined]
                    f"{mid.detect_s * 1000:.0f}",  # type: ignore[attr-defined]
                    f"{mid.write_s * 1000:.0f}",  # type: ignore[attr-defined]
                    f"{med * 1000:.0f}",
                    f"{per_1000[(waiting, completed)] * 1000:.2f}",
                    f"{base * 1000:.0f}",
                    f"{med / base:.2f}x",
                ]
            )
        say(
            table(
                [
                    "copy",
                    "in graph",
                    "cycles",
                    "read ms",
                    "detect ms",
                    "write ms",
                    "pass ms",
                    "ms / 1k waiting",
                    "bare read ms",
                    "pass / bare read",
                ],
                rows,
            )
        )
        # A cycle broken: one member completed (as after a cancel), then a pass.
        victim = Deadlock.objects.filter(resolved_at__isnull=True).first()
        assert victim is not None
        member = victim.members.order_by("position").first()
        assert member is not None
        Invocation.objects.filter(id=member.invocation_id).update(status="completed")
        broken = deadlocks_refresh()
        say(
            f"\nA cycle broken (one member completed), 100,000 waiting + 400,000 completed: "
            f"{broken.duration_s * 1000:.0f} ms, {len(broken.resolved)} marked broken, {broken.cycles} left"
        )
        worst = max(statistics.median([v]) for v in per_1000.values())
        best = min(per_1000.values())
        say(
            f"Linear: cost per 1,000 waiting invocations from {best * 1000:.2f} to {worst * 1000:.2f} ms "
            f"across 10k-100k ({worst / best:.2f}x); target < 1 s at 100,000 waiting."
        )
    finally:
        if scratch is not None:
            from django.db import connections

            connections.close_all()
            scratch.drop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
