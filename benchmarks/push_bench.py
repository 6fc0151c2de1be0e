"""Push feed benchmark: `make bench-push` (python -m benchmarks.push_bench).

Real parts only, started here: restate-server with the demo services, exporting its spans
to a Daphne serving /v1/traces; another Daphne serving the pages; Redis between them and
the sync engine, which is the real `manage.py sync_restate` process; Chromium; demo traffic
(`manage.py demo_traffic`) as steady load; a scratch database, dropped at the end.

It prints, in one run:
1. Backfill: the first sync of the retained invocations (default 100,000, journals and edges
   included), against the bare COPY-upsert of the same rows and the reads alone
   (benchmarks.sync_bench's baselines, same run, same rows).
2. Freshness in Chromium, with hints (push) and with polling only: a workflow run waits on
   its promise with its detail page open; the promise is resolved; the time from Restate's
   `completed_at` to the header saying "completed" in the page (a MutationObserver's clock,
   the same machine's). p50/p95/max over the probes.
3. Restate's CPU spent on mirroring, per mode: restate-server's CPU seconds per wall second
   with the sync process running, minus the same with it stopped (windows on, off, on; the
   receiver's state is the mode's in all three, so exports cost the same in each).
4. Spans received against invocations changed while pushing; hints dropped.
5. Rows missed: every (id, status, modified_at) of Restate against ours once traffic stops.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.report import progress, say, table
from benchmarks.scratch import ScratchDatabase

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

PASSWORD = secrets.token_urlsafe(12)
TOKEN = secrets.token_urlsafe(16)
TARGET_P95_MS = 300.0
TARGET_CPU_SHARE = 0.02  # of one core

# Resolves once the header reads "completed": the page's own clock (Date.now()).
WATCH_JS = """
() => {
  window.__completedAt = null;
  const done = () => {
    const s = document.querySelector('#inv-header .status');
    if (window.__completedAt === null && s && s.textContent.trim() === 'completed') {
      window.__completedAt = Date.now();
    }
  };
  new MutationObserver(done).observe(document.body, { subtree: true, childList: true, characterData: true });
  done();
}
"""


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def describe(values: Sequence[float]) -> str:
    if not values:
        return "no samples"
    return f"{statistics.median(values):.0f} / {quantile(values, 0.95):.0f} / {max(values):.0f}"


def wait_until(condition: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def epoch_ms(value: datetime) -> float:
    return value.timestamp() * 1000.0


# ---------------------------------------------------------------- processes


@dataclass
class Parts:
    stack: Any
    db_url: str
    redis_url: str
    receiver_port: int
    web_port: int
    logs: Path
    receiver: Any = None
    web: Any = None
    sync: Any = None
    traffic: Any = None

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "DATABASE_URL": self.db_url,
            "REDIS_URL": self.redis_url,
            "RESTATE_ADMIN_URL": self.stack.admin_url,
            "RESTATE_INGRESS_URL": self.stack.ingress_url,
            "TRACES_TOKEN": TOKEN,
            **extra,
        }

    def start_receiver(self) -> None:
        from demo.stack import start_web

        self.receiver = start_web(self.receiver_port, self.logs / "receiver.log", self.env())

    def stop_receiver(self) -> None:
        if self.receiver is not None:
            self.receiver.stop()
            self.receiver = None

    def start_sync(self, **env: str) -> None:
        from demo.stack import spawn

        argv = [sys.executable, "manage.py", "sync_restate"]
        self.sync = spawn("sync_restate", argv, self.logs / "sync.log", self.env(**env))

    def stop_sync(self) -> None:
        if self.sync is not None:
            self.sync.stop()
            self.sync = None

    def stop(self) -> None:
        for proc in (self.traffic, self.sync, self.receiver, self.web):
            if proc is not None:
                proc.stop()


# ---------------------------------------------------------------- 0. data


def _completed(client: Any, expected: int) -> bool:
    from benchmarks.sync_bench import COUNT_SQL

    row = client.query(COUNT_SQL)[0]
    return bool(row["n"] >= expected and row["done"] == row["n"])


def generate_paced(client: Any, trees: int, *, chunk: int = 1000) -> int:
    """`trees` Orchestrator.call_all trees (4 invocations each), `chunk` at a time, each chunk
    completed before the next is sent: 25,000 trees sent at once left the Python demo
    services with tens of thousands of invocations in flight, completing 20 a second."""
    from concurrent.futures import ThreadPoolExecutor

    from benchmarks.sync_bench import COUNT_SQL, TREE_SIZE

    run = uuid.uuid4().hex[:6]
    base = client.query(COUNT_SQL)[0]["n"]
    sent = 0
    with ThreadPoolExecutor(16) as pool:
        while sent < trees:
            n = min(chunk, trees - sent)
            list(pool.map(lambda i: client.send("Orchestrator", "call_all", payload=f"push-{run}-{i}"),
                          range(sent, sent + n)))  # fmt: skip
            sent += n
            expected = base + TREE_SIZE * sent
            wait_until(partial(_completed, client, expected), timeout=600, what=f"{expected:,} invocations completed")
            progress(f"{TREE_SIZE * sent:,} of {TREE_SIZE * trees:,} invocations created and completed")
    return int(client.query(COUNT_SQL)[0]["n"])


# ---------------------------------------------------------------- 2. freshness


def probe_freshness(parts: Parts, page: Any, *, probes: int, label: str, stages: dict[str, list[float]]) -> list[float]:
    """ms from Restate's completed_at to the page saying completed, one workflow run per probe;
    `stages` gets where the time went: span arrival, our commit (synced_at), the page."""
    from invocations.mirror.models import Invocation, InvocationSpan
    from invocations.mirror.sync.mapping import parse_timestamp

    client = parts.stack.client
    run = uuid.uuid4().hex[:6]
    samples: list[float] = []
    for i in range(probes):
        key = f"probe-{label}-{run}-{i}"
        inv_id = client.send("Signup", "run", key=key, payload=f"{key}@example.com")
        waiting = Invocation.objects.filter(id=inv_id, status__in=["running", "suspended"])
        wait_until(waiting.exists, timeout=60, what=f"probe {key} in our copy")
        page.goto(f"http://127.0.0.1:{parts.web_port}/invocations/{inv_id}/")
        page.wait_for_selector("#live[data-state=live]")
        page.evaluate(WATCH_JS)
        client.call("Signup", "confirm", key=key, payload="ok")
        shown = wait_until(lambda: page.evaluate("window.__completedAt"), timeout=90, what=f"{key} shown completed")
        row = client.query(f"SELECT completed_at FROM sys_invocation WHERE id = '{inv_id}'")[0]
        completed = parse_timestamp(row["completed_at"])
        assert completed is not None
        samples.append(float(shown) - epoch_ms(completed))
        ours = Invocation.objects.get(id=inv_id)
        span = InvocationSpan.objects.filter(invocation_id=inv_id, kind="end").order_by("received_at").first()
        if span is not None:
            stages.setdefault("completion -> span received", []).append(
                epoch_ms(span.received_at) - epoch_ms(completed)
            )
            stages.setdefault("span -> row committed", []).append(epoch_ms(ours.synced_at) - epoch_ms(span.received_at))
        stages.setdefault("completion -> row committed", []).append(epoch_ms(ours.synced_at) - epoch_ms(completed))
        stages.setdefault("row committed -> page shows it", []).append(float(shown) - epoch_ms(ours.synced_at))
        progress(f"{label} probe {i + 1}/{probes}: {samples[-1]:.0f} ms")
        time.sleep(0.2)
    return samples


# ---------------------------------------------------------------- 3. CPU


@dataclass
class CpuShare:
    on: list[float]  # Restate CPU s per wall s, sync running
    off: float  # same, sync stopped

    @property
    def share(self) -> float:
        return max(0.0, statistics.mean(self.on) - self.off)


def cpu_window(pid: int, seconds: float) -> float:
    from benchmarks.sync_bench import cpu_seconds

    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def measure_cpu(parts: Parts, pid: int, *, seconds: float, sync_env: dict[str, str], label: str) -> CpuShare:
    progress(f"{label}: Restate CPU with the sync running ({seconds:.0f} s)")
    first = cpu_window(pid, seconds)
    parts.stop_sync()
    progress(f"{label}: ... with the sync stopped")
    off = cpu_window(pid, seconds)
    parts.start_sync(**sync_env)
    time.sleep(3)  # its first step (a full scan, as after any restart) is not the steady state
    progress(f"{label}: ... with the sync running again")
    second = cpu_window(pid, seconds)
    return CpuShare([first, second], off)


# ---------------------------------------------------------------- 5. rows missed


def rows_missed(client: Any, *, settle_s: float = 5.0) -> tuple[int, list[str], int]:
    """Restate's (id, status, modified_at) against ours; rows Restate changed in the last
    `settle_s` (a long-running demo invocation retrying) are left out and counted."""
    from benchmarks.sync_bench import _our_state, _restate_state
    from invocations.mirror.sync.mapping import parse_timestamp

    now = parse_timestamp(client.query("SELECT now() AS now")[0]["now"])
    theirs = _restate_state(client)
    ours = _our_state()
    missed, recent = [], 0
    for inv_id, (status, modified_at, _) in theirs.items():
        mine = ours.get(inv_id)
        if mine is not None and (mine[0], mine[1]) == (status, parse_timestamp(modified_at)):
            continue
        modified = parse_timestamp(modified_at)
        if now is not None and modified is not None and (now - modified).total_seconds() < settle_s:
            recent += 1
        else:
            missed.append(inv_id)
    return len(theirs), missed, recent


def missed_rows_detail(client: Any, ids: list[str]) -> list[tuple[str, Any, Any]]:
    """Restate's row and ours, side by side, for the report."""
    from invocations.mirror.models import Invocation
    from invocations.restate import sql_list

    if not ids:
        return []
    theirs = {
        r["id"]: (r.get("status"), r.get("modified_at"), r.get("retry_count"), r.get("target"))
        for r in client.query(
            f"SELECT id, status, modified_at, retry_count, target FROM sys_invocation WHERE id IN {sql_list(ids)}"
        )
    }
    ours = {
        i: rest
        for i, *rest in Invocation.objects.filter(id__in=ids).values_list(
            "id", "status", "modified_at", "retry_count", "synced_at", "gone_from_restate_at"
        )
    }
    return [(i, theirs.get(i), ours.get(i)) for i in ids]


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--retained", type=int, default=100_000, help="invocations retained in Restate")
    parser.add_argument("--probes", type=int, default=30, help="freshness probes per mode")
    parser.add_argument("--rate", type=float, default=3.0, help="demo traffic patterns per second")
    parser.add_argument("--cpu-window", type=float, default=60.0, help="seconds per CPU window (push mode)")
    parser.add_argument("--safety-net", type=float, default=30.0, help="SYNC_SAFETY_NET_S while pushing")
    args = parser.parse_args(argv)

    scratch = ScratchDatabase.create("push_bench")
    parts: Parts | None = None
    started = time.monotonic()
    try:
        from benchmarks import sync_bench

        sync_bench.setup_django(scratch)
        from django.contrib.auth.models import User

        from dashboard import embedded_redis
        from demo.stack import DemoStack, free_port, spawn, start_web, tracing_env
        from invocations.mirror.models import FeedMode, SyncState, TraceFeed
        from invocations.mirror.sync.engine import SyncEngine
        from invocations.mirror.sync.mapping import parse_timestamp
        from invocations.restate import sql_literal

        with tempfile.TemporaryDirectory(prefix="push_bench_") as tmp:
            base = Path(tmp)
            receiver_port, web_port, redis_port = free_port(), free_port(), free_port()
            redis = embedded_redis.start(base / "redis", redis_port)
            progress("starting restate-server (exporting spans) and the demo services")
            stack = DemoStack.start(
                base / "stack",
                with_ts=False,
                restate_env=tracing_env(f"http://127.0.0.1:{receiver_port}/v1/traces", token=TOKEN),
            )
            parts = Parts(
                stack, scratch.url, f"redis://127.0.0.1:{redis_port}/0", receiver_port, web_port, base / "logs"
            )
            try:
                trees = max(1, args.retained // sync_bench.TREE_SIZE)
                progress(f"creating {trees * sync_bench.TREE_SIZE:,} invocations in Restate")
                retained = generate_paced(stack.client, trees)

                # 1. Backfill, against the baselines on the same rows.
                progress("backfill: reads alone")
                read = sync_bench.read_only(stack.client, SyncEngine(stack.client))
                progress("backfill: bare COPY-upsert")
                bare_s = sync_bench.bare_write(scratch.url, read, SyncEngine(stack.client).page_rows)
                progress("backfill: the engine's first sync")
                backfill = sync_bench.engine_full_sync(stack.client)
                n = len(read.invocations)

                User.objects.create_user("bench", password=PASSWORD)
                parts.web = start_web(web_port, parts.logs / "web.log", parts.env())
                traffic_argv = [sys.executable, "manage.py", "demo_traffic", "--rate", str(args.rate)]
                parts.traffic = spawn("demo traffic", traffic_argv, parts.logs / "traffic.log", parts.env())

                sync_env = {"SYNC_SAFETY_NET_S": str(args.safety_net), "SYNC_PUSH_QUIET_S": "120"}
                parts.start_sync(**sync_env)  # the receiver is not up yet: polling
                wait_until(lambda: SyncState.objects.filter(last_success_at__isnull=False).exists(), timeout=120,
                           what="the first step")  # fmt: skip
                pid = sync_bench.restate_binary_pid(base / "stack" / "restate")

                from playwright.sync_api import sync_playwright

                os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # ORM reads between browser steps
                with sync_playwright() as pw:
                    browser = pw.chromium.launch(
                        executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox", "--disable-gpu"]
                    )
                    page = browser.new_page()
                    page.goto(f"http://127.0.0.1:{web_port}/login/")
                    page.fill("#id_username", "bench")
                    page.fill("#id_password", PASSWORD)
                    page.click("section.login button[type=submit]")
                    page.wait_for_url("**/invocations/")

                    progress("2. freshness, polling only (no receiver)")
                    poll_stages: dict[str, list[float]] = {}
                    poll_fresh = probe_freshness(parts, page, probes=args.probes, label="poll", stages=poll_stages)
                    poll_cpu = measure_cpu(
                        parts, pid, seconds=max(20.0, args.cpu_window / 2), sync_env=sync_env, label="poll"
                    )
                    poll_interval = SyncState.objects.get(id=1).expected_interval_s

                    progress("the receiver starts: the sync switches to push by itself")
                    parts.start_receiver()
                    wait_until(
                        lambda: SyncState.objects.filter(feed_mode=FeedMode.PUSH).exists(), timeout=60, what="push"
                    )
                    feed0 = TraceFeed.load()
                    window_start = parse_timestamp(stack.client.query("SELECT now() AS now")[0]["now"])
                    push_stages: dict[str, list[float]] = {}
                    push_fresh = probe_freshness(parts, page, probes=args.probes, label="push", stages=push_stages)
                    push_cpu = measure_cpu(parts, pid, seconds=args.cpu_window, sync_env=sync_env, label="push")
                    feed1 = TraceFeed.load()
                    changed_rows = stack.client.query(
                        f"SELECT COUNT(*) AS n FROM sys_invocation WHERE modified_at >= {sql_literal(window_start)}"
                    )[0]["n"]
                    net_catch = SyncState.objects.get(id=1).last_net_changed
                    browser.close()

                progress(
                    f"stopping traffic; waiting out one safety-net interval ({args.safety_net:.0f} s) in push mode"
                )
                parts.traffic.stop()
                parts.traffic = None
                time.sleep(args.safety_net + 5)
                still_push = SyncState.objects.filter(feed_mode=FeedMode.PUSH).exists()
                compared, missed, recent = rows_missed(stack.client)
                missed_detail = missed_rows_detail(stack.client, missed[:10])
            finally:
                parts.stop()
                stack.stop()
                redis.terminate()
    finally:
        scratch.drop()

    say(f"Push feed benchmark: {retained:,} invocations retained in Restate, demo traffic at "
        f"{args.rate:g} patterns/s, {args.probes} probes per mode, restate-server from npm on this machine")  # fmt: skip
    say("\n1. Backfill (first sync from empty, journals and edges included)")
    rate = n / backfill.seconds
    say(
        table(
            ["figure", "value"],
            [
                ["engine: first sync", f"{rate:,.0f} invocations/s ({backfill.seconds:.1f} s, {n:,} rows)"],
                ["bare COPY-upsert of the same rows", f"{n / bare_s:,.0f}/s ({bare_s:.1f} s)"],
                ["reads alone", f"{n / read.seconds:,.0f}/s ({read.seconds:.1f} s)"],
                ["engine / bare COPY (target >= 0.6x)", f"{rate / (n / bare_s):.2f}x"],
            ],
        )
    )
    say("\n2. Freshness in Chromium: Restate's completed_at -> the page says completed, ms p50 / p95 / max")
    say(
        table(
            ["mode", "p50 / p95 / max", "target"],
            [
                ["hints (push)", describe(push_fresh), f"p95 <= {TARGET_P95_MS:.0f} ms"],
                [f"polling only (interval {poll_interval or 0:.1f} s)", describe(poll_fresh), ""],
            ],
        )
    )
    say("  where the time went with hints, ms p50 / p95 / max (Restate's clock, PostgreSQL's, the page's: one machine)")
    say(table(["stage", "p50 / p95 / max"], [[k, describe(v)] for k, v in push_stages.items()]))
    say("  ... polling only")
    say(table(["stage", "p50 / p95 / max"], [[k, describe(v)] for k, v in poll_stages.items()]))
    say("\n3. Restate's CPU spent on mirroring (CPU s per wall s, sync running minus stopped)")
    say(
        table(
            ["mode", "share of one core", "running (two windows)", "stopped"],
            [
                [
                    "hints (push)",
                    f"{push_cpu.share:.1%} (target <= {TARGET_CPU_SHARE:.0%})",
                    " / ".join(f"{v:.3f}" for v in push_cpu.on),
                    f"{push_cpu.off:.3f}",
                ],
                [
                    "polling only",
                    f"{poll_cpu.share:.1%}",
                    " / ".join(f"{v:.3f}" for v in poll_cpu.on),
                    f"{poll_cpu.off:.3f}",
                ],
            ],
        )
    )
    say("\n4. The feed while pushing")
    say(
        table(
            ["figure", "value"],
            [
                ["spans received", f"{feed1.spans - feed0.spans:,}"],
                ["invocation ids hinted", f"{feed1.ids_hinted - feed0.ids_hinted:,}"],
                ["invocations changed in Restate in the same window", f"{changed_rows:,}"],
                ["hint ids dropped (queue full)", f"{feed1.ids_dropped - feed0.ids_dropped:,}"],
                ["changed rows the last safety-net scan caught", f"{net_catch}"],
            ],
        )
    )
    say("\n5. Rows missed, traffic stopped, one safety-net interval later" + (" (push mode)" if still_push else ""))
    say(f"  {len(missed)} of {compared:,} invocations differ from Restate (status, modified_at); "
        f"{recent} changed in Restate within the last 5 s, left out")  # fmt: skip
    for inv, theirs, ours in missed_detail:
        say(f"    {inv}: Restate {theirs}, ours {ours}")
    say(f"\n({time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
