"""Node-and-edge drawings (the service map; the deadlock graph next), laid out by
Graphviz's `dot`.

Pure apart from one subprocess call (`run_dot`): callers hand in nodes with a
size and edges with a label, and get back boxes, SVG path data and label
positions in the same order, so templates only copy numbers into SVG and the
markup (links, classes, titles) stays in templates. No Django, no database.

dot's own edge labels become nodes of the layered graph, which makes dense
graphs slow (a 20-handler graph with 420 labelled edges took 16 s of CPU); past
`LABELLED_EDGES` edges, labels are placed after the layout (`xlabel`), the
crossing minimisation is cut short and edges are polylines, which keeps that
graph near 0.1 s.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

DOT_TIMEOUT_S = 10.0
POINTS_PER_INCH = 72.0  # dot measures sizes in inches and positions in points; we draw 1 point = 1 px
MARGIN = 12.0
LABEL_H = 16.0
LABELLED_EDGES = 60  # above this, labels are placed after the layout instead of taking room in it
FONT_SIZE = 11  # dot's estimate of a label's width, close enough to our 11.5px system-ui
ARROW_SIZE = 0.9  # dot leaves 10 * this points for the arrowhead: our 9px SVG marker fills it


class DrawingError(RuntimeError):
    """dot is missing, failed or took too long: the caller shows the data without a drawing."""


@dataclass(frozen=True)
class GraphNode:
    id: str
    width: float
    height: float
    label: str = ""  # for the caller's markup; dot only needs the size
    cls: str = ""
    first: bool = False  # keep in the first column (a source such as the ingress)


@dataclass(frozen=True)
class GraphEdge:
    source: str
    target: str
    label: str = ""  # the text drawn on the edge: dot keeps room for it
    cls: str = ""


@dataclass(frozen=True)
class Point:
    x: float
    y: float


@dataclass(frozen=True)
class PlacedNode:
    node: GraphNode
    x: float  # top left
    y: float
    width: float
    height: float

    @property
    def cx(self) -> float:
        return self.x + self.width / 2

    @property
    def cy(self) -> float:
        return self.y + self.height / 2


@dataclass(frozen=True)
class PlacedEdge:
    edge: GraphEdge
    d: str  # SVG path data from the source's box to the target's (so marker-end is the arrowhead)
    start: Point
    end: Point  # where the arrowhead touches the target's box
    label_x: float  # centre of the label
    label_y: float
    label_width: float
    label_height: float = LABEL_H

    @property
    def loop(self) -> bool:
        return self.edge.source == self.edge.target

    @property
    def label_left(self) -> float:
        return self.label_x - self.label_width / 2

    @property
    def label_top(self) -> float:
        return self.label_y - self.label_height / 2


@dataclass(frozen=True)
class Drawing:
    nodes: list[PlacedNode]  # in input order
    edges: list[PlacedEdge]  # in input order
    width: float
    height: float


def label_width(text: str) -> float:
    # 11.5px system-ui averages about 6.4px a character; a little padding either side.
    return round(len(text) * 6.4 + 10, 1)


def _quote(text: str) -> str:
    """A DOT double-quoted string; backslashes too, since dot reads \\n, \\N, \\l in labels."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ").replace("\r", " ")
    return f'"{escaped}"'


def _inches(points: float) -> str:
    return f"{points / POINTS_PER_INCH:.4f}"


def dot_source(nodes: Sequence[GraphNode], edges: Sequence[GraphEdge]) -> str:
    """The graph in DOT. Nodes are named by position (n0, n1, ...), so ids need no escaping."""
    index = {n.id: i for i, n in enumerate(nodes)}
    dense = len(edges) > LABELLED_EDGES
    graph = ["rankdir=LR", "nslimit=2"]
    if dense:
        # Crossing minimisation and spline routing dominate on dense graphs: a shorter search
        # and straight segments halve dot's time for a few more crossings. Edges through a
        # column stack up in it; packing them closer keeps a 26-handler map that calls every
        # which way near 7000 x 4000 instead of 7500 x 11400.
        graph += ["mclimit=0.1", "splines=polyline", "nodesep=0.12", "ranksep=0.5"]
    else:
        graph += ["mclimit=1", "nodesep=0.35", "ranksep=0.9"]
    lines = [
        "digraph G {",
        f"graph [{', '.join(graph)}];",
        'node [shape=box, fixedsize=true, label=""];',
        f'edge [fontname="Helvetica", fontsize={FONT_SIZE}, arrowsize={ARROW_SIZE}];',
    ]
    for i, n in enumerate(nodes):
        lines.append(f"n{i} [width={_inches(n.width)}, height={_inches(n.height)}];")
    first = [f"n{index[n.id]}" for n in nodes if n.first]
    if first:
        lines.append(f"{{rank=min; {'; '.join(first)};}}")
    attr = "xlabel" if dense else "label"
    for k, e in enumerate(edges):
        label = f", {attr}={_quote(e.label)}" if e.label else ""
        lines.append(f'n{index[e.source]} -> n{index[e.target]} [id="e{k}"{label}];')
    lines.append("}")
    return "\n".join(lines)


def run_dot(source: str, *, timeout: float = DOT_TIMEOUT_S) -> dict[str, Any]:
    """The one subprocess of this package: `dot -Tjson0` (positions, no drawing instructions)."""
    exe = shutil.which("dot")
    if exe is None:
        raise DrawingError("Graphviz is not installed (no `dot` on PATH; `make setup` installs it)")
    try:
        # The graph goes in on stdin, never on the command line.
        result = subprocess.run(
            [exe, "-Tjson0"],
            input=source.encode(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise DrawingError(f"Graphviz took longer than {timeout:g} s to lay the graph out") from exc
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise DrawingError(f"Graphviz failed: {message[-1] if message else f'exit status {result.returncode}'}")
    try:
        parsed: dict[str, Any] = json.loads(result.stdout)
    except ValueError as exc:
        raise DrawingError("Graphviz answered something that is not JSON") from exc
    return parsed


def _pair(text: str) -> tuple[float, float]:
    x, _, y = text.partition(",")
    return float(x), float(y)


def _spline(pos: str) -> tuple[list[tuple[float, float]], tuple[float, float] | None, tuple[float, float] | None]:
    """dot's `pos` of an edge: cubic Bezier control points (3n+1), and the arrow tips if any
    ("e,x,y" at the head, "s,x,y" at the tail)."""
    points: list[tuple[float, float]] = []
    start = end = None
    for token in pos.split():
        if token.startswith("e,"):
            end = _pair(token[2:])
        elif token.startswith("s,"):
            start = _pair(token[2:])
        else:
            points.append(_pair(token))
    return points, start, end


def _bezier_middle(points: list[tuple[float, float]]) -> tuple[float, float]:
    """The point halfway along the middle cubic segment: where a label goes when dot placed none."""
    segments = max((len(points) - 1) // 3, 1)
    i = 3 * (segments // 2)
    p = points[i : i + 4]
    if len(p) < 4:
        return points[len(points) // 2]
    x = (p[0][0] + 3 * p[1][0] + 3 * p[2][0] + p[3][0]) / 8
    y = (p[0][1] + 3 * p[1][1] + 3 * p[2][1] + p[3][1]) / 8
    return x, y


def draw(
    nodes: Sequence[GraphNode],
    edges: Sequence[GraphEdge],
    *,
    timeout: float = DOT_TIMEOUT_S,
    run: Callable[[str], dict[str, Any]] | None = None,
) -> Drawing:
    """Lay the graph out left to right with dot; edges between the same two nodes, both ways
    (A -> B -> A) and self-loops each get a path of their own.

    `run` answers for `run_dot` (a caller's cache of layouts keyed by the DOT source)."""
    ids = [n.id for n in nodes]
    if len(set(ids)) != len(ids):
        raise ValueError("two nodes share an id")
    known = set(ids)
    for e in edges:
        if e.source not in known or e.target not in known:
            raise ValueError(f"edge {e.source} -> {e.target} names a node that is not in the graph")
    if not nodes:
        return Drawing([], [], 0.0, 0.0)
    source = dot_source(nodes, edges)
    out = run(source) if run is not None else run_dot(source, timeout=timeout)

    _, _, bb_w, bb_h = (float(v) for v in out["bb"].split(","))
    by_name = {o["name"]: o for o in out.get("objects", []) if "pos" in o}
    by_id = {e.get("id"): e for e in out.get("edges", [])}
    raw_edges: list[tuple[GraphEdge, list[tuple[float, float]], Any, Any, tuple[float, float], float]] = []
    for k, e in enumerate(edges):
        raw = by_id.get(f"e{k}")
        if raw is None or "pos" not in raw:
            raise DrawingError(f"Graphviz left out edge {e.source} -> {e.target}")
        points, tail_tip, head_tip = _spline(raw["pos"])
        if len(points) < 4:
            raise DrawingError(f"Graphviz drew edge {e.source} -> {e.target} without a curve")
        label_pos = raw.get("lp") or raw.get("xlp")
        centre = _pair(label_pos) if label_pos else _bezier_middle(points)
        raw_edges.append((e, points, tail_tip, head_tip, centre, label_width(e.label) if e.label else 0.0))

    # xlabels may stick out of dot's bounding box: move everything so every label fits.
    labelled = [r for r in raw_edges if r[5]]
    left = min((c[0] - w / 2 for *_, c, w in labelled), default=0.0)
    right = max((c[0] + w / 2 for *_, c, w in labelled), default=bb_w)
    bottom = min((c[1] - LABEL_H / 2 for *_, c, w in labelled), default=0.0)
    top = max((c[1] + LABEL_H / 2 for *_, c, w in labelled), default=bb_h)
    dx = MARGIN - min(left, 0.0)
    top = max(top, bb_h)
    dy = MARGIN  # SVG y = top - dot y

    # dot's y grows upwards; SVG's downwards.
    oy = top + dy

    def flip(p: tuple[float, float]) -> Point:
        return Point(round(p[0] + dx, 1), round(oy - p[1], 1))

    placed_nodes: list[PlacedNode] = []
    for i, n in enumerate(nodes):
        c = flip(_pair(by_name[f"n{i}"]["pos"]))
        placed_nodes.append(PlacedNode(n, round(c.x - n.width / 2, 1), round(c.y - n.height / 2, 1), n.width, n.height))

    placed_edges: list[PlacedEdge] = []
    for e, points, tail_tip, head_tip, centre, lw in raw_edges:
        # Formatted straight from dot's numbers: a dense map has thousands of control points.
        xy = [f"{x + dx:.1f} {oy - y:.1f}" for x, y in points]
        parts = [f"M {xy[0]}"]
        parts.extend(f"C {xy[j]} {xy[j + 1]} {xy[j + 2]}" for j in range(1, len(xy) - 2, 3))
        start, end = flip(points[0]), flip(points[-1])
        if head_tip is not None:
            # dot stops the curve where its arrowhead would start: the straight piece to the
            # tip is where our marker sits, pointing the way dot meant.
            end = flip(head_tip)
            parts.append(f"L {end.x} {end.y}")
        if tail_tip is not None:
            start = flip(tail_tip)
            parts[0] = f"M {start.x} {start.y} L {xy[0]}"
        label = flip(centre)
        placed_edges.append(PlacedEdge(e, " ".join(parts), start, end, label.x, label.y, lw))

    width = max(right, bb_w) + dx + MARGIN
    height = top - min(bottom, 0.0) + 2 * MARGIN
    return Drawing(placed_nodes, placed_edges, math.ceil(width), math.ceil(height))
