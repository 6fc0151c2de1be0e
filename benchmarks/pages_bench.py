"""Page benchmark: `make bench-pages` (python -m benchmarks.pages_bench).

Everything runs against real parts started here, in a scratch database (created
on the embedded PostgreSQL, or on DATABASE_URL's server, and dropped at the end)
filled by our own `manage.py generate_invocations`. Absolute figures are this
machine's; every ratio is taken against a baseline measured in the same run.

1. List page `/invocations/` server time (Django's test Client in-process, logged
   in: the whole view, middleware and template), median and p95 over `--reps`
   rounds of nine requests (first page, page 21 by following cursors, the oldest
   1%, the last page, status=running, service+handler, id prefix, sort by
   -duration, an htmx partial), with the SQL share (`connection.execute_wrapper`)
   and the slowest query of each. Baselines: the same requests over `--baseline`
   invocations (the 1M / 10k ratio shows how page cost grows with the table), and
   the bare SQL of the page's own queries (EXPLAIN ANALYZE), with their plans.
2. Detail page `/invocations/<id>/` for a node of a 4-node tree and for the root
   and a deepest leaf of the 10,000-node tree (the small-tree node at `--baseline`
   as baseline).
3. Tree rendering for the 10,000-node tree: the tree partial
   (`invocations/detail.html#tree`, detail_context + render_to_string) against its
   parts (tree_get, trees.build_tree, trees.flatten, the rows' template).
4. Live-update freshness under steady demo load: restate-server with the demo
   services and `demo.traffic.run_traffic`, the sync loop (the sync command's
   adaptive interval) in this process, Redis, Daphne in a subprocess, and a real
   headless Chromium on the list page (reloaded every `--reload` seconds, as a
   reader would). A recording WebSocket wrapper in the page notes when each
   message arrives. Samples: a row's status change (Restate's modified_at ->
   its row fragment arriving), and a new invocation (Restate's created_at -> the
   "N new" banner message that first counts it), each split into Restate ->
   our step's broadcast and broadcast -> browser. For context: the sync steps'
   duration, interval, PostgreSQL time and costliest statement.
   The synthetic rows were never in this Restate, so the periodic reconcile
   (which would mark them gone) is counted as done when the loop starts.
   Rows swapped in place: every status change our sync committed for a row the
   page showed, while it was open, against the row swaps htmx made in the page
   (and its `htmx:oobErrorNoTarget` errors: swaps that found no row).

`--live-only` runs part 4 alone (with `--count` synthetic rows in the table).

5. Service map `/services/?window=1h|1d|7d` (sums of hourly rollups), server time:
   first ever (nothing cached anywhere: Graphviz runs), cold (this process's cache
   emptied, as in a fresh web process or after the rollups changed: the sums, the
   percentile sample, dot's layout read from the shared table, rendering) and warm
   (from this process's cache), median and p95, with the SQL share, the drawing's
   size, EXPLAIN ANALYZE of its queries, and six concurrent cold requests for the
   week. Also the rollups' cost: a full rebuild at this size, and what the sync
   engine pays for them in a step like the ones under demo traffic (marking the
   hours it wrote, against the same upserts without), and what recounting the
   current hour costs at the generated density and at a busy hour's.
   Baseline: the same at `--baseline` invocations. `--only-service-map` runs this part alone.

6. Delayed messages `/delayed/` with `--delayed` (100,000) pending delayed messages among
   `--count` invocations (`generate_invocations --delayed`: senders, OneWayCall and Input
   entries, a 03:00 burst), server time of the page (first page with the day's chart, the
   hour's and the week's charts, 20 pages deep by cursors, a target filter, a sender
   filter, the burst's bar clicked, the htmx partial) and of the live fragment its socket
   renders on a change. Baselines in the same run: the same requests with 1% as many
   (`--baseline` invocations), and the bare SQL of the page's two main queries (the
   page's rows, the chart's counts; EXPLAIN ANALYZE). `--only-delayed` runs this part alone.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from django.test import Client

    from demo.management.commands.generate_invocations import GenerationResult
    from demo.stack import ManagedProcess
    from invocations.mirror.sync.engine import SyncEngine

from benchmarks.report import progress, say, table
from benchmarks.scratch import ScratchDatabase

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
USERNAME = "bench"
PASSWORD = f"bench-{uuid.uuid4().hex}"


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (p95 of 30 samples is the 29th smallest)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def short_sql(sql: str, limit: int = 170) -> str:
    """A statement made readable in one line: no table qualifiers, aliases or quotes, IN lists folded."""
    text = re.sub(r"\(%s(?:, %s)*\)", "(...)", sql)
    text = re.sub(r'"\w+"\."(\w+)"', r"\1", text)
    text = re.sub(r' AS "\w+"', "", text).replace('"', "")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_count(n: int) -> str:
    if n >= 1_000_000 and n % 100_000 == 0:
        return f"{n / 1_000_000:g}M"
    if n >= 1000 and n % 100 == 0:
        return f"{n / 1000:g}k"
    return f"{n:,}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}" if seconds < 0.1 else f"{seconds * 1000:.0f}"


# ---------------------------------------------------------------- scratch database


# ---------------------------------------------------------------- timing requests


@dataclass
class Query:
    sql: str
    params: Any
    seconds: float


@dataclass
class Timed:
    seconds: list[float] = field(default_factory=list)
    sql_seconds: list[float] = field(default_factory=list)
    queries: list[Query] = field(default_factory=list)  # of the last run
    status: int = 0
    size: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def p95(self) -> float:
        return quantile(self.seconds, 0.95)

    @property
    def sql_share(self) -> float:
        return sum(self.sql_seconds) / sum(self.seconds)

    @property
    def slowest(self) -> Query:
        return max(self.queries, key=lambda q: q.seconds)


@contextmanager
def recording_queries() -> Iterator[list[Query]]:
    from django.db import connection

    queries: list[Query] = []

    def wrapper(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            queries.append(Query(sql, params, time.perf_counter() - t0))

    with connection.execute_wrapper(wrapper):
        yield queries


@dataclass(frozen=True)
class Request:
    label: str
    path: str
    htmx: bool = False


def time_requests(client: Client, requests: Sequence[Request], reps: int) -> dict[str, Timed]:
    """Round-robin over `requests`, `reps` times each, after one warm-up round."""
    results = {r.label: Timed() for r in requests}
    headers = {"HTTP_HX_REQUEST": "true"}
    for round_no in range(reps + 1):
        for req in requests:
            with recording_queries() as queries:
                t0 = time.perf_counter()
                response = client.get(req.path, **(headers if req.htmx else {}))
                elapsed = time.perf_counter() - t0
            timed = results[req.label]
            if response.status_code != 200:
                raise RuntimeError(f"{req.path} answered {response.status_code}: {response.content[:500]!r}")
            if round_no == 0:
                continue  # warm-up: templates compiled, connection open, pages cached
            timed.seconds.append(elapsed)
            timed.sql_seconds.append(sum(q.seconds for q in queries))
            timed.queries = queries
            timed.status = response.status_code
            timed.size = len(response.content)
    return results


def explain(query: Query) -> tuple[float, str]:
    """EXPLAIN ANALYZE of a query as the page ran it (best of 3): seconds, and its plan's top nodes."""
    from django.db import connection

    best: tuple[float, str] | None = None
    for _ in range(3):  # the fastest of three: one run is at the mercy of the other processes
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {query.sql}", query.params)
            raw = cursor.fetchone()[0]
        doc = json.loads(raw) if isinstance(raw, str) else raw
        run = (doc[0]["Execution Time"] / 1000, plan_summary(doc[0]["Plan"]))
        best = run if best is None or run[0] < best[0] else best
    assert best is not None
    return best


def plan_summary(node: dict[str, Any], depth: int = 0) -> str:
    """ "Limit -> Index Scan using inv_created_idx (rows 51)": nodes down to the first scan."""
    name = node["Node Type"]
    if node.get("Index Name"):
        name += f" using {node['Index Name']}"
    elif node.get("Relation Name"):
        name += f" on {node['Relation Name']}"
    name += f" (rows {node.get('Actual Rows', '?')})"
    children = node.get("Plans") or []
    if "Scan" in node["Node Type"] or not children or depth >= 4:
        return name
    return f"{name} -> {plan_summary(children[0], depth + 1)}"


# ---------------------------------------------------------------- data


def generate(count: int, *, seed: int, big_tree: int, delayed: int = 0) -> GenerationResult:
    """Our command, as `manage.py generate_invocations --count N --seed S --big-tree B --delayed D` runs it."""
    from django.core.management import call_command

    from demo.management.commands.generate_invocations import Command

    command = Command()
    call_command(command, count=count, seed=seed, big_tree=big_tree, delayed=delayed, stdout=io.StringIO())
    assert command.result is not None
    return command.result


def delete_generated() -> None:
    from django.core.management import call_command

    call_command("generate_invocations", delete=True, stdout=io.StringIO())


def table_sizes() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_size_pretty(pg_relation_size('invocations_invocation')), "
            "pg_size_pretty(pg_indexes_size('invocations_invocation')), "
            "(SELECT count(*) FROM pg_indexes WHERE tablename = 'invocations_invocation')"
        )
        heap, indexes, n = cursor.fetchone()
    return f"invocations table {heap} + {n} indexes {indexes}"


# ---------------------------------------------------------------- 1. list page


def list_requests() -> list[Request]:
    """The nine list requests; cursors computed the way the page computes them."""
    from invocations.models import Invocation
    from invocations.reads.filters import InvocationFilters
    from invocations.reads.selectors import invocations as selectors

    after = None
    for _ in range(20):  # follow "Next page" 20 times: the 21st page
        page = selectors.invocation_list(filters=InvocationFilters(), after=after)
        after = page.next_cursor
    assert after is not None
    # The oldest 1%: the cursor a reader would hold after paging through 99% of the table.
    n = Invocation.objects.count()
    created_at, deep_id = Invocation.objects.order_by("-created_at", "-id").values_list("created_at", "id")[
        int(0.99 * n)
    ]
    deep = selectors.Cursor(created_at, deep_id)
    # The last page: the cursor of the 51st oldest row leaves exactly the 50 oldest.
    created_at, last_id = Invocation.objects.order_by("created_at", "id").values_list("created_at", "id")[50]
    last = selectors.Cursor(created_at, last_id)
    # An id prefix of 14 characters, as someone pasting the start of an id would type.
    some_id = Invocation.objects.order_by("-created_at").values_list("id", flat=True)[1000]
    return [
        Request("first page", "/invocations/"),
        Request("page 21 (20 cursors in)", f"/invocations/?after={after.encode()}"),
        Request("oldest 1% (99% deep)", f"/invocations/?after={deep.encode()}"),
        Request("last page (oldest 50)", f"/invocations/?after={last.encode()}"),
        Request("status=running", "/invocations/?status=running"),
        Request("service+handler", "/invocations/?service=Checkout&handler=order"),
        Request("id prefix (14 chars)", f"/invocations/?q={some_id[:14]}"),
        Request("sort=-duration", "/invocations/?sort=-duration"),
        Request("htmx partial (first page)", "/invocations/", htmx=True),
    ]


def main_query(timed: Timed) -> Query:
    return next(q for q in timed.queries if "LIMIT 51" in q.sql)


def counts_queries(timed: Timed) -> list[Query]:
    """The status-chip counts: one capped COUNT per status."""
    return [q for q in timed.queries if "COUNT(*)" in q.sql]


def explain_counts(timed: Timed) -> tuple[float, str]:
    """All the chip counts of a page: their total time, and the plan of the slowest."""
    runs = [explain(q) for q in counts_queries(timed)]
    slowest = max(runs, key=lambda r: r[0])
    return sum(r[0] for r in runs), f"{len(runs)} capped counts; slowest: {slowest[1]}"


# ---------------------------------------------------------------- 3. tree


@dataclass
class TreeTimes:
    nodes: int
    rows: int
    html_kib: int
    parts: dict[str, list[float]]


def time_tree(root_id: str, reps: int) -> TreeTimes:
    from django.template.loader import render_to_string
    from django.utils import timezone

    from invocations.graph import trees
    from invocations.reads.presenters.detail import detail_context
    from invocations.reads.presenters.waterfall import Axis, waterfall_rows
    from invocations.reads.selectors import detail as selectors_detail

    inv = selectors_detail.invocation_get(root_id)
    parts: dict[str, list[float]] = {
        k: []
        for k in (
            "tree_get (2 queries, rows decoded by the ORM)",
            "trees.build_tree",
            "trees.flatten",
            "rows: waterfall_rows (with its one spans query) + _waterfall.html#rows",
            "detail_context (all of the above + header, journal)",
            "render_to_string(#tree) alone",
            "#tree partial: detail_context + render",
        )
    }
    html = ""
    rows: list[trees.Row] = []
    tree = None
    for i in range(reps + 1):
        now = timezone.now()
        t0 = time.perf_counter()
        data = selectors_detail.tree_get(inv)
        t1 = time.perf_counter()
        tree = trees.build_tree(data.rows, data.edges, data.root_id, now=now)
        t2 = time.perf_counter()
        rows = trees.flatten(tree, now=now, current_id=inv.id)
        t3 = time.perf_counter()
        render_to_string(
            "invocations/_waterfall.html#rows", {"rows": waterfall_rows(rows, Axis(tree.start, tree.end, now))}
        )
        t4 = time.perf_counter()
        context = detail_context(root_id)
        t5 = time.perf_counter()
        html = render_to_string("invocations/detail.html#tree", context)
        t6 = time.perf_counter()
        if i == 0:
            continue
        for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t6 - t4), strict=True):
            parts[key].append(value)
    assert tree is not None
    return TreeTimes(len(tree.by_id), sum(1 for r in rows if not r.is_more), len(html) // 1024, parts)


# ---------------------------------------------------------------- 5. service map

MAP_WINDOWS = ("1h", "1d", "7d")


@dataclass
class MapTimes:
    first: Timed  # nothing cached anywhere: dot lays the graph out, the map is rendered
    redraw: Timed  # the map changed (as under traffic): rendered again, dot's layout from the shared table
    cold: Timed  # a new process: this process's cache emptied, the drawing from the shared table
    warm: Timed
    compute_s: list[float]  # the map's own computation in each cold request
    width: float = 0.0
    height: float = 0.0
    nodes: int = 0  # handlers + the ingress
    edges: int = 0
    invocations: int = 0


def time_service_map(client: Client, *, cold_reps: int, warm_reps: int) -> dict[str, MapTimes]:
    """Each window first ever (the shared drawings emptied too) once, redrawn (the shared
    rendered maps emptied, layouts kept) and cold (this process's cache emptied) `cold_reps`
    times each, then warm `warm_reps` times."""
    from django.core.cache import cache
    from django.utils import timezone

    from invocations.mirror.models import DrawingCache
    from invocations.reads.presenters import service_map as presenter

    results: dict[str, MapTimes] = {}
    for window in MAP_WINDOWS:
        path = f"/services/?window={window}"
        times = MapTimes(Timed(), Timed(), Timed(), Timed(), [])
        client.get(path)  # templates compiled, connection open
        plan = [("first", times.first)]
        plan += [("redraw", times.redraw)] * cold_reps + [("cold", times.cold)] * cold_reps
        plan += [("warm", times.warm)] * warm_reps
        for kind, timed in plan:
            if kind == "first":
                DrawingCache.objects.all().delete()
            elif kind == "redraw":
                DrawingCache.objects.filter(key__startswith="map:").delete()
            if kind != "warm":
                cache.clear()
            if kind in ("first", "cold"):
                presenter._parsed.clear()  # a new process has parsed no layout (a redraw in this one has)
            with recording_queries() as queries:
                t0 = time.perf_counter()
                response = client.get(path)
                elapsed = time.perf_counter() - t0
            if response.status_code != 200:
                raise RuntimeError(f"{path} answered {response.status_code}: {response.content[:500]!r}")
            timed.seconds.append(elapsed)
            timed.sql_seconds.append(sum(q.seconds for q in queries))
            timed.queries = queries
            timed.size = len(response.content)
            # What this request served (the response has no context outside the test runner).
            summary = cache.get(presenter.cache_key(window, timezone.now())).summary
            if kind == "cold":
                times.compute_s.append(summary.compute_s)
            body = response.content.decode()
            match = re.search(r'<svg class="service-map"[^>]* width="([\d.]+)" height="([\d.]+)"', body)
            if match:
                times.width, times.height = float(match[1]), float(match[2])
            times.nodes = summary.handlers + (1 if summary.ingress_roots else 0)
            times.edges = summary.edges
            times.invocations = summary.invocations
        results[window] = times
    return results


def concurrent_cold_maps(window: str, clients: int) -> tuple[float, int, list[float]]:
    """`clients` simultaneous cold requests for one window, each in its own thread with its own
    Client: wall time, how many computations ran, and each request's time. The worst case:
    nothing cached in this process and no shared drawing (as right after the map changed)."""
    from django.contrib.auth.models import User
    from django.core.cache import cache
    from django.db import connections
    from django.test import Client

    from invocations.mirror.models import DrawingCache
    from invocations.reads.presenters import service_map as presenter

    user = User.objects.get(username=USERNAME)
    computations: list[float] = []
    original = presenter.compute

    def counting(**kwargs: Any) -> Any:
        computations.append(time.perf_counter())
        return original(**kwargs)

    cache.clear()
    presenter._parsed.clear()
    DrawingCache.objects.filter(key__startswith="map:").delete()
    barrier = threading.Barrier(clients)
    seconds: list[float] = []

    def one() -> None:
        client = Client(HTTP_HOST="localhost")
        client.force_login(user)
        barrier.wait()
        t0 = time.perf_counter()
        response = client.get(f"/services/?window={window}")
        seconds.append(time.perf_counter() - t0)
        assert response.status_code == 200
        connections.close_all()

    presenter.compute = counting  # type: ignore[assignment]
    try:
        threads = [threading.Thread(target=one) for _ in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        presenter.compute = original  # type: ignore[assignment]
    return wall, len(computations), seconds


def explain_map_queries(timed: Timed) -> list[tuple[str, float, str]]:
    """EXPLAIN ANALYZE of the map's aggregate queries (rollup sums, percentile sample), as
    its last cold request ran them."""
    aggregates = [q for q in timed.queries if "GROUP BY" in q.sql.upper()]
    return [(short_sql(q.sql, 90), *explain(q)) for q in aggregates]


@dataclass
class RollupCosts:
    rebuild_s: list[float]  # a full rebuild of every hour
    hours: int  # hours it counted
    step_rows: tuple[int, int, int]  # per simulated sync step: new invocations, updated, new edges
    step_plain_s: list[float]  # the step's writes with the hour marking switched off
    step_marked_s: list[float]  # the same writes, marking the hours they wrote (what the engine does)
    refresh_s: list[float]  # recounting the dirty hours after a step, at the generated density
    hour_rows: int  # invocations in the current hour then
    busy_rows: int  # invocations in the current hour for the busy measurement
    busy_refresh_s: list[float]


def _invocation(inv_id: str, *, created: datetime, now: datetime, parent: str | None = None) -> Any:
    from invocations.mirror.models import Invocation

    return Invocation(
        id=inv_id,
        target="Greeter/greet",
        service_name="Greeter",
        handler_name="greet",
        service_type="service",
        status="running",
        invoked_by="service" if parent else "ingress",
        parent_id=parent,
        root_id=None if parent else inv_id,
        journal_size=2,
        retry_count=1,
        created_at=created,
        modified_at=created,
        running_at=created,
        first_seen_at=now,
        synced_at=now,
    )


def measure_rollup_costs(*, steps: int = 40, busy_rows: int = 100_000) -> RollupCosts:
    """What the rollups cost: a rebuild at this size; the sync engine's writes of a step like
    the ones under demo traffic (README: ~10 patterns/s, a step every ~0.7 s: about 40 new
    invocations, 60 updated, 30 new edges) through its own code, with and without marking the
    hours they wrote; recounting the dirty hours after each step; and recounting a busy hour
    (`busy_rows` invocations, ~8 patterns/s for an hour), added for the measurement and removed."""
    from unittest import mock

    from django.db import connection
    from django.utils import timezone

    from invocations.mirror import rollups
    from invocations.mirror.models import Invocation, InvocationEdge
    from invocations.mirror.sync.engine import SyncEngine

    progress("service map rollups: rebuild, sync steps with and without marking, refresh")
    rebuilt = [rollups.rebuild() for _ in range(2)]
    engine = SyncEngine(client=None)  # type: ignore[arg-type]  # only its writes are used
    new_n, upd_n, edge_n = 40, 60, 30
    serial = iter(range(10**9))
    recent: list[Any] = []
    plain: list[float] = []
    marked: list[float] = []
    refresh: list[float] = []

    def one_step() -> float:
        now = timezone.now()
        new = [_invocation(f"inv_1step{next(serial):029d}", created=now, now=now) for _ in range(new_n)]
        updated = recent[-upd_n:]
        for inv in updated:
            inv.status, inv.completion_result = "completed", "success"
            inv.completed_at = inv.modified_at = now
        edges = [
            InvocationEdge(
                caller_id=caller.id,
                caller_service=caller.service_name,
                caller_handler=caller.handler_name,
                journal_index=2 + k,
                kind="call",
                target_service="Greeter",
                target_handler="greet",
                created_at=now,
            )
            for k, caller in enumerate(new[:edge_n])
        ]
        t0 = time.perf_counter()
        engine._upsert_invocations(new + updated)
        engine._write_journals([], edges, [], {})
        elapsed = time.perf_counter() - t0
        recent[:] = recent[-200:] + new
        return elapsed

    rollups.refresh_dirty()
    order = random.Random(1)
    for _ in range(steps):
        # A pair of steps in random order, then the recount a worker would do after them.
        for marking in order.sample([True, False], 2):
            if marking:
                marked.append(one_step())
            else:
                with mock.patch.object(rollups, "mark_dirty", lambda times: 0):
                    plain.append(one_step())
        t0 = time.perf_counter()
        rollups.refresh_dirty()
        refresh.append(time.perf_counter() - t0)
    hour = rollups.hour_of(timezone.now())
    hour_rows = Invocation.objects.filter(created_at__gte=hour).count()

    # A busy current hour: copies of generated rows, spread over the part of the hour gone by.
    inv_table, edge_table = Invocation._meta.db_table, InvocationEdge._meta.db_table
    inv_cols = [f.column for f in Invocation._meta.local_concrete_fields]
    edge_cols = [f.column for f in InvocationEdge._meta.local_concrete_fields if f.column]
    spread = "%(hour)s::timestamptz + (n::float8 / %(rows)s) * (clock_timestamp() - %(hour)s::timestamptz)"
    inv_select = [
        "'inv_1busy' || lpad(n::text, 29, '0')" if c == "id" else spread if c == "created_at" else f"s.{c}"
        for c in inv_cols
    ]
    edge_select = [
        "'inv_1busy' || lpad(n::text, 29, '0')" if c == "caller_id" else spread if c == "created_at" else f"e.{c}"
        for c in edge_cols
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {inv_table} ({', '.join(inv_cols)}) SELECT {', '.join(inv_select)} FROM "
            f"(SELECT *, row_number() OVER () AS n FROM {inv_table} WHERE id LIKE 'inv\\_1gen%%' LIMIT %(rows)s) s",
            {"hour": hour, "rows": busy_rows},
        )
        cursor.execute(
            f"INSERT INTO {edge_table} ({', '.join(edge_cols)}) SELECT {', '.join(edge_select)} FROM "
            f"(SELECT *, row_number() OVER () AS n FROM {edge_table} LIMIT %(edges)s) e",
            {"hour": hour, "rows": busy_rows, "edges": busy_rows * 7 // 10},
        )
        cursor.execute(f"ANALYZE {inv_table}")
    busy = Invocation.objects.filter(created_at__gte=hour).count()
    busy_refresh: list[float] = []
    for _ in range(5):
        rollups.mark_dirty([hour])
        t0 = time.perf_counter()
        rollups.refresh_dirty()
        busy_refresh.append(time.perf_counter() - t0)
    with connection.cursor() as cursor:
        ours = [r"inv\_1busy%", r"inv\_1step%"]
        cursor.execute(f"DELETE FROM {edge_table} WHERE caller_id LIKE %s OR caller_id LIKE %s", ours)
        cursor.execute(f"DELETE FROM {inv_table} WHERE id LIKE %s OR id LIKE %s", ours)
    rollups.mark_dirty([hour])
    rollups.refresh_dirty()
    return RollupCosts(
        rebuild_s=[r.seconds for r in rebuilt],
        hours=rebuilt[-1].hours,
        step_rows=(new_n, upd_n, edge_n),
        step_plain_s=plain,
        step_marked_s=marked,
        refresh_s=refresh,
        hour_rows=hour_rows,
        busy_rows=busy,
        busy_refresh_s=busy_refresh,
    )


def report_service_map(
    big: dict[str, MapTimes],
    base: dict[str, MapTimes],
    *,
    scale: str,
    base_scale: str,
    explained: Any,
    concurrent: Any,
    costs: RollupCosts,
    generated_rollup_s: float,
) -> list[list[str]]:
    """Print section 5; return the summary rows."""
    say(
        f"\n5. Service map /services/ at {scale} invocations, server time (ms); first = nothing cached anywhere "
        "(dot runs); redraw = the map changed (rendered again, layout shared); cold = a new process (drawing "
        "shared); warm = this process's cache"
    )
    rows = []
    for window in MAP_WINDOWS:
        t, b = big[window], base[window]
        rows.append(
            [
                window,
                f"{t.invocations:,}",
                f"{t.nodes} / {t.edges}",
                f"{t.width:.0f} x {t.height:.0f}",
                t.cold.size // 1024,
                ms(t.first.median),
                ms(t.redraw.median),
                ms(t.redraw.p95),
                ms(t.cold.median),
                ms(t.cold.p95),
                f"{t.cold.sql_share:.0%}",
                ms(t.warm.median),
                ms(t.warm.p95),
                ms(b.cold.median),
                f"{t.cold.median / b.cold.median:.1f}x",
            ]
        )
    say(
        table(
            [
                "window",
                "invocations",
                "nodes / edges",
                "SVG px",
                "KiB",
                "first",
                "redraw median",
                "redraw p95",
                "cold median",
                "cold p95",
                "cold SQL",
                "warm median",
                "warm p95",
                f"cold @{base_scale}",
                f"cold {scale}/{base_scale}",
            ],
            rows,
        )
    )
    say("   The aggregate queries of a cold 7-day map (EXPLAIN ANALYZE, best of 3):")
    for sql, seconds, plan in explained:
        say(f"   {ms(seconds)} ms  {sql}\n       {plan}")
    wall, computations, seconds = concurrent
    say(
        f"   {len(seconds)} concurrent requests for the week, none cached, drawing not shared: {wall:.2f} s wall, "
        f"{computations} computation(s), "
        f"slowest request {ms(max(seconds))} ms"
    )
    c = costs
    new_n, upd_n, edge_n = c.step_rows
    added = statistics.median(c.step_marked_s) - statistics.median(c.step_plain_s)
    say(
        f"   Rollups: rebuilding all {c.hours:,} hours {' / '.join(f'{x:.2f}' for x in c.rebuild_s)} s "
        f"(in generate_invocations: {generated_rollup_s:.2f} s)"
    )
    say(
        f"   A sync step's writes ({new_n} new invocations, {upd_n} updated, {edge_n} new edges), median of "
        f"{len(c.step_plain_s)}: {ms(statistics.median(c.step_plain_s))} ms without marking hours, "
        f"{ms(statistics.median(c.step_marked_s))} ms with (added {ms(added)} ms); "
        f"recounting the dirty hours after it ({c.hour_rows:,} invocations in the current hour): "
        f"median {ms(statistics.median(c.refresh_s))} ms, p95 {ms(quantile(c.refresh_s, 0.95))} ms"
    )
    say(
        f"   Recounting a busy current hour ({c.busy_rows:,} invocations): median "
        f"{ms(statistics.median(c.busy_refresh_s))} ms, max {ms(max(c.busy_refresh_s))} ms"
    )
    return [
        [
            f"service map @{scale}, {w}: first / redraw / cold / warm median (ms)",
            f"{ms(big[w].first.median)} / {ms(big[w].redraw.median)} / {ms(big[w].cold.median)} / "
            f"{ms(big[w].warm.median)}",
        ]
        for w in MAP_WINDOWS
    ] + [
        [f"service map, {len(seconds)} concurrent cold 7-day requests: wall (s)", f"{wall:.2f}"],
        [f"rollup rebuild, {c.hours:,} hours @{scale} (s)", f"{min(c.rebuild_s):.2f}"],
        [
            "sync step: added by marking hours / refresh after it, median (ms)",
            f"{ms(added)} / {ms(statistics.median(c.refresh_s))}",
        ],
        [
            f"refresh of a busy hour ({short_count(c.busy_rows)} invocations), median (ms)",
            ms(statistics.median(c.busy_refresh_s)),
        ],
    ]


def measure_service_map(client: Client, args: argparse.Namespace) -> dict[str, MapTimes]:
    progress(f"service map: {args.map_cold_reps} cold and {args.reps} warm requests per window")
    return time_service_map(client, cold_reps=args.map_cold_reps, warm_reps=args.reps)


def service_map_only(client: Client, args: argparse.Namespace, started: float) -> int:
    """`--only-service-map`: part 5 alone, with its own baseline."""
    progress(f"generating {args.baseline:,} invocations (baseline)")
    small = generate(args.baseline, seed=args.seed, big_tree=0)
    base_map = measure_service_map(client, args)
    delete_generated()
    progress(f"generating {args.count:,} invocations with manage.py generate_invocations")
    big = generate(args.count, seed=args.seed, big_tree=args.big_tree)
    say(
        f"\nData: {big.invocations:,} invocations, {big.edges:,} edges ({table_sizes()}); baseline {small.invocations:,}"
    )
    big_map = measure_service_map(client, args)
    explained, concurrent = service_map_extras()
    costs = measure_rollup_costs()
    scale, base_scale = short_count(big.invocations), short_count(small.invocations)
    summary = report_service_map(
        big_map,
        base_map,
        scale=scale,
        base_scale=base_scale,
        explained=explained,
        concurrent=concurrent,
        costs=costs,
        generated_rollup_s=big.rollup_seconds,
    )
    summary.append(["benchmark runtime", f"{time.monotonic() - started:.0f} s"])
    say("\nSummary")
    say(table(["figure", "value"], summary))
    return 0


def service_map_extras() -> tuple[Any, Any]:
    progress("service map: EXPLAIN ANALYZE, concurrent cold requests")
    from django.contrib.auth.models import User
    from django.core.cache import cache
    from django.test import Client

    client = Client(HTTP_HOST="localhost")
    client.force_login(User.objects.get(username=USERNAME))
    cache.clear()
    with recording_queries() as queries:
        client.get("/services/?window=7d")
    timed = Timed(queries=queries)
    return explain_map_queries(timed), concurrent_cold_maps("7d", 6)


# ---------------------------------------------------------------- 4. live freshness


@dataclass
class Step:
    started: float  # time.time()
    ended: float
    duration_s: float
    changed: int
    sql_s: float  # PostgreSQL time within the step


@dataclass
class Change:
    """A state (id, status) as the sync first committed it."""

    modified_at: float  # Restate's, epoch seconds
    created_at: float
    retry_count: int
    committed: float  # time.time() when the step that wrote it sent its list-page broadcast


class SyncLoop:
    """The sync command's loop (its own pacing), in a thread, noting what each step changed."""

    def __init__(self, engine: SyncEngine) -> None:
        self.engine = engine
        self.steps: list[Step] = []
        self.changes: dict[tuple[str, str], Change] = {}
        # Per invocation, each status our sync committed, with when its broadcast left.
        self.transitions: dict[str, list[tuple[float, str]]] = {}
        self.errors: list[str] = []
        self.list_sent: float | None = None
        self.sql_by_statement: dict[str, float] = {}  # statement (IN lists folded) -> seconds, over all steps
        self._step_sql = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sync-loop", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @contextmanager
    def timing_broadcasts(self) -> Iterator[None]:
        """Note when each step's message to the list pages leaves (instrumentation only:
        the message is sent exactly as without it)."""

        from invocations import events

        original = events._send

        def send(group: str, message: dict) -> None:
            if group == events.LIST_GROUP:
                self.list_sent = time.time()
            original(group, message)

        events._send = send
        try:
            yield
        finally:
            events._send = original

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def _time_sql(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            elapsed = time.perf_counter() - t0
            self._step_sql += elapsed
            key = re.sub(r"\(%s(?:, %s)*\)", "(...)", sql)
            self.sql_by_statement[key] = self.sql_by_statement.get(key, 0.0) + elapsed

    def _run(self) -> None:
        from django.db import connection

        from invocations.mirror.sync.loop import TRANSIENT_ERRORS, pacing  # the production pacing, not a copy

        failures = 0
        try:
            while not self._stop.is_set():
                self._step_sql = 0.0
                report = None
                t0 = time.time()
                self.list_sent = None
                try:
                    with connection.execute_wrapper(self._time_sql):
                        report = self.engine.sync_once()
                    t1 = time.time()
                    failures = 0
                    self.steps.append(Step(t0, t1, report.duration_s, report.changed, self._step_sql))
                    if report.changed_ids:
                        self._capture(report.changed_ids, self.list_sent or t1)
                except TRANSIENT_ERRORS as exc:
                    failures += 1
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    self.engine.record_failure(exc)
                self._stop.wait(pacing(report=report, failures=failures))
        finally:
            connection.close()

    def _capture(self, ids: list[str], committed: float) -> None:
        from invocations.models import Invocation

        rows = Invocation.objects.filter(id__in=ids).values_list(
            "id", "status", "modified_at", "created_at", "retry_count"
        )
        for inv_id, status, modified_at, created_at, retry_count in rows:
            self.changes.setdefault(
                (inv_id, status), Change(modified_at.timestamp(), created_at.timestamp(), retry_count, committed)
            )
            seen = self.transitions.setdefault(inv_id, [])
            if not seen or seen[-1][1] != status:
                seen.append((committed, status))


# Installed before any page script: every WebSocket notes each message's arrival time
# (the event's own timestamp, on the page's clock = this machine's wall clock).
RECORDER_JS = """
(() => {
  const Native = window.WebSocket;
  const log = (window.__wsLog = []);
  const pageId = Math.random().toString(36).slice(2);
  const at = (e) => performance.timeOrigin + (e && e.timeStamp ? e.timeStamp : performance.now());
  class Recording extends Native {
    constructor(url, protocols) {
      super(url, protocols);
      const u = String(url);
      this.addEventListener("open", (e) => log.push({ page: pageId, url: u, t: at(e), open: true }));
      this.addEventListener("message", (e) =>
        log.push({ page: pageId, url: u, t: at(e), data: typeof e.data === "string" ? e.data : "" }));
    }
  }
  window.WebSocket = Recording;
  // Row swaps htmx makes (status before -> after), and swaps that found no row.
  window.__rowSwaps = [];
  window.__oobErrors = 0;
  document.addEventListener("htmx:oobErrorNoTarget", () => { window.__oobErrors += 1; });
  const statusOf = (el) => { const s = el && el.querySelector(".status"); return s ? s.textContent : ""; };
  document.addEventListener("htmx:oobBeforeSwap", (e) => {
    const old = e.detail.target;
    if (!old || !old.id || !old.id.startsWith("row-")) return;
    window.__rowSwaps.push({ id: old.id.slice(4), from: statusOf(old), to: statusOf(e.detail.fragment), t: Date.now() });
  });
  window.__visibleRows = () =>
    Array.from(document.querySelectorAll("tr[id^='row-']"), (tr) => [tr.id.slice(4), statusOf(tr)]);
})();
"""
ROW_RE = re.compile(r'<tr id="row-(inv_[0-9A-Za-z]+)"[^>]*>.*?<span class="status">([a-z-]+)</span>', re.S)
# "100+ new" (the cap) counts as 100: the ranks past it are not sampled.
BANNER_RE = re.compile(r'<div id="new-banner"[^>]*>(?:<a [^>]*>(\d+)\+? new invocation)?')


@dataclass
class Session:
    """One page load: its websocket (one URL, one `since`), when it opened, what arrived."""

    page: str
    url: str = ""
    opened: float | None = None
    since: float | None = None
    rows: list[tuple[float, str, str]] = field(default_factory=list)  # arrival, id, status
    banners: list[tuple[float, int]] = field(default_factory=list)  # arrival, count
    messages: int = 0


def sessions_from_log(entries: list[dict[str, Any]]) -> list[Session]:
    sessions: dict[str, Session] = {}
    for e in entries:
        key = f"{e['page']} {e['url']}"
        s = sessions.setdefault(key, Session(page=key, url=e["url"]))
        t = e["t"] / 1000
        if e.get("open"):
            s.opened = t if s.opened is None else min(s.opened, t)
            raw = parse_qs(urlsplit(e["url"]).query).get("since", [""])[0]
            if raw:
                s.since = datetime.fromisoformat(raw.replace(" ", "+")).timestamp()
            continue
        s.messages += 1
        data = e.get("data") or ""
        for inv_id, status in ROW_RE.findall(data):
            s.rows.append((t, inv_id, status))
        if m := BANNER_RE.search(data):
            s.banners.append((t, int(m.group(1) or 0)))
    return [s for s in sessions.values() if s.opened is not None]


@dataclass
class Sample:
    kind: str  # "row" or "new"
    freshness: float  # Restate's time of the change -> arrival in the browser
    sync: float  # Restate's time of the change -> our step sent its broadcast
    push: float  # broadcast sent -> arrival


@dataclass
class PageRows:
    """One page load's rows: their statuses when its socket was live and at the end, and the swaps in between."""

    opened: float
    closed: float
    initial: dict[str, str]
    final: dict[str, str]
    swaps: list[dict[str, Any]]
    oob_errors: int


@dataclass
class RowSwaps:
    changes: int  # status changes our sync committed to a shown row while its page was open
    swapped: int  # ... of which a row swap in the page carried the new status
    swaps: int  # row swaps that changed the status shown
    caught_up: int  # ... of which were changes from before the page's socket was live (sent on connect)
    stale_at_end: int  # rows whose status at the end of a page load was not the last one committed
    oob_errors: int


# A change committed this close to the end of a page load may still be on its way to the browser.
SWAP_GRACE_S = 2.0


def row_swaps(pages: list[PageRows], transitions: dict[str, list[tuple[float, str]]]) -> RowSwaps:
    result = RowSwaps(0, 0, 0, 0, 0, sum(p.oob_errors for p in pages))
    for p in pages:
        swapped_to = {(w["id"], w["to"]) for w in p.swaps}
        changed = [w for w in p.swaps if w["from"] != w["to"]]
        result.swaps += len(changed)
        for inv_id, shown in p.initial.items():
            history = transitions.get(inv_id, [])
            during = [(t, status) for t, status in history if p.opened < t <= p.closed - SWAP_GRACE_S]
            before = [status for t, status in history if t <= p.opened]
            result.changes += len(during)
            result.swapped += sum(1 for _t, status in during if (inv_id, status) in swapped_to)
            if before and before[-1] != shown:
                result.caught_up += 1
            settled = [status for t, status in history if t <= p.closed - SWAP_GRACE_S]
            late = any(p.closed - SWAP_GRACE_S < t for t, _s in history)
            if settled and not late and p.final.get(inv_id) != settled[-1]:
                result.stale_at_end += 1
    return result


@dataclass
class LiveResult:
    samples: list[Sample]
    steps: list[Step]
    sessions: int
    messages: int
    traffic_invocations: int
    traffic_errors: int
    sync_errors: list[str]
    window_s: float
    skipped_retried: int
    sql_by_statement: dict[str, float]  # over every step of the loop
    steps_total: int
    rows: RowSwaps


def freshness_samples(
    sessions: list[Session], changes: dict[tuple[str, str], Change], window: tuple[float, float]
) -> tuple[list[Sample], int]:
    from invocations.models import Invocation

    samples: list[Sample] = []
    skipped_retried = 0
    # Row status changes: the first fragment with that (id, status) after Restate made the change,
    # on a page that was already listening when it happened.
    first_fragment: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for s in sessions:
        assert s.opened is not None
        for t, inv_id, status in s.rows:
            first_fragment.setdefault((inv_id, status), []).append((t, s.opened))
    for key, change in changes.items():
        if not window[0] <= change.modified_at <= window[1] or key not in first_fragment:
            continue
        if change.retry_count:
            skipped_retried += 1  # a retry changes the row without moving modified_at
            continue
        arrivals = sorted(t for t, opened in first_fragment[key] if opened < change.modified_at <= t)
        if arrivals:
            samples.append(
                Sample(
                    "row",
                    arrivals[0] - change.modified_at,
                    change.committed - change.modified_at,
                    arrivals[0] - change.committed,
                )
            )
    # New invocations: the banner counts rows created after the page's newest row; the rows it
    # counts first are those our sync inserted first, so rank k is in the first message counting >= k.
    committed_by_id: dict[str, float] = {}
    for (inv_id, _status), c in changes.items():
        committed_by_id[inv_id] = min(c.committed, committed_by_id.get(inv_id, c.committed))
    for s in sessions:
        if s.since is None or not s.banners or s.opened is None:
            continue
        newer = list(
            Invocation.objects.filter(created_at__gt=datetime.fromtimestamp(s.since, UTC))
            .order_by("first_seen_at", "id")
            .values_list("id", "created_at")
        )
        known = s.banners[0][1]  # counted when the page connected: not a push
        for rank, (inv_id, created_at) in enumerate(newer, start=1):
            if rank <= known:
                continue
            arrival = next((t for t, count in s.banners if count >= rank), None)
            created = created_at.timestamp()
            if arrival is None or created <= s.opened or not window[0] <= created <= window[1]:
                continue
            committed = committed_by_id.get(inv_id, arrival)
            samples.append(Sample("new", arrival - created, committed - created, arrival - committed))
    return samples, skipped_retried


def start_daphne(database_url: str, redis_url: str, log_path: Path) -> tuple[ManagedProcess, str]:
    from demo.stack import free_port, start_web

    port = free_port()
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "LOG_LEVEL": "WARNING",
        "DJANGO_ALLOW_ASYNC_UNSAFE": "",
    }
    return start_web(port, log_path, env), f"http://127.0.0.1:{port}"


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def live_freshness(
    *, tmp: Path, database_url: str, redis_url: str, rate: float, warmup_s: float, window_s: float, reload_s: float
) -> LiveResult:
    from demo.stack import DemoStack
    from demo.traffic import run_traffic
    from invocations.mirror.sync.engine import SyncEngine
    from invocations.models import SyncState
    from invocations.restate import RestateClient

    stack: DemoStack | None = None
    daphne: ManagedProcess | None = None
    loop: SyncLoop | None = None
    stop_traffic = threading.Event()
    traffic_thread: threading.Thread | None = None
    stats_box: list[Any] = []
    entries: list[dict[str, Any]] = []
    loads: list[PageRows] = []
    traffic_client: RestateClient | None = None
    sync_client: RestateClient | None = None
    exits = contextlib.ExitStack()
    try:
        progress("starting restate-server and the demo services")
        stack = DemoStack.start(tmp / "stack")
        progress("starting daphne")
        daphne, base_url = start_daphne(database_url, redis_url, tmp / "daphne.log")
        traffic_client = RestateClient(stack.admin_url, stack.ingress_url, timeout=30)
        sync_client = RestateClient(stack.admin_url, stack.ingress_url, timeout=30)
        # The periodic reconcile (every 180 s) would mark the synthetic rows gone from this
        # Restate, which never held them: count it as done, so the window sees steady steps.
        SyncState.load()
        SyncState.objects.filter(id=1).update(last_reconcile_at=datetime.now(UTC))
        loop = SyncLoop(SyncEngine(sync_client))
        exits.enter_context(loop.timing_broadcasts())
        loop.start()

        def traffic() -> None:
            assert traffic_client is not None
            stats_box.append(run_traffic(traffic_client, rate_per_s=rate, stop_event=stop_traffic))

        traffic_thread = threading.Thread(target=traffic, name="traffic", daemon=True)
        traffic_thread.start()
        progress(f"demo traffic at {rate:g} patterns/s; {warmup_s:.0f} s warm-up, then Chromium")
        time.sleep(warmup_s)

        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                context.add_init_script(RECORDER_JS)
                page = context.new_page()
                page.set_default_timeout(30_000)
                page.goto(f"{base_url}/login/?next=/invocations/")
                page.fill("#id_username", USERNAME)
                page.fill("#id_password", PASSWORD)
                page.click("section.login button[type=submit]")
                page.wait_for_url(f"{base_url}/invocations/")
                page.wait_for_selector("#live[data-state=live]")
                window_start = time.time()
                progress(f"measuring for {window_s:.0f} s (list page reloaded every {reload_s:.0f} s)")

                def page_rows(opened: float, initial: dict[str, str]) -> PageRows:
                    return PageRows(
                        opened=opened,
                        closed=time.time(),
                        initial=initial,
                        final=dict(page.evaluate("window.__visibleRows()")),
                        swaps=page.evaluate("window.__rowSwaps.splice(0)"),
                        oob_errors=page.evaluate("window.__oobErrors"),
                    )

                opened, initial = time.time(), dict(page.evaluate("window.__visibleRows()"))
                while time.time() - window_start < window_s:
                    page.wait_for_timeout(min(reload_s, window_s - (time.time() - window_start)) * 1000)
                    entries += page.evaluate("window.__wsLog.splice(0)")
                    if time.time() - window_start < window_s:
                        loads.append(page_rows(opened, initial))
                        page.reload()
                        page.wait_for_selector("#live[data-state=live]")
                        opened, initial = time.time(), dict(page.evaluate("window.__visibleRows()"))
                window_end = time.time()
                # Let changes made at the end of the window arrive before the last read.
                stop_traffic.set()
                page.wait_for_timeout(4000)
                entries += page.evaluate("window.__wsLog.splice(0)")
                loads.append(page_rows(opened, initial))
            finally:
                browser.close()
        stop_traffic.set()
        traffic_thread.join(timeout=30)
        loop.stop()
        sessions = sessions_from_log(entries)
        samples, skipped = freshness_samples(sessions, loop.changes, (window_start, window_end))
        steps = [s for s in loop.steps if window_start <= s.started <= window_end]
        stats = stats_box[0] if stats_box else None
        return LiveResult(
            samples=samples,
            steps=steps,
            sessions=len(sessions),
            messages=sum(s.messages for s in sessions),
            traffic_invocations=stats.invocations if stats else 0,
            traffic_errors=stats.errors if stats else 0,
            sync_errors=loop.errors,
            window_s=window_end - window_start,
            skipped_retried=skipped,
            sql_by_statement=loop.sql_by_statement,
            steps_total=len(loop.steps),
            rows=row_swaps(loads, loop.transitions),
        )
    finally:
        stop_traffic.set()
        if traffic_thread is not None:
            traffic_thread.join(timeout=30)
        if loop is not None:
            loop.stop()
        exits.close()
        if daphne is not None:
            daphne.stop()
        for client in (traffic_client, sync_client):
            if client is not None:
                client.close()
        if stack is not None:
            stack.stop()


def describe(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    return f"{ms(statistics.median(values))} / {ms(quantile(values, 0.95))} / {ms(max(values))}"


def say_live(live: LiveResult, args: argparse.Namespace, invocations: int) -> None:
    """Part 4's report."""
    rows_s = [s.freshness for s in live.samples if s.kind == "row"]
    new_s = [s.freshness for s in live.samples if s.kind == "new"]
    all_s = [s.freshness for s in live.samples]
    sync_s = [s.sync for s in live.samples]
    push_s = [s.push for s in live.samples]
    step_s = [s.duration_s for s in live.steps]
    gaps = [b.started - a.started for a, b in zip(live.steps, live.steps[1:], strict=False)]
    say(
        f"\n4. Live-update freshness in Chromium under demo load ({args.rate:g} patterns/s, "
        f"{live.traffic_invocations:,} ingress invocations, {live.traffic_errors} send errors), "
        f"{live.window_s:.0f} s, {live.sessions} page loads, {live.messages:,} websocket messages; "
        f"{invocations:,} synthetic rows in the table (ms)"
    )
    say(
        table(
            ["state change -> fragment in the browser", "samples", "p50", "p95", "max"],
            [
                [label, len(v), *describe(v).split(" / ")] if v else [label, 0, "n/a", "n/a", "n/a"]
                for label, v in (
                    ("row status change (modified_at -> row fragment)", rows_s),
                    ("new invocation (created_at -> 'N new' banner)", new_s),
                    ("all", all_s),
                    ("  part 1: change in Restate -> our step's broadcast", sync_s),
                    ("  part 2: broadcast -> message in the browser", push_s),
                )
            ],
        )
    )
    say(
        f"   sync steps in the window: {len(step_s)}, step p50 {ms(statistics.median(step_s)) if step_s else 'n/a'} ms, "
        f"p95 {ms(quantile(step_s, 0.95)) if step_s else 'n/a'} ms; poll interval (start to start) p50 "
        f"{ms(statistics.median(gaps)) if gaps else 'n/a'} ms; sync errors {len(live.sync_errors)}; "
        f"row changes with retries not sampled: {live.skipped_retried}"
    )
    if live.steps_total:
        sql_s = [s.sql_s for s in live.steps]
        statement, spent = max(live.sql_by_statement.items(), key=lambda kv: kv[1])
        say(
            f"   PostgreSQL time per sync step p50 {ms(statistics.median(sql_s)) if sql_s else 'n/a'} ms; "
            f"costliest statement {ms(spent / live.steps_total)} ms per step: {short_sql(statement)}"
        )
    r = live.rows
    say(
        f"   list rows swapped in place: {r.swapped} of the {r.changes} status changes our sync committed to a "
        f"row a page showed while it was open ({r.swaps} swaps changed a status, {r.caught_up} of them "
        f"catching up on connect); rows showing a stale status at the end of a page load: {r.stale_at_end}; "
        f"htmx:oobErrorNoTarget: {r.oob_errors}"
    )


# ---------------------------------------------------------------- main


# ---------------------------------------------------------------- 6. delayed messages

DELAYED_TARGET_MS = 100.0  # the bound on /delayed/ at 100,000 pending messages


def delayed_requests(result: GenerationResult) -> list[Request]:
    """The /delayed/ requests: cursors followed the way the page hands them out."""
    from urllib.parse import urlencode

    from invocations.graph.fires import RANGES, bucket_floor
    from invocations.reads.delayed_filters import DelayedFilters
    from invocations.reads.presenters.formatting import iso_utc
    from invocations.reads.selectors import delayed as selectors

    filters = DelayedFilters().invocation_filters()
    after = None
    for _ in range(19):  # "Later →" 19 times: the 20th page
        page = selectors.delayed_page(filters=filters, after=after)
        after = page.next_cursor
    assert after is not None and result.delayed_burst_at is not None
    # The week chart's bar that holds the burst (6-hour buckets), as its link gives it.
    bar = bucket_floor(result.delayed_burst_at, RANGES["week"].bucket)
    window = {"fires_after": iso_utc(bar), "fires_before": iso_utc(bar + RANGES["week"].bucket)}

    return [
        Request("first page, day chart", "/delayed/"),
        Request("hour chart", "/delayed/?chart=hour"),
        Request("week chart", "/delayed/?chart=week"),
        Request("20th page (19 cursors in)", f"/delayed/?after={after.encode()}"),
        Request("target filter (Email/send)", "/delayed/?service=Email&handler=send"),
        Request("sender filter (Reminders/remind)", "/delayed/?sender_service=Reminders&sender_handler=remind"),
        Request("the 03:00 bar clicked (week chart)", f"/delayed/?chart=week&{urlencode(window)}"),
        Request("htmx partial (first page)", "/delayed/", htmx=True),
    ]


@dataclass
class DelayedTimes:
    pending: int
    invocations: int
    requests: dict[str, Timed]
    fragment: list[float]  # the socket's render of chart + table after a change
    bare: dict[str, tuple[float, str]] = field(default_factory=dict)  # EXPLAIN ANALYZE: seconds, plan


def time_delayed(client: Client, result: GenerationResult, reps: int, *, explain_queries: bool) -> DelayedTimes:
    from invocations.live.fragments import DelayedView
    from invocations.models import Invocation
    from invocations.reads.delayed_filters import DelayedFilters

    requests = delayed_requests(result)
    timed = time_requests(client, requests, reps)
    view = DelayedView(filters=DelayedFilters(), can_operate=True)
    fragment = []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        view.parts()
        if i:
            fragment.append(time.perf_counter() - t0)
    pending = Invocation.objects.filter(status="scheduled", gone_from_restate_at__isnull=True).count()
    out = DelayedTimes(pending, Invocation.objects.count(), timed, fragment)
    if explain_queries:
        first = timed["first page, day chart"]
        rows_query = next(q for q in first.queries if "LIMIT 51" in q.sql)
        chart_query = next(q for q in first.queries if "generate_series" in q.sql)
        out.bare = {
            "the page's ids in fire order (LIMIT 51)": explain(rows_query),
            "the chart's counts (a range count per bar, capped counts around)": explain(chart_query),
        }
    return out


def measure_delayed(client: Client, args: argparse.Namespace) -> tuple[DelayedTimes, DelayedTimes]:
    """Part 6 with its own data: 1% of --delayed among --baseline invocations, then --delayed among --count."""
    small_n = max(1, args.delayed // 100)
    delete_generated()  # the full run's data set: this part makes its own
    progress(f"delayed: generating {args.baseline:,} invocations + {small_n:,} delayed messages (baseline)")
    small = generate(args.baseline, seed=args.seed, big_tree=0, delayed=small_n)
    progress(f"delayed: baseline requests x{args.reps}")
    base = time_delayed(client, small, args.reps, explain_queries=False)
    delete_generated()
    progress(f"delayed: generating {args.count:,} invocations + {args.delayed:,} delayed messages")
    big = generate(args.count, seed=args.seed, big_tree=0, delayed=args.delayed)
    progress(f"delayed: requests x{args.reps}")
    return time_delayed(client, big, args.reps, explain_queries=True), base


def report_delayed(big: DelayedTimes, base: DelayedTimes) -> list[list[str]]:
    say(
        f"\n6. Delayed messages /delayed/ with {big.pending:,} pending among {big.invocations:,} invocations "
        f"({len(big.fragment)} rounds, ms; baseline {base.pending:,} pending among {base.invocations:,})"
    )
    rows = []
    for label, t in big.requests.items():
        b = base.requests[label]
        rows.append(
            [
                label,
                ms(t.median),
                ms(t.p95),
                f"{t.sql_share:.0%}",
                len(t.queries),
                ms(b.median),
                f"{t.median / b.median:.1f}x",
            ]
        )
    frag, base_frag = statistics.median(big.fragment), statistics.median(base.fragment)
    rows.append(
        [
            "live fragment (chart + table)",
            ms(frag),
            ms(quantile(big.fragment, 0.95)),
            "",
            "",
            ms(base_frag),
            f"{frag / base_frag:.1f}x",
        ]
    )
    say(table(["request", "median", "p95", "SQL share", "queries", "median @1%", "ratio"], rows))
    say("\n   The page's main queries alone (EXPLAIN ANALYZE, best of 3; ms):")
    first = big.requests["first page, day chart"]
    for label, (seconds, plan) in big.bare.items():
        say(f"   {label}: {ms(seconds)} ms ({plan})")
    bare_total = sum(seconds for seconds, _ in big.bare.values())
    say(f"   first page / its two main queries: {first.median / bare_total:.1f}x")
    worst = max(big.requests.values(), key=lambda t: t.median)
    verdict = "met" if worst.median * 1000 < DELAYED_TARGET_MS else "MISSED"
    return [
        [
            f"/delayed/ at {big.pending:,} pending: first page median / p95 (ms)",
            f"{ms(first.median)} / {ms(first.p95)}",
        ],
        [
            f"/delayed/ slowest request median (target < {DELAYED_TARGET_MS:.0f} ms: {verdict})",
            f"{ms(worst.median)} ({next(k for k, v in big.requests.items() if v is worst)})",
        ],
        [
            f"/delayed/ first page, {big.pending:,} / {base.pending:,} pending",
            f"{first.median / base.requests['first page, day chart'].median:.1f}x",
        ],
    ]


def delayed_only(client: Client, args: argparse.Namespace, started: float) -> int:
    big, base = measure_delayed(client, args)
    summary = report_delayed(big, base)
    summary.append(["benchmark runtime", f"{time.monotonic() - started:.0f} s"])
    say("\nSummary")
    say(table(["figure", "value"], summary))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="invocations generated for the measurements")
    parser.add_argument("--baseline", type=int, default=10_000, help="invocations for the baseline run")
    parser.add_argument("--big-tree", type=int, default=10_000, help="nodes in the big tree")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reps", type=int, default=30, help="rounds of list requests (and small detail pages)")
    parser.add_argument("--big-reps", type=int, default=20, help="rounds of big-tree detail pages")
    parser.add_argument("--tree-reps", type=int, default=10, help="rounds of tree building/rendering")
    parser.add_argument("--rate", type=float, default=8.0, help="demo traffic patterns per second")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of traffic before the browser connects")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of live measurement")
    parser.add_argument("--reload", type=float, default=10.0, help="seconds between list page reloads")
    parser.add_argument("--no-live", action="store_true", help="skip the live-update part (no Restate, no browser)")
    parser.add_argument("--map-cold-reps", type=int, default=5, help="cold service map requests per window")
    parser.add_argument("--only-service-map", action="store_true", help="run the service map part (5.) alone")
    parser.add_argument("--delayed", type=int, default=100_000, help="pending delayed messages for part 6")
    parser.add_argument("--only-delayed", action="store_true", help="run the delayed messages part (6.) alone")
    parser.add_argument(
        "--live-only", action="store_true", help="only the live-update part, with --count rows in the table"
    )
    args = parser.parse_args(argv)
    if args.only_service_map or args.only_delayed:
        args.no_live = True

    if not args.no_live and not Path(CHROMIUM).exists():
        say(f"{CHROMIUM} is missing: `make browser` installs Debian's Chromium (or pass --no-live)")
        return 2

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="pages-bench-"))
    scratch: ScratchDatabase | None = None
    redis_proc: subprocess.Popen[bytes] | None = None
    try:
        progress("scratch database, Redis, migrations")
        scratch = ScratchDatabase.create("pages")
        from dashboard import embedded_redis
        from demo.stack import free_port

        redis_port = free_port()
        redis_proc = embedded_redis.start(tmp / "redis", redis_port)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        # Settings read these: the sync loop's broadcasts go through Redis to Daphne.
        os.environ["DATABASE_URL"] = scratch.url
        os.environ["REDIS_URL"] = redis_url
        os.environ["LOG_LEVEL"] = "WARNING"
        # Playwright's sync API runs an event loop in this thread; our ORM calls stay synchronous.
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
        import django

        django.setup()
        from django.contrib.auth.models import User
        from django.core.management import call_command
        from django.db import connection
        from django.test import Client

        call_command("migrate", verbosity=0)
        user = User.objects.create_user(USERNAME, password=PASSWORD)
        client = Client(HTTP_HOST="localhost")
        client.force_login(user)
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            pg_version = cursor.fetchone()[0]
        say(f"Page benchmark ({os.cpu_count()} CPUs, PostgreSQL {pg_version}; times are server time in-process)")
        if args.only_service_map:
            return service_map_only(client, args, started)
        if args.only_delayed:
            return delayed_only(client, args, started)

        if args.live_only:
            progress(f"generating {args.count:,} invocations")
            generated = generate(args.count, seed=args.seed, big_tree=0)
            from django.db import connections

            connections.close_all()
            only = live_freshness(
                tmp=tmp,
                database_url=scratch.url,
                redis_url=redis_url,
                rate=args.rate,
                warmup_s=args.warmup,
                window_s=args.window,
                reload_s=args.reload,
            )
            say_live(only, args, generated.invocations)
            say(f"\nbenchmark runtime {time.monotonic() - started:.0f} s")
            return 0

        # ---- baseline data set
        progress(f"generating {args.baseline:,} invocations (baseline)")
        small = generate(args.baseline, seed=args.seed, big_tree=0)
        assert small.small_tree_node
        progress(f"baseline: list and detail requests x{args.reps}")
        base_list = time_requests(client, list_requests(), args.reps)
        base_detail = time_requests(
            client, [Request("node of a 4-node tree", f"/invocations/{small.small_tree_node}/")], args.reps
        )
        base_map = measure_service_map(client, args)
        delete_generated()

        # ---- the big data set
        progress(f"generating {args.count:,} invocations with manage.py generate_invocations")
        big = generate(args.count, seed=args.seed, big_tree=args.big_tree)
        assert big.small_tree_node and big.big_tree_root and big.big_tree_leaf
        say(
            f"\nData: {big.invocations:,} invocations in {big.trees:,} trees, {big.edges:,} edges, generated in "
            f"{big.seconds:.1f} s by `manage.py generate_invocations` (VACUUM ANALYZE included); {table_sizes()}"
        )
        say(f"      baseline: {small.invocations:,} invocations generated in {small.seconds:.1f} s")
        scale, base_scale = short_count(big.invocations), short_count(small.invocations)
        progress(f"list requests x{args.reps}")
        requests = list_requests()
        big_list = time_requests(client, requests, args.reps)

        say(f"\n1. List page /invocations/ with {big.invocations:,} invocations ({args.reps} rounds, ms)")
        rows = []
        for req in requests:
            t, b = big_list[req.label], base_list[req.label]
            rows.append(
                [
                    req.label,
                    ms(t.median),
                    ms(t.p95),
                    f"{t.sql_share:.0%}",
                    ms(b.median),
                    f"{t.median / b.median:.1f}x",
                ]
            )
        say(table(["request", "median", "p95", "SQL share", f"median @{base_scale}", f"{scale} / {base_scale}"], rows))
        progress("EXPLAIN ANALYZE of each page's queries")
        say(f"\n   The page's own queries, as it ran them (EXPLAIN ANALYZE at {big.invocations:,}, best of 3; ms)")
        rows = []
        plans = []
        counts_s: dict[str, float] = {}
        for req in requests:
            t = big_list[req.label]
            page_s, page_plan = explain(main_query(t))
            count_s, count_plan = explain_counts(t)
            counts_s[req.label] = count_s
            rows.append([req.label, ms(page_s), ms(count_s), f"{ms(t.slowest.seconds)}", f"{t.median / page_s:.0f}x"])
            plans.append((req.label, page_plan, count_plan))
        say(table(["request", "rows query", "status counts", "slowest query in page", "page / rows query"], rows))
        say("\n   Plans (top nodes down to the scan):")
        for label, page_plan, count_plan in plans:
            say(f"   {label}:\n     rows:   {page_plan}\n     counts: {count_plan}")

        progress("detail pages")
        detail = time_requests(
            client, [Request("node of a 4-node tree", f"/invocations/{big.small_tree_node}/")], args.reps
        )
        detail |= time_requests(
            client,
            [
                Request(f"root of the {big.big_tree_size:,}-node tree", f"/invocations/{big.big_tree_root}/"),
                Request(f"deepest leaf of the {big.big_tree_size:,}-node tree", f"/invocations/{big.big_tree_leaf}/"),
            ],
            args.big_reps,
        )
        say(f"\n2. Detail page /invocations/<id>/ with {big.invocations:,} invocations (ms)")
        b = base_detail["node of a 4-node tree"]
        say(
            table(
                ["page", "runs", "median", "p95", "SQL share", "KiB", f"/ 4-node @{base_scale}"],
                [
                    [
                        label,
                        len(t.seconds),
                        ms(t.median),
                        ms(t.p95),
                        f"{t.sql_share:.0%}",
                        t.size // 1024,
                        f"{t.median / b.median:.1f}x",
                    ]
                    for label, t in detail.items()
                ]
                + [
                    [
                        f"baseline: node of a 4-node tree @{small.invocations:,}",
                        len(b.seconds),
                        ms(b.median),
                        ms(b.p95),
                        f"{b.sql_share:.0%}",
                        b.size // 1024,
                        "1.0x",
                    ]
                ],
            )
        )
        leaf = detail[f"deepest leaf of the {big.big_tree_size:,}-node tree"]
        say(f"   slowest query on the big-tree leaf page: {ms(leaf.slowest.seconds)} ms: {short_sql(leaf.slowest.sql)}")

        progress(f"tree build and render x{args.tree_reps}")
        tree = time_tree(big.big_tree_root, args.tree_reps)
        build = [sum(v) for v in zip(*(tree.parts[k] for k in list(tree.parts)[:3]), strict=True)]
        partial = tree.parts["#tree partial: detail_context + render"]
        say(
            f"\n3. Tree of {tree.nodes:,} nodes ({tree.rows:,} rows rendered, {tree.html_kib} KiB partial; "
            f"median of {args.tree_reps}, ms)"
        )
        say(
            table(
                ["part", "median", "max"],
                [[k, ms(statistics.median(v)), ms(max(v))] for k, v in tree.parts.items()]
                + [
                    [
                        "building the tree (tree_get + build_tree + flatten)",
                        ms(statistics.median(build)),
                        ms(max(build)),
                    ]
                ],
            )
        )
        say(
            f"   partial (build + render) / building alone: {statistics.median(partial) / statistics.median(build):.2f}x"
        )

        big_map = measure_service_map(client, args)
        explained, concurrent = service_map_extras()
        costs = measure_rollup_costs()
        map_summary = report_service_map(
            big_map,
            base_map,
            scale=scale,
            base_scale=base_scale,
            explained=explained,
            concurrent=concurrent,
            costs=costs,
            generated_rollup_s=big.rollup_seconds,
        )

        live: LiveResult | None = None
        if not args.no_live:
            from django.db import connections

            connections.close_all()
            live = live_freshness(
                tmp=tmp,
                database_url=scratch.url,
                redis_url=redis_url,
                rate=args.rate,
                warmup_s=args.warmup,
                window_s=args.window,
                reload_s=args.reload,
            )
            say_live(live, args, big.invocations)

        delayed_big, delayed_base = measure_delayed(client, args)
        delayed_summary = report_delayed(delayed_big, delayed_base)

        total_s = time.monotonic() - started
        say("\nSummary")
        first, b_first = big_list["first page"], base_list["first page"]
        deep = big_list["oldest 1% (99% deep)"]
        summary = [
            [
                f"list page, first page @{scale}: median / p95 (ms)",
                f"{ms(first.median)} / {ms(first.p95)}",
            ],
            [
                "list page, all 9 requests: median of medians / worst p95 (ms)",
                f"{ms(statistics.median(t.median for t in big_list.values()))} / "
                f"{ms(max(t.p95 for t in big_list.values()))}",
            ],
            ["list page, oldest 1% (99% deep): median / p95 (ms)", f"{ms(deep.median)} / {ms(deep.p95)}"],
            [
                f"list page first page, {scale} / {base_scale}",
                f"{first.median / b_first.median:.1f}x (status counts query: {ms(counts_s['first page'])} ms of it)",
            ],
            [
                "detail page, 4-node tree: median / p95 (ms)",
                f"{ms(detail['node of a 4-node tree'].median)} / {ms(detail['node of a 4-node tree'].p95)}",
            ],
            [
                f"detail page, {big.big_tree_size:,}-node tree leaf: median / p95 (ms)",
                f"{ms(leaf.median)} / {ms(leaf.p95)}",
            ],
            [
                f"tree partial, {tree.nodes:,} nodes: build + render median (ms)",
                f"{ms(statistics.median(partial))} (building alone {ms(statistics.median(build))})",
            ],
        ]
        if live is not None:
            summary += [
                ["live freshness p50 / p95 / max (ms), all samples", describe([s.freshness for s in live.samples])],
                [
                    "  row status changes / new-invocation banner p50 (ms)",
                    f"{describe([s.freshness for s in live.samples if s.kind == 'row']).split(' / ')[0]} / "
                    f"{describe([s.freshness for s in live.samples if s.kind == 'new']).split(' / ')[0]}",
                ],
                ["  samples", f"{len(live.samples):,}"],
            ]
        summary += map_summary
        summary += delayed_summary
        summary += [
            [f"data generation, {big.invocations:,} invocations", f"{big.seconds:.1f} s"],
            ["benchmark runtime", f"{total_s:.0f} s"],
        ]
        say(table(["figure", "value"], summary))
        return 0
    finally:
        if scratch is not None:
            try:
                from django.db import connections

                connections.close_all()
            except Exception:  # noqa: BLE001 - Django may not be set up yet; the drop below still runs
                pass
            scratch.drop()
        stop_process(redis_proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
