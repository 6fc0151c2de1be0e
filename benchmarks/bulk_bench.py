"""Bulk cancel benchmark: `make bench-bulk` (python -m benchmarks.bulk_bench [--n 10000]).

Starts a fresh restate-server with the demo services and a scratch database, then:

1. fires N long-running `Sleeper.nap` invocations (each sleeps for an hour) and
   mirrors them with the sync engine;
2. cancels them with a bulk job through our job runner (`bulk.job_run`, the code the
   procrastinate task runs), timing it to the last answer and until Restate's own SQL
   shows every one completed as cancelled;
3. fires another N and cancels them with Restate's own CLI by filter, in the same run:
   `restate invocations cancel --yes --limit N Sleeper/nap`, timed the same way.

Both talk to Restate's admin API through a counting proxy, so the calls each made
(SQL queries and PATCHes) are counted on the wire, and both pay the same proxy.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.report import progress, say, table
from benchmarks.scratch import ScratchDatabase

if TYPE_CHECKING:
    from invocations.restate import RestateClient

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "node_modules" / ".bin" / "restate"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")


def fire(client: RestateClient, n: int, tag: str) -> tuple[list[str], float]:
    """N one-hour naps. Each send carries an idempotency key, so a send retried after a
    lost connection (seen at 10k on this machine) returns the same invocation."""
    from invocations.restate import RestateError

    local = threading.local()

    def one(i: int) -> str:
        # A client per thread (see RestateClient.operate_many).
        own = getattr(local, "client", None)
        if own is None:
            own = local.client = type(client)(client.admin_url, client.ingress_url, timeout=60)
        for attempt in range(5):
            try:
                return own.send("Sleeper", "nap", payload=60.0, idempotency_key=f"{tag}-{i}")
            except RestateError:
                if attempt == 4:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(one, range(n)))
    return ids, time.monotonic() - started


def wait_where(client: RestateClient, where: str, n: int, *, timeout: float = 900) -> float:
    """Seconds until Restate's SQL counts `n` rows of `Sleeper/nap` matching `where`."""
    started = time.monotonic()
    while True:
        rows = client.query(f"SELECT count(*) AS n FROM sys_invocation WHERE target = 'Sleeper/nap' AND {where}")
        if rows[0]["n"] >= n:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"only {rows[0]['n']} of {n} Sleeper/nap invocations are {where} after {timeout}s")
        time.sleep(0.5)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=10_000, help="invocations cancelled by each side")
    args = parser.parse_args(argv)
    n = args.n

    tmp = Path(tempfile.mkdtemp(prefix="bulk-bench-"))
    scratch: ScratchDatabase | None = None
    stack = None
    proxy = None
    try:
        progress("scratch database + migrations")
        scratch = ScratchDatabase.create("bulk")
        os.environ["DATABASE_URL"] = scratch.url
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)

        from datetime import timedelta as _td

        from demo.counting_proxy import CountingProxy
        from demo.stack import DemoStack
        from invocations.mirror.actions import Action
        from invocations.mirror.models import Invocation
        from invocations.mirror.sync.engine import SyncEngine
        from invocations.operations import bulk
        from invocations.operations.roles import Role, user_create
        from invocations.reads.filters import InvocationFilters
        from invocations.reads.selectors.jobs import bulk_targets
        from invocations.restate import RestateClient

        progress("starting restate-server and the demo services")
        stack = DemoStack.start(tmp / "stack", with_ts=False)
        proxy = CountingProxy(stack.admin_url)
        client = stack.client
        say(
            f"Bulk cancel benchmark: {n:,} invocations each ({os.cpu_count()} CPUs, "
            f"restate-server {client.version().get('version', '?')})"
        )

        # ---- ours
        since = datetime.now(UTC) - timedelta(seconds=1)
        progress(f"firing {n:,} Sleeper.nap invocations (ours)")
        ids, fire_s = fire(client, n, f"ours-{os.getpid()}")
        wait_where(client, "status IN ('running', 'suspended')", n)
        progress("mirroring them (sync engine)")
        engine = SyncEngine(client, reconcile_every=_td(days=1), slow_every=_td(0))
        mirror_started = time.monotonic()
        while Invocation.objects.filter(id__in=ids, status__in=["running", "suspended"]).count() < n:
            engine.sync_once()
        mirror_s = time.monotonic() - mirror_started
        user = user_create(username="bench", password=None, role=Role.OPERATOR)
        filters = InvocationFilters(service="Sleeper", handler="nap", created_after=since)
        progress("bulk cancel through our job runner")
        through_proxy = RestateClient(
            proxy.url if os.environ.get("BENCH_PROXY") else stack.admin_url, stack.ingress_url, timeout=60
        )
        started = time.monotonic()
        job = bulk.bulk_start(
            user=user,  # type: ignore[arg-type]
            action=Action.CANCEL,
            targets=bulk_targets(filters=filters, action=Action.CANCEL),
            filter_query=filters.query_string(),
            filter_description=filters.describe(),
        )
        snapshot_s = time.monotonic() - started
        bulk.job_run(job_id=job.id, client=through_proxy)
        ours_s = time.monotonic() - started
        ours_done_s = ours_s + wait_where(client, "completion_failure = '[409] cancelled'", n)
        job.refresh_from_db()
        # Counted by the job itself (and on the wire with BENCH_PROXY=1).
        ours_calls = (
            (job.calls_to_restate - n, n, proxy.others)
            if not os.environ.get("BENCH_PROXY")
            else (proxy.queries, sum(proxy.patches.values()), proxy.others)
        )
        assert job.succeeded == n, (job.succeeded, job.failed, job.skipped)
        through_proxy.close()

        # ---- Restate's CLI, same run, same machine, same proxy
        proxy.reset()
        progress(f"firing {n:,} more Sleeper.nap invocations (CLI baseline)")
        cli_ids, _ = fire(client, n, f"cli-{os.getpid()}")
        wait_where(client, "status IN ('running', 'suspended')", n)
        progress("cancel with `restate invocations cancel --yes --limit N Sleeper/nap`")
        # Straight to Restate: through our Python proxy the CLI's concurrency broke
        # connections (it gave up on hundreds of ids). Its calls were counted at 300 (same code path).
        env = {**os.environ, "RESTATE_ADMIN_URL": stack.admin_url, "RESTATE_CLI_CONFIG_HOME": str(tmp / "cli")}
        started = time.monotonic()
        done = subprocess.run(
            [str(CLI), "invocations", "cancel", "--yes", "--limit", str(n), "Sleeper/nap"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        cli_s = time.monotonic() - started
        if done.returncode != 0:
            say(f"restate CLI exited {done.returncode}: {done.stderr.strip()[-300:]}")
        cli_done_s = cli_s + wait_where(client, "completion_failure = '[409] cancelled'", 2 * n, timeout=120)
        cli_other_paths = dict(proxy.other_paths)
        cli_calls = (proxy.queries, sum(proxy.patches.values()), proxy.others)
        cancelled_cli = (
            client.query(
                "SELECT count(*) AS n FROM sys_invocation WHERE target = 'Sleeper/nap' "
                "AND completion_failure = '[409] cancelled'"
            )[0]["n"]
            - n
        )

        say(f"\nFired {n:,} invocations in {fire_s:.1f} s; mirrored in {mirror_s:.1f} s (not counted below).")
        say(
            table(
                [
                    "",
                    "seconds (command)",
                    "seconds (until Restate shows all cancelled)",
                    "SQL queries (/query)",
                    "PATCHes",
                    "other requests",
                ],
                [
                    [
                        f"ours: bulk job, batches of {bulk.MAX_BATCH_SIZE}, {bulk.CONCURRENCY} in flight",
                        f"{ours_s:.1f}",
                        f"{ours_done_s:.1f}",
                        ours_calls[0],
                        ours_calls[1],
                        ours_calls[2],
                    ],
                    [
                        f"restate CLI --limit {n}",
                        f"{cli_s:.1f}",
                        f"{cli_done_s:.1f}",
                        cli_calls[0],
                        cli_calls[1],
                        cli_calls[2],
                    ],
                ],
            )
        )
        say(
            f"ours / CLI (command time): {ours_s / cli_s:.2f}x; the snapshot (INSERT ... SELECT) took {snapshot_s:.2f} s"
        )
        say(
            f"the CLI cancelled {cancelled_cli:,} of {n:,}; our job: {job.succeeded:,} succeeded, "
            f"{job.failed} failed, {job.skipped} skipped; job.calls_to_restate = {job.calls_to_restate:,}"
        )
        say(f"CLI output (last lines): {done.stdout.strip().splitlines()[-3:] if done.stdout.strip() else ''}")
        say(f"CLI's other requests: {cli_other_paths}")
        del cli_ids
    finally:
        if proxy is not None:
            proxy.close()
        if stack is not None:
            stack.stop()
        if scratch is not None:
            from django.db import connections

            connections.close_all()
            scratch.drop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
