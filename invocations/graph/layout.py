"""Pure geometry for node-and-edge drawings (the service map, and the deadlock
graph next): layered, left to right, Sugiyama style, so it is tested without a
database and templates only copy numbers into SVG."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate, pairwise

LAYER_GAP = 190  # between columns: room for "delayed x1234" and for edges to fan out
ROW_GAP = 46  # between boxes of one column
DUMMY_H = 22  # the slot a long edge takes when it passes through a column
DUMMY_GAP = 12
PORT_GAP = 14  # between edge ends on one side of a box
BOW = 12  # how far parallel edges between one pair bend apart (each way)
LOOP_H = 30  # self-loop height above its box
LABEL_H = 16
MARGIN = 24


@dataclass(frozen=True)
class LayoutNode:
    id: str
    width: float
    height: float


@dataclass(frozen=True)
class LayoutEdge:
    source: str
    target: str
    label: str = ""


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    width: float
    height: float
    layer: int


@dataclass(frozen=True)
class Route:
    d: str  # SVG path data, from the source to the target (so marker-end is the arrowhead)
    label_x: float  # centre of the label
    label_y: float
    label_width: float
    back: bool = False  # drawn against the flow (it closes a cycle)
    loop: bool = False  # source == target


@dataclass
class Layout:
    boxes: dict[str, Box]
    routes: list[Route]  # one per input edge, same order
    width: float
    height: float


def label_width(text: str) -> float:
    # 12px system-ui is about 6.6px a character; a little padding either side.
    return len(text) * 6.6 + 12


@dataclass
class _Vertex:
    id: str  # a node id, or a dummy "\0<edge>:<i>"
    layer: int
    height: float
    dummy: bool
    loops: int = 0
    preds: list[str] = field(default_factory=list)
    succs: list[str] = field(default_factory=list)


def _break_cycles(nodes: list[str], edges: Sequence[LayoutEdge], root: str | None) -> tuple[set[int], list[str]]:
    """DFS from the root, then from nodes nobody calls, then the rest: edges to a node on
    the DFS stack close a cycle and are drawn reversed. Returns them and the visit order."""
    out: dict[str, list[tuple[str, int]]] = defaultdict(list)
    indegree: dict[str, int] = dict.fromkeys(nodes, 0)
    for i, e in enumerate(edges):
        if e.source != e.target:
            out[e.source].append((e.target, i))
            indegree[e.target] += 1
    starts = ([root] if root in indegree else []) + [n for n in nodes if indegree[n] == 0] + nodes
    state: dict[str, int] = {}  # 1 on the stack, 2 finished
    back: set[int] = set()
    order: list[str] = []
    for start in starts:
        if start in state:
            continue
        state[start] = 1
        order.append(start)
        stack = [(start, iter(out[start]))]
        while stack:  # iterative: a long call chain must not hit Python's recursion limit
            node, children = stack[-1]
            for child, i in children:
                if state.get(child) == 1:
                    back.add(i)
                elif child not in state:
                    state[child] = 1
                    order.append(child)
                    stack.append((child, iter(out[child])))
                    break
            else:
                state[node] = 2
                stack.pop()
    return back, order


def _crossings(upper: list[str], lower: list[str], vertices: dict[str, _Vertex]) -> int:
    pos = {v: i for i, v in enumerate(lower)}
    pairs = [(i, pos[s]) for i, u in enumerate(upper) for s in vertices[u].succs]
    return sum(
        1 for a in range(len(pairs)) for b in range(a) if (pairs[a][0] - pairs[b][0]) * (pairs[a][1] - pairs[b][1]) < 0
    )


def _transpose(columns: list[list[str]], vertices: dict[str, _Vertex], max_passes: int = 12) -> None:
    """Swap neighbours in a column while that removes crossings (barycenters leave some that
    a swap fixes). Counts only the two vertices' own edges, so a pass stays cheap."""
    pos = {v: i for col in columns for i, v in enumerate(col)}

    def crossings(upper: str, lower: str) -> int:
        total = 0
        for side in ("preds", "succs"):
            a_near, b_near = getattr(vertices[upper], side), getattr(vertices[lower], side)
            total += sum(1 for a in a_near for b in b_near if pos[a] > pos[b])
        return total

    for _ in range(max_passes):
        improved = False
        for col in columns:
            for i in range(len(col) - 1):
                u, w = col[i], col[i + 1]
                if crossings(u, w) > crossings(w, u):
                    col[i], col[i + 1] = w, u
                    pos[u], pos[w] = i + 1, i
                    improved = True
        if not improved:
            return


def _isotonic(values: list[float]) -> list[float]:
    """Least-squares non-decreasing fit (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in values:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    return [s / c for s, c in blocks for _ in range(int(c))]


def _place(desired: list[float], seps: list[float]) -> list[float]:
    """Centres as close as possible to `desired` keeping the column's order and gaps:
    subtract the cumulative gaps, fit a non-decreasing sequence, add them back."""
    offsets = [0.0]
    for s in seps:
        offsets.append(offsets[-1] + s)
    fitted = _isotonic([d - o for d, o in zip(desired, offsets, strict=True)])
    return [f + o for f, o in zip(fitted, offsets, strict=True)]


def _segment(ax: float, ay: float, bx: float, by: float, bow: float) -> str:
    # Horizontal tangents at both ends: edges leave and enter boxes sideways. A bow moves
    # both control points, so the curve's middle shifts by 3/4 of it.
    dx = (bx - ax) / 2
    return f"C {ax + dx:.1f} {ay + bow:.1f} {bx - dx:.1f} {by + bow:.1f} {bx:.1f} {by:.1f}"


def layout(nodes: Sequence[LayoutNode], edges: Sequence[LayoutEdge], *, root: str | None = None) -> Layout:
    """Layered drawing, left to right.

    1. Cycles are broken by a DFS from `root`; the edges that close them are laid out
       reversed and drawn back against the flow, so A->B and B->A become two arcs
       between the same columns, one bending above and one below.
    2. Columns by longest path from the sources (`root` alone in the first column).
    3. Edges spanning several columns get a dummy slot in each column they cross.
    4. Order within a column: barycenter sweeps down and up, keeping the order with the
       fewest crossings.
    5. Vertical positions pulled towards neighbours (straight chains) without overlaps.
    """
    sizes = {n.id: n for n in nodes}
    ids = list(sizes)
    for e in edges:
        if e.source not in sizes or e.target not in sizes:
            raise ValueError(f"edge {e.source} -> {e.target} names a node that is not in the layout")
    back, visit_order = _break_cycles(ids, edges, root)
    rank = {n: i for i, n in enumerate(visit_order)}

    # Columns: longest path over the acyclic orientation (Kahn's order).
    dag = [(e.target, e.source) if i in back else (e.source, e.target) for i, e in enumerate(edges)]
    forward = [(i, u, v) for i, (u, v) in enumerate(dag) if u != v]
    succ: dict[str, list[str]] = defaultdict(list)
    indeg = dict.fromkeys(ids, 0)
    for _, u, v in forward:
        succ[u].append(v)
        indeg[v] += 1
    has_root = root in sizes
    layer = {n: (1 if has_root and n != root else 0) for n in ids}
    queue = sorted((n for n in ids if indeg[n] == 0), key=rank.__getitem__)
    while queue:
        u = queue.pop(0)
        for v in succ[u]:
            layer[v] = max(layer[v], layer[u] + 1)
            indeg[v] -= 1
            if indeg[v] == 0:
                queue.append(v)

    # Edge ends per side decide a box's minimum height.
    right_count: dict[str, int] = defaultdict(int)
    left_count: dict[str, int] = defaultdict(int)
    loops: dict[str, list[int]] = defaultdict(list)
    for i, (u, v) in enumerate(dag):
        if u == v:
            loops[u].append(i)
        else:
            right_count[u] += 1
            left_count[v] += 1
    vertices: dict[str, _Vertex] = {}
    for n in ids:
        ports = max(right_count[n], left_count[n])
        vertices[n] = _Vertex(
            n, layer[n], max(sizes[n].height, PORT_GAP * (ports + 1)), dummy=False, loops=len(loops[n])
        )

    # Chains: every non-loop edge as a list of vertices, one per column it touches.
    chains: dict[int, list[str]] = {}
    for i, u, v in forward:
        chain = [u]
        for lyr in range(layer[u] + 1, layer[v]):
            dummy = f"\0{i}:{lyr}"
            vertices[dummy] = _Vertex(dummy, lyr, DUMMY_H, dummy=True)
            chain.append(dummy)
        chain.append(v)
        for a, b in pairwise(chain):
            vertices[a].succs.append(b)
            vertices[b].preds.append(a)
        chains[i] = chain

    # Initial order: DFS visit order; a dummy sits where its edge's source was visited.
    def initial_key(vid: str) -> tuple[float, float]:
        if vertices[vid].dummy:
            i = int(vid[1:].split(":")[0])
            return (rank[dag[i][0]] + 0.5, i)
        return (rank[vid], 0)

    n_layers = max((v.layer for v in vertices.values()), default=-1) + 1
    columns: list[list[str]] = [[] for _ in range(n_layers)]
    for vid in sorted(vertices, key=initial_key):
        columns[vertices[vid].layer].append(vid)

    def total_crossings(cols: list[list[str]]) -> int:
        return sum(_crossings(cols[k], cols[k + 1], vertices) for k in range(len(cols) - 1))

    best, best_crossings = [list(c) for c in columns], total_crossings(columns)
    for sweep in range(8):
        down = sweep % 2 == 0
        order = range(1, n_layers) if down else range(n_layers - 2, -1, -1)
        for k in order:
            ref = {v: i for i, v in enumerate(columns[k - 1] if down else columns[k + 1])}
            current = {v: i for i, v in enumerate(columns[k])}

            def barycenter(
                vid: str, ref: dict[str, int] = ref, current: dict[str, int] = current, down: bool = down
            ) -> float:
                near = vertices[vid].preds if down else vertices[vid].succs
                if not near:
                    return current[vid]  # nothing to pull it: stays put
                return sum(ref[n] for n in near) / len(near)

            columns[k].sort(key=barycenter)
        crossings = total_crossings(columns)
        if crossings < best_crossings:
            best, best_crossings = [list(c) for c in columns], crossings
    columns = best
    _transpose(columns, vertices)

    # Vertical centres: start stacked and centred, then pull towards the neighbours' mean.
    def gap_between(a: str, b: str) -> float:
        va, vb = vertices[a], vertices[b]
        gap = DUMMY_GAP if va.dummy or vb.dummy else ROW_GAP
        # A self-loop and its label sit above the box: leave them room.
        gap += LABEL_H * vb.loops + 10 if vb.loops else 0
        return va.height / 2 + gap + vb.height / 2

    y: dict[str, float] = {}
    for col in columns:
        seps = [gap_between(a, b) for a, b in pairwise(col)]
        start = -sum(seps) / 2
        for vid, off in zip(col, [0.0, *accumulate(seps)], strict=True):
            y[vid] = start + off
    for sweep in range(6):
        down = sweep % 2 == 0
        order = range(1, n_layers) if down else range(n_layers - 2, -1, -1)
        for k in order:
            col = columns[k]
            desired = []
            for vid in col:
                near = vertices[vid].preds if down else vertices[vid].succs
                desired.append(sum(y[n] for n in near) / len(near) if near else y[vid])
            seps = [gap_between(a, b) for a, b in pairwise(col)]
            for vid, placed in zip(col, _place(desired, seps), strict=True):
                y[vid] = placed

    # Columns left to right; a column is as wide as its widest box (the ingress column is narrow).
    col_x: list[float] = []
    col_w: list[float] = []
    x = 0.0
    for col in columns:
        width = max((sizes[v].width for v in col if not vertices[v].dummy), default=DUMMY_H)
        col_x.append(x)
        col_w.append(width)
        x += width + LAYER_GAP

    boxes: dict[str, Box] = {}
    for n in ids:
        v = vertices[n]
        w = sizes[n].width
        # Right-aligned in its column, so edges out of a narrow box are not longer than others.
        bx = col_x[v.layer] + col_w[v.layer] - w
        boxes[n] = Box(bx, y[n] - v.height / 2, w, v.height, v.layer)

    # Ports: edge ends spread along a side, ordered by where the other end is, so they do not cross at the box.
    port_y: dict[tuple[int, str], float] = {}  # (edge, "out"/"in") -> y
    sides: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
    for i, chain in chains.items():
        sides[(chain[0], "out")].append((y[chain[1]], i))
        sides[(chain[-1], "in")].append((y[chain[-2]], i))
    for (vid, side), ends in sides.items():
        ends.sort()
        for k, (_, i) in enumerate(ends):
            port_y[(i, side)] = y[vid] + (k - (len(ends) - 1) / 2) * PORT_GAP

    # Parallel edges between the same two boxes (either direction) bend apart.
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, chain in chains.items():
        if len(chain) == 2:
            groups[(chain[0], chain[1])].append(i)
    bow: dict[int, float] = {}
    for members in groups.values():
        members.sort(key=lambda i: port_y[(i, "out")])
        for k, i in enumerate(members):
            bow[i] = (k - (len(members) - 1) / 2) * 2 * BOW if len(members) > 1 else 0.0

    routes: list[Route | None] = [None] * len(edges)
    curves: dict[int, tuple[float, float, float, float, float]] = {}  # the segment that carries the label
    for i, chain in chains.items():
        u, v = chain[0], chain[-1]
        points: list[tuple[float, float]] = [(boxes[u].x + boxes[u].width, port_y[(i, "out")])]
        for d in chain[1:-1]:
            lyr = vertices[d].layer
            points += [(col_x[lyr], y[d]), (col_x[lyr] + col_w[lyr], y[d])]
        points.append((boxes[v].x, port_y[(i, "in")]))
        is_back = i in back
        if is_back:
            points.reverse()  # drawn from the real source, so the arrowhead lands on the real target
        b = bow.get(i, 0.0)
        parts = [f"M {points[0][0]:.1f} {points[0][1]:.1f}"]
        segs: list[tuple[tuple[float, float], tuple[float, float]]] = []
        for k in range(1, len(points)):
            (ax, ay), (bx2, by) = points[k - 1], points[k]
            if k % 2 == 1:  # between columns
                parts.append(_segment(ax, ay, bx2, by, b))
                segs.append(((ax, ay), (bx2, by)))
            else:  # straight through a dummy slot
                parts.append(f"L {bx2:.1f} {by:.1f}")
        (ax, ay), (bx2, by) = segs[len(segs) // 2]
        curves[i] = (ax, ay, bx2, by, b)
        text = edges[i].label
        routes[i] = Route(
            d=" ".join(parts),
            label_x=(ax + bx2) / 2,
            label_y=(ay + by) / 2 + 0.75 * b,
            label_width=label_width(text),
            back=is_back,
        )
    for n, members in loops.items():
        box = boxes[n]
        for k, i in enumerate(members):
            # Side by side along the box's top edge from the right, one per kind; their labels
            # step up one line each so neighbouring labels cannot cover each other.
            right = box.x + box.width - 12 - 46 * k
            left = right - 34
            top = box.y - LOOP_H
            d = f"M {left:.1f} {box.y:.1f} C {left:.1f} {top:.1f} {right:.1f} {top:.1f} {right:.1f} {box.y:.1f}"
            text = edges[i].label
            routes[i] = Route(d, (left + right) / 2, top - 4 - k * LABEL_H, label_width(text), loop=True)

    assert all(r is not None for r in routes), "every edge is either a chain or a loop"
    final = _separate_labels(_slide_labels([r for r in routes if r is not None], curves, list(boxes.values())))
    # Translate everything so the drawing starts at the margin (loops and bows reach above the boxes).
    min_x = min([b.x for b in boxes.values()] + [r.label_x - r.label_width / 2 for r in final], default=0)
    min_y = min(
        [b.y for b in boxes.values()]
        + [r.label_y - LABEL_H / 2 for r in final]
        + [y[v] - DUMMY_H for v in vertices]
        + [b.y - LOOP_H for n, b in boxes.items() if loops[n]],
        default=0,
    )
    dx, dy = MARGIN - min_x, MARGIN - min_y
    # Rounded: these numbers go into SVG attributes verbatim.
    boxes = {n: Box(round(b.x + dx, 1), round(b.y + dy, 1), b.width, b.height, b.layer) for n, b in boxes.items()}
    final = [
        Route(
            _shift_path(r.d, dx, dy),
            round(r.label_x + dx, 1),
            round(r.label_y + dy, 1),
            round(r.label_width, 1),
            r.back,
            r.loop,
        )
        for r in final
    ]
    max_x = max([b.x + b.width for b in boxes.values()] + [r.label_x + r.label_width / 2 for r in final], default=0)
    max_y = max(
        [b.y + b.height for b in boxes.values()]
        + [r.label_y + LABEL_H / 2 for r in final]
        + [y[v] + dy + DUMMY_H for v in vertices],
        default=0,
    )
    return Layout(boxes=boxes, routes=final, width=math.ceil(max_x + MARGIN), height=math.ceil(max_y + MARGIN))


def _shift_path(d: str, dx: float, dy: float) -> str:
    """Move an absolute path made only of M/C/L commands with x y pairs."""
    out: list[str] = []
    coords: list[float] = []
    for token in d.split():
        if token.isalpha():
            out.append(token)
            continue
        coords.append(float(token))
        if len(coords) == 2:
            out += [f"{coords[0] + dx:.1f}", f"{coords[1] + dy:.1f}"]
            coords = []
    return " ".join(out)


LABEL_POSITIONS = (0.5, 0.38, 0.62, 0.28, 0.72)  # along a curve, middle first


def _bezier(curve: tuple[float, float, float, float, float], t: float) -> tuple[float, float]:
    """A point of the curve `_segment` draws."""
    ax, ay, bx, by, bow = curve
    dx = (bx - ax) / 2
    xs = (ax, ax + dx, bx - dx, bx)
    ys = (ay, ay + bow, by + bow, by)
    weights = ((1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3)
    return (sum(w * x for w, x in zip(weights, xs, strict=True)), sum(w * y for w, y in zip(weights, ys, strict=True)))


def _label_rect(x: float, y: float, width: float) -> tuple[float, float, float, float]:
    return (x - width / 2, y - LABEL_H / 2 - 1, x + width / 2, y + LABEL_H / 2 + 1)


def _hits(r: tuple[float, float, float, float], others: list[tuple[float, float, float, float]]) -> bool:
    return any(r[0] < o[2] and o[0] < r[2] and r[1] < o[3] and o[1] < r[3] for o in others)


def _slide_labels(
    routes: list[Route], curves: dict[int, tuple[float, float, float, float, float]], boxes: list[Box]
) -> list[Route]:
    """Where edges crowd (fan-in and fan-out cross in the middle of a gap), slide a label
    along its own curve rather than off it, so it still reads as belonging to its line."""
    taken = [(b.x, b.y, b.x + b.width, b.y + b.height) for b in boxes]
    taken += [_label_rect(r.label_x, r.label_y, r.label_width) for r in routes if r.loop]
    out = list(routes)
    order = sorted(curves, key=lambda i: (routes[i].label_x, routes[i].label_y))
    for i in order:
        r = routes[i]
        for t in LABEL_POSITIONS:
            x, y = _bezier(curves[i], t)
            rect = _label_rect(x, y, r.label_width)
            if not _hits(rect, taken):
                out[i] = Route(r.d, x, y, r.label_width, r.back, r.loop)
                taken.append(rect)
                break
        else:
            taken.append(_label_rect(r.label_x, r.label_y, r.label_width))  # left to _separate_labels
    return out


def _separate_labels(routes: list[Route]) -> list[Route]:
    """Push overlapping edge labels apart vertically (labels of fan-outs and parallel edges)."""
    pos = [[r.label_x, r.label_y] for r in routes]
    for _ in range(20):
        moved = False
        for a in range(len(routes)):
            for b in range(a):
                pa, pb = pos[a], pos[b]
                overlap_x = (routes[a].label_width + routes[b].label_width) / 2 - abs(pa[0] - pb[0])
                overlap_y = LABEL_H + 2 - abs(pa[1] - pb[1])
                if overlap_x > 0 and overlap_y > 0:
                    lower, upper = (pa, pb) if pa[1] >= pb[1] else (pb, pa)
                    lower[1] += overlap_y / 2
                    upper[1] -= overlap_y / 2
                    moved = True
        if not moved:
            break
    return [Route(r.d, p[0], p[1], r.label_width, r.back, r.loop) for r, p in zip(routes, pos, strict=True)]
