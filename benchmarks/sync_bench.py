"""Sync engine benchmark: `make bench` (python -m benchmarks.sync_bench).

Everything runs against real parts started here: a fresh restate-server with the
demo services on free ports, and the embedded PostgreSQL (a scratch database
created here and dropped at the end; DATABASE_URL, when set, names the server
to create it on). Every figure that is a ratio is taken against a baseline
measured in the same run on the same data, so it means something on any
machine; absolute figures are this machine's. It prints:

1. Throughput: invocations mirrored per second by `sync_once()` from empty,
   journal entries included, against two baselines on the same rows:
   a. the raw `/query` reads alone (the same scan + journals by id, no writes), as a
      steady step reads them; a first sync scans sys_journal whole instead (engine.py);
   b. a bare psycopg COPY + INSERT ... ON CONFLICT DO UPDATE of the same rows
      into scratch tables shaped like ours (same indexes), no Django.
2. Peak memory of a full sync from empty (`manage.py sync_restate --once` in a
   child process, so the RSS is its own) at three page sizes, against the
   idle interpreter (`manage.py check`) and a step with nothing new.
3. Freshness under steady demo traffic: our `synced_at` (clock_timestamp() in
   the upsert) minus Restate's `modified_at`, p50/p95/max; and rows missed at
   the end (Restate's id/status/modified_at/retry_count that our copy lacks).
4. Restate's CPU spent on polling: restate-server CPU seconds per wall second
   under the same traffic with the sync loop running and paused (A-B-A windows,
   so a slow drift in the load cancels out).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    from demo.stack import DemoStack
    from invocations.mirror.sync.engine import SyncEngine
    from invocations.restate import RestateClient

from benchmarks.report import progress, say, table
from benchmarks.scratch import ScratchDatabase

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

TREE_SIZE = 4  # Orchestrator.call_all -> Greeter.greet, Counter.add, Signup.status
MB = 1024  # ru_maxrss is in KiB on Linux


# ---------------------------------------------------------------- scratch database


def setup_django(scratch: ScratchDatabase) -> None:
    import django
    from django.core.management import call_command

    os.environ["DATABASE_URL"] = scratch.url  # settings read it; children inherit it
    django.setup()
    call_command("migrate", verbosity=0)


def empty_mirror() -> None:
    from django.db import connection

    from invocations import models as m

    tables = [
        model._meta.db_table
        for model in (
            m.Invocation,
            m.JournalEntry,
            m.InvocationEdge,
            m.QueuedInvocation,
            m.ObjectLock,
            m.WorkflowPromise,
            m.Service,
            m.Deployment,
            m.SyncState,
        )
    ]
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)}")


# ---------------------------------------------------------------- 0. data


@dataclass
class Generation:
    trees: int
    invocations: int
    send_s: float
    total_s: float


COUNT_SQL = "SELECT COUNT(*) AS n, COUNT(*) FILTER (WHERE status = 'completed') AS done FROM sys_invocation"


def generate(client: RestateClient, trees: int, *, workers: int = 16, timeout_s: float = 300) -> Generation:
    """`trees` Orchestrator.call_all trees: 4 invocations, 3 call edges and ~20 journal entries each."""
    run = uuid.uuid4().hex[:6]
    t0 = time.monotonic()
    # One-way sends return as soon as Restate has the invocation; httpx.Client is thread-safe.
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda i: client.send("Orchestrator", "call_all", payload=f"bench-{run}-{i}"), range(trees)))
    send_s = time.monotonic() - t0
    expected = TREE_SIZE * trees
    while True:
        row = client.query(COUNT_SQL)[0]
        if row["n"] >= expected and row["done"] == row["n"]:
            return Generation(trees, row["n"], send_s, time.monotonic() - t0)
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(f"Restate did not complete {expected} invocations in {timeout_s}s: {row}")
        progress(f"{row['done']:,} of {expected:,} invocations completed")
        time.sleep(2)


# ---------------------------------------------------------------- 1. throughput


@dataclass
class ReadResult:
    invocations: list[dict[str, Any]]
    journal_chunks: list[list[dict[str, Any]]]
    seconds: float

    @property
    def journal_entries(self) -> int:
        return sum(map(len, self.journal_chunks))


def read_only(client: RestateClient, engine: SyncEngine) -> ReadResult:
    """The engine's reads with nothing written: one scan, then journals by id in chunks of 200."""
    from invocations.mirror.sync import mapping
    from invocations.mirror.sync.engine import JOURNAL_IDS_PER_QUERY
    from invocations.restate import sql_list

    t0 = time.monotonic()
    rows = [row for batch in client.query_batches(engine.invocation_scan_sql(None)) for row in batch]
    # The engine reads journals only for invocations that have one (journal_size > what we hold, 0).
    ids = [row["id"] for row in rows if row.get("journal_size", 0) > 0]
    columns = ", ".join(mapping.JOURNAL_COLUMNS)
    chunks = []
    for i in range(0, len(ids), JOURNAL_IDS_PER_QUERY):
        sql = f"SELECT {columns} FROM sys_journal WHERE id IN {sql_list(ids[i : i + JOURNAL_IDS_PER_QUERY])}"
        chunks.append([row for batch in client.query_batches(sql) for row in batch])
    return ReadResult(rows, chunks, time.monotonic() - t0)


# Our column <- Restate's column (default when Restate leaves it null). Kept by hand
# on purpose: the baseline must not go through the engine's mapping or Django.
BARE_INVOCATION_COLUMNS: tuple[tuple[str, str | None, object], ...] = (
    ("id", "id", None),
    ("target", "target", ""),
    ("service_name", "target_service_name", ""),
    ("service_key", "target_service_key", None),
    ("handler_name", "target_handler_name", ""),
    ("service_type", "target_service_ty", ""),
    ("status", "status", None),
    ("completion_result", "completion_result", None),
    ("completion_failure", "completion_failure", None),
    ("idempotency_key", "idempotency_key", None),
    ("invoked_by", "invoked_by", ""),
    ("parent_id", "invoked_by_id", None),
    ("invoked_by_target", "invoked_by_target", None),
    ("root_id", None, None),
    ("restarted_from", "restarted_from", None),
    ("pinned_deployment_id", "pinned_deployment_id", None),
    ("trace_id", "trace_id", None),
    ("journal_size", "journal_size", 0),
    ("retry_count", "retry_count", 0),
    ("next_retry_at", "next_retry_at", None),
    ("last_failure", "last_failure", None),
    ("last_failure_error_code", "last_failure_error_code", None),
    ("last_failure_related_command_name", "last_failure_related_command_name", None),
    ("created_at", "created_at", None),
    ("modified_at", "modified_at", None),
    ("inboxed_at", "inboxed_at", None),
    ("scheduled_at", "scheduled_at", None),
    ("scheduled_start_at", "scheduled_start_at", None),
    ("running_at", "running_at", None),
    ("completed_at", "completed_at", None),
    ("completion_retention", "completion_retention", None),
    ("journal_retention", "journal_retention", None),
)
BARE_INVOCATION_EXTRA = {
    "first_seen_at": "clock_timestamp()",
    "synced_at": "clock_timestamp()",
    "journal_synced_size": "0",
}
BARE_JOURNAL_COLUMNS: tuple[tuple[str, str | None, object], ...] = (
    ("invocation_id", "id", None),
    ("index", "index", None),
    ("entry_type", "entry_type", ""),
    ("name", "name", None),
    ("appended_at", "appended_at", None),
    ("entry", "entry_json", None),  # JSON text straight into jsonb: COPY parses it
    ("entry_lite", "entry_lite_json", None),
)


def _bare_upsert(
    conn: psycopg.Connection[Any],
    table: str,
    columns: Sequence[tuple[str, str | None, object]],
    rows: Sequence[dict[str, Any]],
    *,
    pk: Sequence[str],
    extra: dict[str, str] | None = None,
) -> None:
    """The engine's write shape (COPY into a temp table, one INSERT ... ON CONFLICT), nothing else."""
    extra = extra or {}
    names = [c for c, _, _ in columns]
    quoted = ", ".join(f'"{c}"' for c in names)
    temp = f"tmp_{table}"
    # Only the copied columns, without NOT NULL: the columns filled by SQL expressions are absent.
    conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {temp} ON COMMIT DELETE ROWS AS SELECT {quoted} FROM {table} WITH NO DATA"
    )
    with conn.cursor().copy(f"COPY {temp} ({quoted}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([row.get(key, default) if key else default for _, key, default in columns])
    target = quoted + "".join(f', "{c}"' for c in extra)
    select = ", ".join(f's."{c}"' for c in names) + "".join(f", {expr}" for expr in extra.values())
    updates = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in names if c not in pk)
    conn.execute(
        f"INSERT INTO {table} AS t ({target}) SELECT {select} FROM {temp} s "
        f"ON CONFLICT ({', '.join(pk)}) DO UPDATE SET {updates}"
    )
    conn.commit()


def bare_write(db_url: str, read: ReadResult, page_rows: int) -> float:
    """Seconds to write `read`'s rows with psycopg alone, in the engine's page and chunk sizes."""
    with psycopg.connect(db_url) as conn:
        # LIKE ... INCLUDING ALL: the same column types, primary keys and secondary indexes as ours.
        conn.execute("CREATE TABLE bare_invocation (LIKE invocations_invocation INCLUDING ALL)")
        conn.execute("CREATE TABLE bare_journal (LIKE invocations_journalentry INCLUDING ALL)")
        conn.commit()
        t0 = time.monotonic()
        for i in range(0, len(read.invocations), page_rows):
            page = read.invocations[i : i + page_rows]
            _bare_upsert(conn, "bare_invocation", BARE_INVOCATION_COLUMNS, page, pk=["id"], extra=BARE_INVOCATION_EXTRA)
        for chunk in read.journal_chunks:
            _bare_upsert(conn, "bare_journal", BARE_JOURNAL_COLUMNS, chunk, pk=["invocation_id", "index"])
        elapsed = time.monotonic() - t0
        counts = conn.execute("SELECT (SELECT COUNT(*) FROM bare_invocation), (SELECT COUNT(*) FROM bare_journal)")
        n_inv, n_journal = counts.fetchone() or (0, 0)
        if (n_inv, n_journal) != (len(read.invocations), read.journal_entries):
            raise RuntimeError(f"bare write stored {n_inv}/{n_journal} rows, expected {len(read.invocations)}")
        conn.execute("DROP TABLE bare_invocation, bare_journal")
        conn.commit()
    return elapsed


@dataclass
class EngineRun:
    seconds: float
    invocations: int
    journal_entries: int
    edges: int


def engine_full_sync(client: RestateClient, *, profile: bool = False) -> EngineRun:
    from invocations.mirror.sync.engine import SyncEngine
    from invocations.models import Invocation, InvocationEdge, JournalEntry

    empty_mirror()
    engine = SyncEngine(client)
    profiler = cProfile.Profile() if profile else None
    t0 = time.monotonic()
    if profiler:
        profiler.enable()
    engine.sync_once()
    if profiler:
        profiler.disable()
    elapsed = time.monotonic() - t0
    if profiler:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(30)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(20)
    return EngineRun(elapsed, Invocation.objects.count(), JournalEntry.objects.count(), InvocationEdge.objects.count())


# ---------------------------------------------------------------- 2. memory


@dataclass
class ChildRun:
    label: str
    peak_rss_kb: int
    seconds: float


# Run as `python -c RSS_PROBE OUT ARGV...`: starts ARGV and writes its peak RSS (KiB) to OUT.
# Linux counts a child's pre-exec image (a copy of its parent) in its ru_maxrss, so a child
# forked straight from this process (hundreds of MB with the rows it holds) would report at
# least our size. Forked from this small probe instead, it reports its own.
RSS_PROBE = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_child(label: str, argv: list[str], env: dict[str, str], log_path: Path) -> ChildRun:
    """Run `argv` to completion and return its own peak RSS and wall time."""
    rss_path = log_path.with_suffix(".rss")
    with open(log_path, "wb") as out:
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", RSS_PROBE, str(rss_path), *argv],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
        elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{label} exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-2000:]}")
    return ChildRun(label, int(rss_path.read_text()), elapsed)


def memory_runs(stack: DemoStack, page_sizes: Sequence[int], log_dir: Path) -> list[ChildRun]:
    env = {
        **os.environ,
        "RESTATE_ADMIN_URL": stack.admin_url,
        "RESTATE_INGRESS_URL": stack.ingress_url,
        "LOG_LEVEL": "WARNING",
    }
    manage = [sys.executable, str(ROOT / "manage.py")]
    runs = [run_child("idle: manage.py check", [*manage, "check"], env, log_dir / "check.log")]
    for rows in page_sizes:
        empty_mirror()
        progress(f"full sync from empty in a child, SYNC_PAGE_ROWS={rows}")
        runs.append(
            run_child(
                f"full sync from empty, SYNC_PAGE_ROWS={rows}",
                [*manage, "sync_restate", "--once"],
                {**env, "SYNC_PAGE_ROWS": str(rows)},
                log_dir / f"sync_{rows}.log",
            )
        )
    # The mirror is full now: the same command with nothing to copy.
    runs.append(
        run_child(
            "step with nothing new (mirror full)", [*manage, "sync_restate", "--once"], env, log_dir / "sync_idle.log"
        )
    )
    return runs


# ---------------------------------------------------------------- 3 and 4. freshness, CPU


def _proc_stat(pid: int) -> list[str]:
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    text = Path(f"/proc/{pid}/stat").read_text()
    return text.rsplit(")", 1)[1].split()


def restate_binary_pid(base_dir: Path) -> int:
    """The restate-server binary serving `base_dir`.

    node_modules/.bin/restate-server is a node wrapper that spawns the real binary; the CPU
    is spent in the binary, so that is the process to read. It is found by its --base-dir,
    which is unique to this run.
    """
    wanted = f"--base-dir\0{base_dir}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = os.readlink(entry / "exe")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if exe.endswith("/bin/restate-server") and wanted in cmdline:
            found.append(int(entry.name))
    if len(found) != 1:
        raise RuntimeError(f"expected one restate-server binary with --base-dir {base_dir}, found {found}")
    return found[0]


def cpu_seconds(pid: int) -> float:
    fields = _proc_stat(pid)
    # utime and stime are fields 14 and 15 of /proc/<pid>/stat; fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Poll:
    started: float  # time.monotonic()
    duration_s: float
    rows_read: int
    changed: int


class SyncLoop:
    """The sync command's loop (same adaptive interval), in a thread, with pause/resume."""

    def __init__(self, engine: SyncEngine) -> None:
        self.engine = engine
        self.polls: list[Poll] = []
        self.errors: list[str] = []
        self._running = threading.Event()
        self._stop = threading.Event()
        self._stepping = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="sync-loop", daemon=True)

    def start(self) -> None:
        self._running.set()
        self._thread.start()

    def pause(self) -> None:
        self._running.clear()
        # Wait out a step in flight, so its queries do not leak into a "paused" window.
        with self._stepping:
            pass

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        self._thread.join(timeout=120)

    def _run(self) -> None:
        from django.db import connection

        from invocations.mirror.sync.loop import TRANSIENT_ERRORS, pacing  # the production pacing, not a copy

        failures = 0
        try:
            while not self._stop.is_set():
                self._running.wait()
                report = None
                with self._stepping:
                    if self._stop.is_set() or not self._running.is_set():
                        continue
                    t0 = time.monotonic()
                    try:
                        report = self.engine.sync_once()
                        failures = 0
                        self.polls.append(Poll(t0, report.duration_s, report.rows_read, report.changed))
                    except TRANSIENT_ERRORS as exc:
                        failures += 1
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                self._stop.wait(pacing(report=report, failures=failures))
        finally:
            connection.close()  # this thread's connection


@dataclass
class CpuWindow:
    label: str
    cpu_s: float
    wall_s: float
    polls: list[Poll] = field(default_factory=list)

    @property
    def per_wall_s(self) -> float:
        return self.cpu_s / self.wall_s


def measure_cpu(label: str, pid: int, seconds: float, loop: SyncLoop) -> CpuWindow:
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(pid), time.monotonic()
    return CpuWindow(label, c1 - c0, t1 - t0, [p for p in loop.polls if t0 <= p.started < t1])


@dataclass
class LoadResult:
    freshness_s: list[float]
    retried_excluded: int
    cpu_with: list[CpuWindow]
    cpu_without: CpuWindow
    polls: list[Poll]
    traffic_invocations: int
    traffic_errors: int
    loop_errors: list[str]
    mismatched: list[str]
    missed: list[str]
    compared: int
    recent_excluded: int
    journal_restate: int
    journal_ours: int
    journal_differences: dict[str, int]  # "status, journal_size 0 or not" -> invocations


def _restate_state(client: RestateClient, where: str = "") -> dict[str, tuple[Any, ...]]:
    sql = f"SELECT id, status, modified_at, retry_count FROM sys_invocation {where}"
    return {
        row["id"]: (row["status"], row.get("modified_at"), row.get("retry_count", 0))
        for batch in client.query_batches(sql)
        for row in batch
    }


def _our_state(ids: Sequence[str] | None = None) -> dict[str, tuple[Any, ...]]:
    from invocations.models import Invocation

    qs = Invocation.objects.all() if ids is None else Invocation.objects.filter(id__in=list(ids))
    return {i: (s, m, r) for i, s, m, r in qs.values_list("id", "status", "modified_at", "retry_count")}


def compare_journals(client: RestateClient) -> tuple[int, int, dict[str, int]]:
    """Journal entries per invocation, Restate's against ours; differing invocations grouped by
    their status and whether sys_invocation counts any journal (the engine reads a journal
    only when journal_size grows)."""
    from django.db.models import Count

    from invocations.models import JournalEntry
    from invocations.restate import sql_list

    theirs = {
        row["id"]: row["n"]
        for batch in client.query_batches("SELECT id, COUNT(*) AS n FROM sys_journal GROUP BY id")
        for row in batch
    }
    ours = dict(
        JournalEntry.objects.values("invocation_id").annotate(n=Count("index")).values_list("invocation_id", "n")
    )
    differing = sorted(i for i in theirs.keys() | ours.keys() if theirs.get(i, 0) != ours.get(i, 0))
    groups: dict[str, int] = {}
    for start in range(0, len(differing), 500):
        ids = differing[start : start + 500]
        sql = f"SELECT id, status, journal_size FROM sys_invocation WHERE id IN {sql_list(ids)}"
        known = {row["id"]: row for batch in client.query_batches(sql) for row in batch}
        for inv_id in ids:
            row = known.get(inv_id)
            if row is None:
                key = "gone from Restate"
            else:
                counted = "journal_size 0" if not row.get("journal_size") else "journal_size > 0"
                key = f"{row['status']}, {counted}"
            groups[key] = groups.get(key, 0) + 1
    return sum(theirs.values()), sum(ours.values()), groups


def steady_load(stack: DemoStack, *, rate: float, window_s: float, tail_s: float) -> LoadResult:
    """One traffic run: sync loop on, paused, on again. CPU windows A-B-A, freshness in the 'on' stretches.

    Timeline in seconds (w = window_s, 20 by default; h = w/2):
      [0, 25+h)           sync on; freshness of rows modified in [2, 20+h) (5 s clear of the pause:
                          a row changed just before it waits the pause out, which says nothing)
      [25, 25+h)          CPU "with sync" #1
      [25+h, 25+h+w)      sync paused: CPU "without sync"
      r = 25+h+w          sync resumes; its first step catches up on the pause, and the next
                          interval is 4x that longer step, so the stretch after it is left alone
      [r+5, r+5+h)        CPU "with sync" #2
      [r+10, r+20)        freshness of rows modified here; traffic ends at r+20
      then tail_s more of sync, and the missed-rows check.
    """
    from demo.traffic import run_traffic
    from invocations.mirror.sync.engine import SyncEngine
    from invocations.models import Invocation
    from invocations.restate import RestateClient, sql_list

    restate_pid = restate_binary_pid(stack.base_dir / "restate")
    half = window_s / 2
    lead = 25.0
    traffic_s = lead + half + window_s + 20
    traffic_client = RestateClient(stack.admin_url, stack.ingress_url, timeout=30)
    sync_client = RestateClient(stack.admin_url, stack.ingress_url, timeout=30)
    engine = SyncEngine(sync_client)
    loop = SyncLoop(engine)
    stop_traffic = threading.Event()
    stats_box: list[Any] = []

    def traffic() -> None:
        stats_box.append(run_traffic(traffic_client, rate_per_s=rate, duration_s=traffic_s, stop_event=stop_traffic))

    traffic_thread = threading.Thread(target=traffic, name="traffic", daemon=True)
    t0 = time.monotonic()
    wall0 = datetime.now(UTC)

    def wall(at: float) -> datetime:
        return wall0 + timedelta(seconds=at)

    def sleep_until(at: float) -> None:
        time.sleep(max(0.0, t0 + at - time.monotonic()))

    try:
        traffic_thread.start()
        loop.start()
        sleep_until(lead)
        progress("CPU window: sync on")
        with1 = measure_cpu("with sync #1", restate_pid, half, loop)
        paused_at = time.monotonic() - t0
        loop.pause()
        progress("CPU window: sync paused")
        without = measure_cpu("without sync", restate_pid, window_s, loop)
        resumed_at = time.monotonic() - t0
        loop.resume()
        sleep_until(resumed_at + 5)
        progress("CPU window: sync on again")
        with2 = measure_cpu("with sync #2", restate_pid, half, loop)
        traffic_thread.join(timeout=traffic_s + 60)
        traffic_end = time.monotonic() - t0
        progress(f"traffic over; {tail_s:.0f} s more of sync")
        time.sleep(tail_s)
        loop.stop()
    finally:
        stop_traffic.set()
        loop.stop()
        traffic_thread.join(timeout=30)
        traffic_client.close()

    # Freshness: only rows that changed while the loop ran steadily (see the timeline).
    windows = [(wall(2), wall(paused_at - 5)), (wall(resumed_at + 10), wall(traffic_end))]
    freshness: list[float] = []
    retried = 0
    for start, end in windows:
        rows = Invocation.objects.filter(modified_at__gte=start, modified_at__lt=end).values_list(
            "modified_at", "synced_at", "retry_count"
        )
        for modified_at, synced_at, retry_count in rows:
            if retry_count:
                # A retry changes the row (and our synced_at) without moving modified_at.
                retried += 1
                continue
            freshness.append((synced_at - modified_at).total_seconds())

    # Missed rows: Restate's state against ours, now that the loop has stopped.
    theirs = _restate_state(sync_client)
    ours = _our_state()
    cutoff = datetime.now(UTC) - timedelta(seconds=2)
    recent = {i for i, (_, modified_at, _) in theirs.items() if modified_at is None or modified_at >= cutoff}
    mismatched = sorted(i for i, state in theirs.items() if i not in recent and ours.get(i) != state)
    missed: list[str] = []
    if mismatched:
        # One more step, with Restate read just before and just after it: a row our copy
        # matches at neither moment was missed; otherwise it was in flight at the check.
        where = f"WHERE id IN {sql_list(mismatched)}"
        before = _restate_state(sync_client, where)
        engine.sync_once()
        after = _restate_state(sync_client, where)
        ours_now = _our_state(mismatched)
        missed = [i for i in mismatched if ours_now.get(i) not in (before.get(i), after.get(i))]
    # Journals of running invocations grow between steps: compare them after one more step.
    if not mismatched:
        engine.sync_once()
    journal_restate, journal_ours, journal_differences = compare_journals(sync_client)
    sync_client.close()

    stats = stats_box[0] if stats_box else None
    return LoadResult(
        freshness_s=freshness,
        retried_excluded=retried,
        cpu_with=[with1, with2],
        cpu_without=without,
        polls=list(loop.polls),
        traffic_invocations=stats.invocations if stats else 0,
        traffic_errors=stats.errors if stats else 0,
        loop_errors=loop.errors,
        mismatched=mismatched,
        missed=missed,
        compared=len(theirs) - len(recent),
        recent_excluded=len(recent),
        journal_restate=journal_restate,
        journal_ours=journal_ours,
        journal_differences=journal_differences,
    )


# ---------------------------------------------------------------- main


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trees", type=int, default=5500, help="call_all trees to create (4 invocations each)")
    parser.add_argument("--rate", type=float, default=10.0, help="demo traffic patterns per second")
    parser.add_argument("--window", type=float, default=20.0, help="seconds per CPU window (with / without sync)")
    parser.add_argument("--tail", type=float, default=10.0, help="seconds of sync after the traffic stops")
    parser.add_argument("--pages", default="500,2000,8000", help="SYNC_PAGE_ROWS values for the memory runs")
    parser.add_argument("--profile", action="store_true", help="cProfile the engine's full sync (to stderr)")
    parser.add_argument("--throughput-only", action="store_true", help="stop after the throughput figures")
    args = parser.parse_args(argv)
    page_sizes = [int(p) for p in args.pages.split(",") if p]

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="sync-bench-"))
    scratch: ScratchDatabase | None = None
    stack: DemoStack | None = None
    try:
        progress("scratch database + migrations")
        scratch = ScratchDatabase.create("sync")
        setup_django(scratch)
        from django.conf import settings
        from django.db import connections

        from demo.stack import DemoStack
        from invocations.mirror.sync.engine import SyncEngine

        progress("starting restate-server and the demo services")
        stack = DemoStack.start(tmp / "stack")
        client = stack.client

        say(f"Sync engine benchmark ({os.cpu_count()} CPUs, restate-server {client.version().get('version', '?')})")
        progress(f"generating {args.trees:,} call_all trees ({TREE_SIZE * args.trees:,} invocations)")
        gen = generate(client, args.trees)
        say(
            f"\nData: {gen.invocations:,} invocations ({gen.trees:,} Orchestrator.call_all trees) created in "
            f"{gen.total_s:.1f} s ({gen.invocations / gen.total_s:,.0f}/s until all completed; sends took {gen.send_s:.1f} s)"
        )

        # 1. Throughput. The reads run twice, the faster one counts: the first also warms
        # Restate's caches, which the engine then enjoys too.
        progress("baseline a: /query reads only (x2)")
        reads = [read_only(client, SyncEngine(client)) for _ in range(2)]
        read = min(reads, key=lambda r: r.seconds)
        progress("baseline b: bare psycopg COPY + upsert")
        bare_s = bare_write(scratch.url, read, settings.SYNC_PAGE_ROWS)
        progress("engine: sync_once() from empty")
        run = engine_full_sync(client, profile=args.profile)
        if run.invocations != len(read.invocations) or run.journal_entries != read.journal_entries:
            raise RuntimeError(
                f"engine stored {run.invocations} invocations / {run.journal_entries} journal entries, "
                f"Restate has {len(read.invocations)} / {read.journal_entries}"
            )
        n = len(read.invocations)
        engine_rate, read_rate, bare_rate = n / run.seconds, n / read.seconds, n / bare_s
        # What the engine would take if it did the reads and the bare writes back to back and nothing else.
        serial_s = read.seconds + bare_s
        say(
            f"\n1. Throughput: a full sync from empty of {n:,} invocations and "
            f"{read.journal_entries:,} journal entries ({run.edges:,} call/send edges derived)"
        )
        say(
            table(
                ["", "seconds", "invocations/s", "engine / this"],
                [
                    ["engine: SyncEngine.sync_once()", f"{run.seconds:.2f}", f"{engine_rate:,.0f}", ""],
                    [
                        "a. /query reads only",
                        f"{read.seconds:.2f}",
                        f"{read_rate:,.0f}",
                        f"{engine_rate / read_rate:.2f}",
                    ],
                    [
                        "b. bare psycopg COPY + upsert",
                        f"{bare_s:.2f}",
                        f"{bare_rate:,.0f}",
                        f"{engine_rate / bare_rate:.2f}",
                    ],
                    [
                        "a then b, back to back",
                        f"{serial_s:.2f}",
                        f"{n / serial_s:,.0f}",
                        f"{serial_s / run.seconds:.2f}",
                    ],
                ],
            )
        )

        if args.throughput_only:
            return 0

        # 2. Memory.
        mem = memory_runs(stack, page_sizes, tmp)
        idle, nothing_new = mem[0].peak_rss_kb, mem[-1].peak_rss_kb
        full = [r for r in mem if r.label.startswith("full sync")]
        say(f"\n2. Peak RSS of `manage.py sync_restate --once` in a child process ({n:,} invocations in Restate)")
        say(
            table(
                ["", "peak RSS MB", "minus nothing-new step", "seconds"],
                [
                    [
                        r.label,
                        f"{r.peak_rss_kb / MB:.0f}",
                        f"{(r.peak_rss_kb - nothing_new) / MB:+.0f}",
                        f"{r.seconds:.1f}",
                    ]
                    for r in mem
                ],
            )
        )
        say(
            "  (the step with nothing new imports and connects what a full sync does; "
            "`check` is the bare interpreter with Django)"
        )

        # 3 and 4. Freshness and CPU under steady traffic.
        progress(f"steady traffic at {args.rate:g} patterns/s with the sync loop")
        load = steady_load(stack, rate=args.rate, window_s=args.window, tail_s=args.tail)
        fresh = load.freshness_s
        steps = [p.duration_s for p in load.polls]
        with_cpu = sum(w.cpu_s for w in load.cpu_with) / sum(w.wall_s for w in load.cpu_with)
        without_cpu = load.cpu_without.per_wall_s
        polls = [p for w in load.cpu_with for p in w.polls]
        with_wall = sum(w.wall_s for w in load.cpu_with)
        share = (with_cpu - without_cpu) / with_cpu if with_cpu else 0.0
        say(
            f"\n3. Freshness under steady demo traffic ({args.rate:g} patterns/s, "
            f"{load.traffic_invocations:,} ingress invocations, {load.traffic_errors} send errors; "
            f"{len(load.polls)} sync steps)"
        )
        rows3 = [
            ["rows changed while the loop ran (sampled)", f"{len(fresh):,}"],
            ["freshness p50 (synced_at - modified_at)", f"{statistics.median(fresh):.2f} s" if fresh else "n/a"],
            ["freshness p95", f"{quantile(fresh, 0.95):.2f} s" if fresh else "n/a"],
            ["freshness max", f"{max(fresh):.2f} s" if fresh else "n/a"],
            [
                "sync step duration median / max",
                f"{statistics.median(steps) * 1000:.0f} / {max(steps) * 1000:.0f} ms" if steps else "n/a",
            ],
            ["rows with retries, not sampled (retries move no modified_at)", f"{load.retried_excluded:,}"],
            ["rows compared at the end (changed > 2 s before)", f"{load.compared:,}"],
            ["  differing at the end of the loop", f"{len(load.mismatched):,}"],
            ["  of which caught by one more step (in flight)", f"{len(load.mismatched) - len(load.missed):,}"],
            [
                "journal entries after one more step, Restate / ours",
                f"{load.journal_restate:,} / {load.journal_ours:,}",
            ],
            *[
                [f"  invocations whose journal differs: {key}", f"{count:,}"]
                for key, count in sorted(load.journal_differences.items())
            ],
            ["sync step errors", f"{len(load.loop_errors)}"],
        ]
        say(table(["", "value"], rows3))
        say(f"  rows missed: {len(load.missed)}")
        if load.missed:
            say(f"  missed ids: {', '.join(load.missed[:10])}")
        say(
            f"\n4. Restate CPU spent on polling (same traffic, {with_wall:.0f} s with sync vs {load.cpu_without.wall_s:.0f} s paused)"
        )
        say(
            table(
                ["", "restate CPU s / wall s"],
                [
                    ["sync loop running (windows before and after the pause)", f"{with_cpu:.3f}"],
                    ["sync loop paused", f"{without_cpu:.3f}"],
                    ["share of Restate's CPU spent on polling", f"{share:.0%}"],
                ],
            )
        )
        poll_rate = len(polls) / with_wall
        mean_poll = statistics.fmean(p.duration_s for p in polls) if polls else 0.0
        say(
            f"  polls/s {poll_rate:.2f}; mean step {mean_poll * 1000:.0f} ms (the sync loop waits 4x the last step, min 0.5 s)"
        )

        total_s = time.monotonic() - started
        say("\nSummary")
        say(
            table(
                ["figure", "value"],
                [
                    ["sync throughput from empty (invocations/s)", f"{engine_rate:,.0f}"],
                    ["  engine / read-only", f"{engine_rate / read_rate:.2f}"],
                    ["  engine / bare write", f"{engine_rate / bare_rate:.2f}"],
                    [
                        "freshness p50 / p95 / max (s)",
                        f"{statistics.median(fresh):.2f} / {quantile(fresh, 0.95):.2f} / {max(fresh):.2f}"
                        if fresh
                        else "n/a",
                    ],
                    ["rows missed", f"{len(load.missed)}"],
                    [
                        "peak RSS full sync, page " + " / ".join(str(p) for p in page_sizes) + " (MB)",
                        " / ".join(f"{r.peak_rss_kb / MB:.0f}" for r in full),
                    ],
                    [
                        "peak RSS step with nothing new / idle manage.py check (MB)",
                        f"{nothing_new / MB:.0f} / {idle / MB:.0f}",
                    ],
                    [
                        "Restate CPU share spent on polling",
                        f"{share:.0%} ({poll_rate:.2f} polls/s, {mean_poll * 1000:.0f} ms each)",
                    ],
                    ["data generation", f"{gen.invocations:,} invocations in {gen.total_s:.0f} s"],
                    ["benchmark runtime", f"{total_s:.0f} s"],
                ],
            )
        )
        connections.close_all()
        return 0
    finally:
        if stack is not None:
            stack.stop()
        if scratch is not None:
            try:
                from django.db import connections

                connections.close_all()
            except Exception:  # noqa: BLE001 - Django may not be set up yet; the drop below still runs
                pass
            scratch.drop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
