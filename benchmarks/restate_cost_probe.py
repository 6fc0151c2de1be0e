"""Where mirroring spends Restate's CPU in push mode: every query the sync sends while spans
drive it is recorded, then replayed alone by kind against the same Restate (traffic stopped)
with Restate's CPU read around each kind.

    python -m benchmarks.restate_cost_probe --retained 20000 --seconds 60
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.report import say
from benchmarks.scratch import ScratchDatabase

TOKEN = "probe-token"


def kind_of(sql: str) -> str:
    table = re.search(r"FROM (\w+)", sql)
    name = table.group(1) if table else "?"
    if " id IN (" in sql:
        where = "by id"
    elif "WHERE" in sql:
        where = "filtered"
    else:
        where = "all"
    return f"{name} {where}"


def shapes(client: Any, query_batches: Any, pid: int, idle: float, *, rounds: int = 40) -> None:
    """Restate's CPU for one query of each shape the mirror sends, and of cheaper shapes it
    could send instead (sys_invocation is a view joining two tables)."""
    from benchmarks import sync_bench
    from invocations.mirror.sync import mapping
    from invocations.restate import sql_list

    ids = [row["id"] for row in client.query("SELECT id FROM sys_invocation LIMIT 5")]
    columns = ", ".join(mapping.INVOCATION_COLUMNS)
    recent = "TIMESTAMP '2200-01-01T00:00:00Z'"
    quiet = "status NOT IN ('completed', 'scheduled')"
    queries = {
        "SELECT 1 (the fixed cost)": "SELECT 1 AS one",
        "sys_invocation, 5 ids, our columns": f"SELECT {columns} FROM sys_invocation WHERE id IN {sql_list(ids)}",
        "sys_invocation, 5 ids, id only": f"SELECT id FROM sys_invocation WHERE id IN {sql_list(ids)}",
        "sys_invocation_status, 5 ids, all": f"SELECT * FROM sys_invocation_status WHERE id IN {sql_list(ids)}",
        "sys_journal, 5 ids": f"SELECT id, index, entry_type FROM sys_journal WHERE id IN {sql_list(ids)}",
        "sys_inbox, all": "SELECT id, service_name, service_key FROM sys_inbox",
        "sys_keyed_service_status, all": "SELECT service_name, service_key, invocation_id FROM sys_keyed_service_status",
        "safety-net scan, sys_invocation": f"SELECT {columns} FROM sys_invocation WHERE modified_at >= {recent} OR {quiet}",
        "same scan, sys_invocation_status": (
            f"SELECT id, modified_at FROM sys_invocation_status WHERE modified_at >= {recent} OR {quiet}"
        ),
    }
    say(f"\nOne query of each shape, {rounds} times, Restate otherwise idle:")
    say(f"{'shape':42} {'ms CPU':>8} {'ms wall':>8}")
    for name, sql in queries.items():
        c0, t0 = sync_bench.cpu_seconds(pid), time.monotonic()
        for _ in range(rounds):
            for _batch in query_batches(sql):
                pass
        wall = time.monotonic() - t0
        spent = sync_bench.cpu_seconds(pid) - c0 - idle * wall
        say(f"{name:42} {1000 * spent / rounds:8.2f} {1000 * wall / rounds:8.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--retained", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=3.0)
    args = parser.parse_args(argv)

    scratch = ScratchDatabase.create("cost_probe")
    try:
        from benchmarks import sync_bench
        from benchmarks.push_bench import generate_paced, wait_until

        sync_bench.setup_django(scratch)
        from django.db import connection

        from dashboard import embedded_redis
        from demo.stack import DemoStack, free_port, spawn, start_web, tracing_env
        from invocations.mirror.models import FeedMode, SyncState
        from invocations.mirror.sync import hints
        from invocations.mirror.sync.engine import SyncEngine
        from invocations.mirror.sync.loop import SyncLoop

        with tempfile.TemporaryDirectory(prefix="cost_probe_") as tmp:
            base = Path(tmp)
            receiver_port, redis_port = free_port(), free_port()
            redis = embedded_redis.start(base / "redis", redis_port)
            stack = DemoStack.start(
                base / "stack",
                with_ts=False,
                restate_env=tracing_env(f"http://127.0.0.1:{receiver_port}/v1/traces", token=TOKEN),
            )
            env = {
                "DATABASE_URL": scratch.url,
                "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                "RESTATE_ADMIN_URL": stack.admin_url,
                "RESTATE_INGRESS_URL": stack.ingress_url,
                "TRACES_TOKEN": TOKEN,
            }
            os.environ.update(env)
            procs: list[Any] = []
            try:
                trees = max(1, args.retained // sync_bench.TREE_SIZE)
                generate_paced(stack.client, trees)
                procs.append(start_web(receiver_port, base / "receiver.log", env))
                traffic = spawn(
                    "traffic",
                    [sys.executable, "manage.py", "demo_traffic", "--rate", str(args.rate)],
                    base / "traffic.log",
                    env,
                )
                procs.append(traffic)
                pid = sync_bench.restate_binary_pid(base / "stack" / "restate")

                recorded: list[tuple[float, str]] = []
                recording = threading.Event()
                client = stack.client
                original = client.query_batches

                def query_batches(sql: str) -> Any:
                    if recording.is_set():
                        recorded.append((time.monotonic(), sql))
                    return original(sql)

                client.query_batches = query_batches  # type: ignore[method-assign]
                engine = SyncEngine(client)
                loop = SyncLoop(engine)
                stop = threading.Event()

                def run() -> None:
                    try:
                        loop.run(wait=stop.wait, listener=hints.HintListener())
                    finally:
                        connection.close()

                thread = threading.Thread(target=run, daemon=True)
                thread.start()
                wait_until(
                    lambda: SyncState.objects.filter(feed_mode=FeedMode.PUSH).exists(), timeout=120, what="push mode"
                )
                time.sleep(10)
                c0 = sync_bench.cpu_seconds(pid)
                recording.set()
                time.sleep(args.seconds)
                recording.clear()
                on = (sync_bench.cpu_seconds(pid) - c0) / args.seconds
                stop.set()
                thread.join(30)
                c0 = sync_bench.cpu_seconds(pid)
                time.sleep(args.seconds / 2)
                off = (sync_bench.cpu_seconds(pid) - c0) / (args.seconds / 2)
                traffic.stop()
                time.sleep(3)
                c0 = sync_bench.cpu_seconds(pid)
                time.sleep(10)
                idle = (sync_bench.cpu_seconds(pid) - c0) / 10

                by_kind: dict[str, list[str]] = defaultdict(list)
                for _, sql in recorded:
                    by_kind[kind_of(sql)].append(sql)
                say(
                    f"{args.retained:,} retained, {args.seconds:.0f} s in push mode at {args.rate:g} patterns/s: "
                    f"Restate CPU {on:.1%} with the sync, {off:.1%} without ({on - off:.1%} for mirroring)"
                )
                say(f"{len(recorded)} queries; replayed alone (Restate idle at {idle:.1%}):")
                say(f"{'kind':42} {'count':>6} {'/s':>6} {'ms CPU each':>12} {'share of a core':>16}")
                total = 0.0
                for kind, sqls in sorted(by_kind.items(), key=lambda kv: -len(kv[1])):
                    c0, t0 = sync_bench.cpu_seconds(pid), time.monotonic()
                    for sql in sqls:
                        for _ in original(sql):
                            pass
                    spent = sync_bench.cpu_seconds(pid) - c0 - idle * (time.monotonic() - t0)
                    share = spent / args.seconds
                    total += share
                    say(
                        f"{kind:42} {len(sqls):6} {len(sqls) / args.seconds:6.1f} "
                        f"{1000 * spent / len(sqls):12.1f} {share:16.1%}"
                    )
                say(f"{'replayed total':42} {'':6} {'':6} {'':12} {total:16.1%}")
                shapes(client, original, pid, idle)
            finally:
                for proc in procs:
                    proc.stop()
                stack.stop()
                redis.terminate()
    finally:
        scratch.drop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
