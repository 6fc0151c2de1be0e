"""The service map as a drawing: its data (`selectors.service_map`) laid out by
Graphviz (`graph.layout`), with the links, labels and names the template
draws; cached per window so a busy page computes it once."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.core.cache import cache
from django.db import connections
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import SafeString

from invocations.graph.layout import DrawingError, GraphEdge, GraphNode, PlacedEdge, PlacedNode, draw
from invocations.reads.presenters.formatting import iso_utc
from invocations.reads.selectors.service_map import (
    INGRESS,
    PERCENTILE_SAMPLE,
    MapEdge,
    MapNode,
    ServiceMap,
    data_version,
    service_map_get,
)

NODE_W = 230
NODE_H = 64
INGRESS_W = 110
INGRESS_H = 44
NAME_CHARS = 30  # what fits in a box at 12.5px bold; the full name is in the title
TIMES = "\N{MULTIPLICATION SIGN}"  # labels read "call <times>12"; named so no one mistakes it for an x
SEPARATOR = " \N{MIDDLE DOT} "
KIND_LABELS = {"call": "call", "send": "send", "delayed_send": "delayed", INGRESS: ""}


@dataclass(frozen=True)
class Window:
    key: str
    span: timedelta
    label: str
    # How long a computed map is shown before it is recomputed: a week's map barely moves in
    # a minute and costs seconds of PostgreSQL time at 1M rows, an hour's costs milliseconds.
    fresh_s: float


# The windows offered; anything else in the URL is refused rather than guessed at.
WINDOWS: dict[str, Window] = {
    w.key: w
    for w in (
        Window("1h", timedelta(hours=1), "last hour", fresh_s=15.0),
        Window("1d", timedelta(days=1), "last day", fresh_s=60.0),
        Window("7d", timedelta(days=7), "last week", fresh_s=300.0),
    )
}
DEFAULT_WINDOW = "1h"
# A map is recomputed once it is older than its window's fresh_s, or 4x that when the data
# has not changed (the window still slides). Until STALE_S, readers get the previous map
# while one background thread recomputes it; past it (or with none), they wait for one
# computation, at most WAIT_S, rather than each starting their own.
UNCHANGED_FACTOR = 4.0
STALE_S = 1800.0
WAIT_S = 60.0
CACHE_PREFIX = "service-map:v2:"


@dataclass(frozen=True)
class LabelPart:
    kind: str
    text: str  # "call <times>12"
    href: str  # the list of exactly these: callees of this pair through this kind


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
    edge: MapEdge
    href: str  # the list of every callee of this pair
    parts: list[LabelPart]
    route: PlacedEdge | None

    @property
    def label(self) -> str:
        return SEPARATOR.join(p.text for p in self.parts)

    @property
    def source_label(self) -> str:
        return "the ingress" if self.edge.source == INGRESS else self.edge.source

    @property
    def title(self) -> str:
        return f"{self.source_label} → {self.edge.target}: {self.label}"


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


def _list_url(base: str, **params: str) -> str:
    return f"{base}?{urlencode(params)}"


def _parts(base: str, edge: MapEdge, caller: MapNode | None, callee: MapNode | None, after: str) -> list[LabelPart]:
    """One part per kind, each linking to exactly the callees it counts."""
    target = {"service": callee.service, "handler": callee.handler} if callee else {}
    parts = []
    for kind, count in edge.counts:
        word = KIND_LABELS.get(kind, kind)
        if kind == INGRESS or caller is None:
            params = {**target, "roots": "1"}
        else:
            params = {**target, "caller_service": caller.service, "caller_handler": caller.handler, "kind": kind}
        text = f"{word} {TIMES}{count}" if word else f"{TIMES}{count}"
        parts.append(LabelPart(kind, text, _list_url(base, **params, created_after=after)))
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
        edge_views.append(EdgeView(e, href, parts, None))

    graph_nodes = [
        GraphNode(n.id, INGRESS_W, INGRESS_H, label="ingress", cls="ingress", first=True)
        if n.is_ingress
        else GraphNode(n.id, NODE_W, NODE_H, label=n.id)
        for n in smap.nodes
    ]
    graph_edges = [GraphEdge(v.edge.source, v.edge.target, v.label, cls=v.edge.kind) for v in edge_views]
    error = ""
    placed_nodes: list[PlacedNode | None] = [None] * len(smap.nodes)
    placed_edges: list[PlacedEdge | None] = [None] * len(edge_views)
    width = height = 0.0
    if smap.nodes:
        try:
            drawing = draw(graph_nodes, graph_edges)
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
    edges = [EdgeView(v.edge, v.href, v.parts, route) for v, route in zip(edge_views, placed_edges, strict=True)]
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


@dataclass(frozen=True)
class Computed:
    summary: Summary
    html: SafeString  # the drawing (or, without one, the tables), rendered once for every reader
    version: tuple[Any, ...] = ()
    stored: float = 0.0  # time.time()


def compute(*, window: Window, now: datetime) -> Computed:
    """The map computed and rendered now, uncached (the benchmark's cold figure)."""
    started = time.perf_counter()
    view = map_view(window=window.span, now=now)
    html = render_to_string("invocations/service_map.html#drawing", {"map": view, "window_label": window.label})
    smap = view.smap
    summary = Summary(
        since=smap.since,
        computed_at=now,
        invocations=smap.total_invocations,
        handlers=len(smap.handlers),
        ingress_roots=sum(n.stats.invocations for n in smap.nodes if n.is_ingress),
        edges=len(smap.edges),
        compute_s=time.perf_counter() - started,
    )
    return Computed(summary, html)


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
_refreshing: dict[str, threading.Thread] = {}  # the background recomputation per key (tests join it)
log = logging.getLogger(__name__)


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def _usable(entry: Computed | None, version: tuple[Any, ...], window: Window) -> bool:
    if entry is None:
        return False
    age = time.time() - entry.stored
    return age < window.fresh_s or (entry.version == version and age < window.fresh_s * UNCHANGED_FACTOR)


def _compute_and_store(key: str, window: Window, version: tuple[Any, ...], now: datetime) -> Computed:
    fresh = replace(compute(window=window, now=now), version=version, stored=time.time())
    cache.set(key, fresh, timeout=STALE_S)
    return fresh


def _refresh(key: str, window: Window, version: tuple[Any, ...], lock: threading.Lock) -> None:
    """Recompute in a thread of its own; `lock` is held for it by the request that started it."""
    try:
        _compute_and_store(key, window, version, timezone.now())
    except Exception:  # readers keep the previous map; the next one to find it stale tries again
        log.exception("recomputing the service map of the %s failed", window.label)
    finally:
        connections.close_all()  # this thread's own connection, which nothing else would close
        lock.release()


def cached(*, window_key: str, now: datetime) -> Computed:
    """The map of a window from the cache, computed by one thread at a time.

    Six people opening the week's map at once cost one computation, not six side by
    side; once a map exists, readers get it at once while it is recomputed behind them.
    """
    window = WINDOWS[window_key]
    key = CACHE_PREFIX + window_key
    version = data_version()
    entry: Computed | None = cache.get(key)
    if _usable(entry, version, window):
        assert entry is not None
        return entry
    lock = _lock(key)
    if entry is not None and time.time() - entry.stored < STALE_S:
        if lock.acquire(blocking=False):
            thread = threading.Thread(
                target=_refresh, args=(key, window, version, lock), name=f"service-map-{window_key}", daemon=True
            )
            _refreshing[key] = thread
            thread.start()
        return entry
    if not lock.acquire(timeout=WAIT_S):
        # Waited WAIT_S for someone else's computation: do it ourselves rather than fail.
        return compute(window=window, now=now)
    try:
        entry = cache.get(key)  # the computation we may have waited for
        if _usable(entry, version, window):
            assert entry is not None
            return entry
        return _compute_and_store(key, window, version, now)
    finally:
        lock.release()


class UnknownWindow(ValueError):
    """A `window=` value that is not one of WINDOWS."""


def service_map_context(*, window_key: str | None, now: datetime) -> dict[str, Any]:
    key = DEFAULT_WINDOW if window_key is None else window_key
    if key not in WINDOWS:
        raise UnknownWindow(key)
    window = WINDOWS[key]
    result = cached(window_key=key, now=now)
    return {
        "summary": result.summary,
        "drawing_html": result.html,
        "window": key,
        "window_label": window.label,
        "windows": [(w.key, w.label, w.key == key) for w in WINDOWS.values()],
        "longer_windows": [(w.key, w.label) for w in WINDOWS.values() if w.span > window.span],
        "percentile_sample": PERCENTILE_SAMPLE,
    }
