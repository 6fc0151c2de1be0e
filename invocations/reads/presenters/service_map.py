"""The service map as a drawing: its data (`selectors.service_map`, sums of hourly
rollups) laid out by Graphviz (`graph.layout`), with the links, labels and names the
template draws.

Caches, none needing a thread:
- in a table every process shares (`DrawingCache`): dot's layouts, keyed by a hash of
  the graph's DOT source with the digits of its labels zeroed (a count that changes
  without changing its width, 12 -> 47, lays out the same: dot runs once per graph
  shape, for every process), and rendered drawings, keyed by a hash of everything they
  show (a new process, or another replica, serves a map already drawn without drawing it);
- in this process: the geometry parsed from a layout, per shape, and the whole map per
  window, current while the rollups' generation and the window's start are the ones it
  was computed at (and reused for a few seconds beyond, while traffic keeps changing them).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import astuple, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from django.db import connection
from django.template.loader import get_template, render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import SafeString

from invocations.graph import layout as layout_module
from invocations.graph.layout import (
    Drawing,
    DrawingError,
    GraphEdge,
    GraphNode,
    PlacedEdge,
    PlacedNode,
    dot_source,
    draw,
    run_dot,
)
from invocations.mirror.models import DrawingCache
from invocations.reads.presenters.formatting import iso_utc
from invocations.reads.selectors.service_map import (
    INGRESS,
    PERCENTILE_SAMPLE,
    MapEdge,
    MapNode,
    Pending,
    ServiceMap,
    pending_hours,
    rollup_generation,
    service_map_get,
    window_start,
)
from invocations.reads.shared import cached_once

NODE_W = 230
NODE_H = 64
INGRESS_W = 110
INGRESS_H = 44
NAME_CHARS = 30  # what fits in a box at 12.5px bold; the full name is in the title
TIMES = "\N{MULTIPLICATION SIGN}"  # labels read "call <times>12"; named so no one mistakes it for an x
SEPARATOR = " \N{MIDDLE DOT} "
# What a label's digits become in the DOT source: dot needs the width, not the count.
_DIGIT = re.compile(r"\d")
KIND_LABELS = {"call": "call", "send": "send", "delayed_send": "delayed", INGRESS: ""}


@dataclass(frozen=True)
class Window:
    key: str
    span: timedelta
    label: str
    # A computed map is reused this long after the rollups changed under it: under steady
    # traffic they change every second, and a recomputation costs up to a few hundred ms.
    fresh_s: float


# The windows offered; anything else in the URL is refused rather than guessed at.
WINDOWS: dict[str, Window] = {
    w.key: w
    for w in (
        Window("1h", timedelta(hours=1), "last hour", fresh_s=5.0),
        Window("1d", timedelta(days=1), "last day", fresh_s=15.0),
        Window("7d", timedelta(days=7), "last week", fresh_s=30.0),
    )
}
DEFAULT_WINDOW = "1h"
CACHE_PREFIX = "service-map:v3:"
CACHE_TIMEOUT_S = 1800.0
# Entries kept in the shared table, newest first, per kind: a dense map's layout is ~40 KB
# compressed, its rendered drawing ~100 KB.
KEPT = {"layout": 200, "map": 60}
# Rollup hours waiting longer than this mean the rollup worker is behind or not running.
PENDING_WARN_S = 60.0


@dataclass(frozen=True)
class LabelPart:
    kind: str
    text: str  # "call <times>12"
    href: str  # the list of exactly these: callees of this pair through this kind
    title: str = ""  # "A/x → B/y: call <times>12"


@dataclass(frozen=True)
class NodeView:
    node: MapNode
    href: str
    name: str  # possibly shortened to fit its box
    box: PlacedNode | None  # None when there is no drawing

    @property
    def title(self) -> str:
        s = self.node.stats
        if self.node.is_ingress:
            return f"ingress: {s.invocations} invocations sent from outside Restate (roots)"
        kind = f" ({self.node.service_type})" if self.node.service_type else ""
        text = f"{self.node.id}{kind}: {s.invocations} invocations, {s.completed} completed, {s.failed} failed"
        if s.p50 is not None and s.percentiles_sampled:
            text += f"; p50/p95 over the latest {s.sampled} completed"
        return text


@dataclass(frozen=True)
class EdgeView:
    # Plain fields, computed once: a dense map renders over four hundred of these.
    edge: MapEdge
    href: str  # the list of every callee of this pair
    parts: list[LabelPart]
    route: PlacedEdge | None
    kind: str  # the kind the line is drawn as
    label: str  # "call <times>3 · send <times>2"
    source_label: str  # "the ingress" or the caller's id
    title: str


def _edge_view(edge: MapEdge, href: str, parts: list[LabelPart], route: PlacedEdge | None) -> EdgeView:
    label = SEPARATOR.join(p.text for p in parts)
    source = "the ingress" if edge.source == INGRESS else edge.source
    return EdgeView(edge, href, parts, route, edge.kind, label, source, f"{source} → {edge.target}: {label}")


@dataclass(frozen=True)
class MapView:
    smap: ServiceMap
    nodes: list[NodeView]
    edges: list[EdgeView]
    width: float = 0.0
    height: float = 0.0
    drawing_error: str = ""  # why there is no drawing (the tables list everything anyway)

    @property
    def drawn(self) -> bool:
        return bool(self.nodes) and all(n.box is not None for n in self.nodes)

    @property
    def handlers(self) -> list[NodeView]:
        return [n for n in self.nodes if not n.node.is_ingress]


@functools.lru_cache(maxsize=4096)
def _quoted(value: str) -> str:
    return quote_plus(value)


def _list_url(base: str, **params: str) -> str:
    """`urlencode` for our string parameters, each distinct value quoted once (a dense map
    has over a thousand links made of a few dozen names)."""
    return base + "?" + "&".join(f"{key}={_quoted(value)}" for key, value in params.items())


def _parts(base: str, edge: MapEdge, caller: MapNode | None, callee: MapNode | None, after: str) -> list[LabelPart]:
    """One part per kind, each linking to exactly the callees it counts."""
    target = {"service": callee.service, "handler": callee.handler} if callee else {}
    source = "the ingress" if edge.source == INGRESS else edge.source
    parts = []
    for kind, count in edge.counts:
        word = KIND_LABELS.get(kind, kind)
        if kind == INGRESS or caller is None:
            params = {**target, "roots": "1"}
        else:
            params = {**target, "caller_service": caller.service, "caller_handler": caller.handler, "kind": kind}
        text = f"{word} {TIMES}{count}" if word else f"{TIMES}{count}"
        title = f"{source} → {edge.target}: {text}"
        parts.append(LabelPart(kind, text, _list_url(base, **params, created_after=after), title))
    return parts


def _view(smap: ServiceMap) -> MapView:
    # Full precision: the list must count exactly the rows the map counted.
    after = iso_utc(smap.since)
    base = reverse("invocations:list")  # once: a dense map has over a thousand links
    by_id = {n.id: n for n in smap.nodes}
    node_hrefs = {
        n.id: _list_url(base, roots="1", created_after=after)
        if n.is_ingress
        else _list_url(base, service=n.service, handler=n.handler, created_after=after)
        for n in smap.nodes
    }
    edge_views = []
    for e in smap.edges:
        caller, callee = by_id.get(e.source), by_id.get(e.target)
        parts = _parts(base, e, None if e.source == INGRESS else caller, callee, after)
        # The line stands for every kind: its link lists them all (one part = its own link).
        href = parts[0].href if len(parts) == 1 else _line_href(base, caller, callee, after)
        edge_views.append(_edge_view(e, href, parts, None))

    graph_nodes = [
        GraphNode(n.id, INGRESS_W, INGRESS_H, label="ingress", cls="ingress", first=True)
        if n.is_ingress
        else GraphNode(n.id, NODE_W, NODE_H, label=n.id)
        for n in smap.nodes
    ]
    # Digits zeroed: the layout depends on a label's width, not on its counts (see layout_of).
    graph_edges = [
        GraphEdge(v.edge.source, v.edge.target, _DIGIT.sub("0", v.label), cls=v.edge.kind) for v in edge_views
    ]
    error = ""
    placed_nodes: list[PlacedNode | None] = [None] * len(smap.nodes)
    placed_edges: list[PlacedEdge | None] = [None] * len(edge_views)
    width = height = 0.0
    if smap.nodes:
        try:
            drawing = drawing_cached(graph_nodes, graph_edges)
        except DrawingError as exc:
            error = str(exc)
        else:
            placed_nodes = list(drawing.nodes)
            placed_edges = list(drawing.edges)
            width, height = drawing.width, drawing.height
    nodes = [
        NodeView(n, node_hrefs[n.id], n.id if len(n.id) <= NAME_CHARS else n.id[: NAME_CHARS - 1] + "…", box)
        for n, box in zip(smap.nodes, placed_nodes, strict=True)
    ]
    edges = [replace(v, route=route) for v, route in zip(edge_views, placed_edges, strict=True)]
    return MapView(
        smap=smap,
        nodes=nodes,
        edges=edges,
        width=width,
        height=height,
        drawing_error=error,
    )


def _line_href(base: str, caller: MapNode | None, callee: MapNode | None, after: str) -> str:
    params: dict[str, str] = {}
    if callee is not None:
        params |= {"service": callee.service, "handler": callee.handler}
    if caller is not None and not caller.is_ingress:
        params |= {"caller_service": caller.service, "caller_handler": caller.handler}
    return _list_url(base, **params, created_after=after)


def _shared_get(key: str) -> bytes | None:
    value = DrawingCache.objects.filter(key=key).values_list("value", flat=True).first()
    return None if value is None else zlib.decompress(value)


def _shared_put(kind: str, key: str, value: bytes) -> None:
    DrawingCache.objects.bulk_create(
        [DrawingCache(key=key, value=zlib.compress(value, 1), created_at=timezone.now())],
        ignore_conflicts=True,  # another process got there first with the same thing
    )
    table = DrawingCache._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {table} WHERE key IN (SELECT key FROM {table} WHERE key LIKE %s "
            "ORDER BY created_at DESC OFFSET %s)",
            [f"{kind}:%", KEPT[kind]],
        )


# Drawings parsed from dot's layouts in this process, by DOT source: the geometry of a shape
# is the same whatever its counts, so a map redrawn with new counts skips the parse (~30 ms
# for a dense map). A few per window are plenty.
_parsed: OrderedDict[str, Drawing] = OrderedDict()
_guard = threading.Lock()  # requests may run in threads: for _parsed
PARSED_KEPT = 16


def drawing_cached(nodes: list[GraphNode], edges: list[GraphEdge]) -> Drawing:
    """`draw` through both caches: dot's layout shared by processes, its geometry kept here."""
    source = dot_source(nodes, edges)
    with _guard:
        known = _parsed.get(source)
        if known is not None:
            _parsed.move_to_end(source)
    if known is None:
        known = draw(nodes, edges, run=layout_of)
        with _guard:
            _parsed[source] = known
            while len(_parsed) > PARSED_KEPT:
                _parsed.popitem(last=False)
    # The same geometry for this graph's own nodes and edges (the source names neither).
    return Drawing(
        [replace(p, node=n) for p, n in zip(known.nodes, nodes, strict=True)],
        [replace(p, edge=e) for p, e in zip(known.edges, edges, strict=True)],
        known.width,
        known.height,
    )


def layout_of(source: str) -> dict[str, Any]:
    """dot's layout of `source`, from the shared table, or run once and stored there."""
    key = "layout:" + hashlib.sha256(source.encode()).hexdigest()
    stored = _shared_get(key)
    if stored is not None:
        return json.loads(stored)
    out = run_dot(source)
    _shared_put("layout", key, json.dumps(out, separators=(",", ":")).encode())
    return out


@functools.cache
def _code_version() -> str:
    """A hash of what turns a map into HTML (this module, the layout, the template): a drawing
    stored by other code is never shown."""
    digest = hashlib.sha256()
    for path in (Path(__file__), Path(layout_module.__file__), _template_path()):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _template_path() -> Path:
    origin = get_template("invocations/service_map.html").origin  # type: ignore[attr-defined]
    return Path(origin.name)


def _drawing_key(smap: ServiceMap, window: Window) -> str:
    """Everything the drawing shows: the window's start (in every link), every node with its
    stats and every edge with its counts."""
    shown = (
        window.label,
        iso_utc(smap.since),
        [(n.id, n.service, n.handler, n.service_type, astuple(n.stats)) for n in smap.nodes],
        [(e.source, e.target, e.counts) for e in smap.edges],
    )
    return f"map:{_code_version()}:" + hashlib.sha256(repr(shown).encode()).hexdigest()


def map_view(*, window: timedelta, now: datetime) -> MapView:
    return _view(service_map_get(window=window, now=now))


@dataclass(frozen=True)
class Summary:
    """What the page says around the drawing: small, so a cached map unpickles in microseconds."""

    since: datetime
    computed_at: datetime
    invocations: int
    handlers: int
    ingress_roots: int
    edges: int
    compute_s: float
    drawn_here: bool = True  # False: the drawing came from the shared table

    @property
    def since_iso(self) -> str:
        return iso_utc(self.since)

    @property
    def since_label(self) -> str:
        """The window's exact start, in UTC: "14:00 UTC", or "Nov 21, 14:00 UTC" on another day."""
        since, now = self.since.astimezone(UTC), self.computed_at.astimezone(UTC)
        day = "" if since.date() == now.date() else f"{since:%b} {since.day}, "
        return f"{day}{since:%H:%M} UTC"


@dataclass(frozen=True)
class Computed:
    summary: Summary
    html: SafeString  # the drawing (or, without one, the tables), rendered once for every reader
    generation: int = 0  # of the rollups it was computed from
    stored: float = 0.0  # time.time()


def compute(*, window: Window, now: datetime) -> Computed:
    """The map computed now from the rollups, its drawing from the shared table when any
    process drew the same map before (else laid out, rendered and stored there)."""
    started = time.perf_counter()
    smap = service_map_get(window=window.span, now=now)
    key = _drawing_key(smap, window)
    stored = _shared_get(key)
    if stored is not None:
        html = SafeString(stored.decode())
    else:
        view = _view(smap)
        html = render_to_string("invocations/service_map.html#drawing", {"map": view, "window_label": window.label})
        if not view.drawing_error:  # a map drawn without dot is not the drawing to share
            _shared_put("map", key, html.encode())
    summary = Summary(
        since=smap.since,
        computed_at=now,
        invocations=smap.total_invocations,
        handlers=len(smap.handlers),
        ingress_roots=sum(n.stats.invocations for n in smap.nodes if n.is_ingress),
        edges=len(smap.edges),
        compute_s=time.perf_counter() - started,
        drawn_here=stored is None,
    )
    return Computed(summary, html)


def _usable(entry: Computed | None, generation: int, window: Window) -> bool:
    if entry is None:
        return False
    return entry.generation == generation or time.time() - entry.stored < window.fresh_s


def cache_key(window_key: str, now: datetime) -> str:
    """This process's cache entry for a window: one per window start (a new hour, a new entry)."""
    return f"{CACHE_PREFIX}{window_key}:{window_start(WINDOWS[window_key].span, now).isoformat()}"


def cached(*, window_key: str, now: datetime) -> Computed:
    """The map of a window: from this process's cache while the rollups it was computed
    from are current (or changed only moments ago), else computed now, once for every
    request of this process that wants it at the same moment (six at once cost six
    renders side by side otherwise: 1.9 s for the slowest).

    Bounded either way: a computation sums at most 168 hours of rollups, samples at most
    PERCENTILE_SAMPLE durations per handler, and reads dot's layout (and, when another
    process drew the same map, the drawing) from the shared table.
    """
    window = WINDOWS[window_key]
    generation = rollup_generation()  # first: a refresh committed after it only makes the entry older
    return cached_once(
        cache_key(window_key, now),
        usable=lambda entry: _usable(entry, generation, window),
        compute=lambda: replace(compute(window=window, now=now), generation=generation, stored=time.time()),
        timeout_s=CACHE_TIMEOUT_S,
    )


class UnknownWindow(ValueError):
    """A `window=` value that is not one of WINDOWS."""


def _pending_note(pending: Pending, now: datetime) -> Pending | None:
    """Hours still to be counted, when they have waited long enough to say so."""
    if not pending.hours or pending.since is None:
        return None
    return pending if (now - pending.since).total_seconds() > PENDING_WARN_S else None


def service_map_context(*, window_key: str | None, now: datetime) -> dict[str, Any]:
    key = DEFAULT_WINDOW if window_key is None else window_key
    if key not in WINDOWS:
        raise UnknownWindow(key)
    window = WINDOWS[key]
    result = cached(window_key=key, now=now)
    return {
        "summary": result.summary,
        "drawing_html": result.html,
        "pending": _pending_note(pending_hours(result.summary.since), now),
        "window": key,
        "window_label": window.label,
        "windows": [(w.key, w.label, w.key == key) for w in WINDOWS.values()],
        "longer_windows": [(w.key, w.label) for w in WINDOWS.values() if w.span > window.span],
        "percentile_sample": PERCENTILE_SAMPLE,
    }
