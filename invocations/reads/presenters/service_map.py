"""The service map as a drawing: its data (`selectors.service_map`) placed by the
pure layout (`graph.layout`), ready for the template's inline SVG."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from invocations.graph.layout import LABEL_H, Box, LayoutEdge, LayoutNode, Route, layout
from invocations.reads.selectors.service_map import INGRESS, MapEdge, MapNode, ServiceMap, service_map_get

NODE_W = 230
NODE_H = 64
INGRESS_W = 110
INGRESS_H = 44
NAME_CHARS = 30  # what fits in a box at 12.5px bold; the full name is in the tooltip


@dataclass(frozen=True)
class DrawnNode:
    node: MapNode
    box: Box
    name: str  # possibly shortened to fit

    @property
    def cx(self) -> float:
        return self.box.x + self.box.width / 2


@dataclass(frozen=True)
class DrawnEdge:
    edge: MapEdge
    route: Route

    @property
    def label_left(self) -> float:
        return self.route.label_x - self.route.label_width / 2

    @property
    def label_top(self) -> float:
        return self.route.label_y - LABEL_H / 2


@dataclass(frozen=True)
class Drawing:
    nodes: list[DrawnNode]
    edges: list[DrawnEdge]
    width: float
    height: float
    label_height: float = LABEL_H


def draw(smap: ServiceMap) -> Drawing:
    layout_nodes = [
        LayoutNode(n.id, INGRESS_W, INGRESS_H) if n.is_ingress else LayoutNode(n.id, NODE_W, NODE_H) for n in smap.nodes
    ]
    result = layout(layout_nodes, [LayoutEdge(e.source, e.target, e.label) for e in smap.edges], root=INGRESS)
    nodes = []
    for n in smap.nodes:
        name = n.id if len(n.id) <= NAME_CHARS else n.id[: NAME_CHARS - 1] + "…"
        nodes.append(DrawnNode(n, result.boxes[n.id], name))
    edges = [DrawnEdge(e, r) for e, r in zip(smap.edges, result.routes, strict=True)]
    return Drawing(nodes, edges, result.width, result.height)


# The windows offered; anything else in the URL is refused rather than guessed at.
WINDOWS: dict[str, tuple[timedelta, str]] = {
    "1h": (timedelta(hours=1), "last hour"),
    "1d": (timedelta(days=1), "last day"),
    "7d": (timedelta(days=7), "last week"),
}
DEFAULT_WINDOW = "1h"


class UnknownWindow(ValueError):
    """A `window=` value that is not one of WINDOWS."""


def service_map_context(*, window_key: str | None, now: datetime) -> dict[str, Any]:
    key = DEFAULT_WINDOW if window_key is None else window_key
    if key not in WINDOWS:
        raise UnknownWindow(key)
    window, label = WINDOWS[key]
    smap = service_map_get(window=window, now=now)
    return {
        "smap": smap,
        "drawing": draw(smap) if smap.nodes else None,
        "window": key,
        "window_label": label,
        "windows": [(k, lbl, k == key) for k, (_, lbl) in WINDOWS.items()],
        "longer_windows": [(k, lbl) for k, (w, lbl) in WINDOWS.items() if w > window],
    }
