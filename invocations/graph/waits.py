"""Who waits on whom, and the cycles in it (deadlocks), as pure functions.

The wait-for graph (issue 8): an invocation waits on the callee of each
request-response call it has no result for yet, and an invocation queued in a
virtual object's inbox waits on the holder of its key's lock. A cycle in that
graph can never resolve by itself: every member waits on the next. Restate's
docs give the two shapes users meet, A -> B -> A across two keys and
A -> B -> C -> A, and a handler calling its own key exclusively is the
one-key case of the same thing.

The cycles are the graph's strongly connected components with more than one
member (or a member waiting on itself), found by Tarjan's algorithm, written
iteratively so a chain of 100,000 waiting invocations cannot exhaust Python's
recursion limit: O(invocations + waits) time and memory, one pass.

No database and no Django: selectors hand in the rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

ObjectKey = tuple[str, str]  # (virtual object service, key)


@dataclass(frozen=True)
class Deadlock:
    """One cycle of waits: its members in wait order (each waits on the next, the
    last on the first), starting from the smallest id so a cycle reads the same
    every time it is found."""

    members: tuple[str, ...]
    keys: tuple[ObjectKey, ...]  # the object keys whose locks the cycle holds, in member order

    @property
    def id(self) -> str:
        """A stable name for the cycle: the same members give the same id."""
        return self.members[0]


def wait_edges(
    *,
    pending_calls: Iterable[tuple[str, str]],
    queued: Mapping[str, ObjectKey],
    holders: Mapping[ObjectKey, str],
) -> dict[str, list[str]]:
    """The wait-for graph as adjacency lists.

    pending_calls: (caller id, callee id) for request-response calls without a result.
    queued: invocation id -> the key it is queued on (Restate's inbox).
    holders: key -> the invocation holding its lock.
    """
    graph: dict[str, list[str]] = {}
    for caller, callee in pending_calls:
        graph.setdefault(caller, []).append(callee)
    for waiting, key in queued.items():
        holder = holders.get(key)
        if holder is not None and holder != waiting:
            graph.setdefault(waiting, []).append(holder)
    return graph


def deadlocks(
    graph: Mapping[str, Iterable[str]],
    *,
    keys_held: Mapping[str, ObjectKey] | None = None,
) -> list[Deadlock]:
    """Every cycle of `graph` (as strongly connected components), smallest id first.

    keys_held: holder id -> the key it holds, to name the keys a cycle blocks.
    """
    keys_held = keys_held or {}
    cyclic = _cyclic_part(graph)
    found = []
    for component in _strongly_connected(cyclic):
        if len(component) == 1:
            (only,) = component
            if only not in set(cyclic.get(only, ())):
                continue  # waits on nothing that waits back: not a cycle
        members = _cycle_order(component, cyclic)
        keys = tuple(keys_held[m] for m in members if m in keys_held)
        found.append(Deadlock(members=members, keys=keys))
    return sorted(found, key=lambda d: d.id)


def _cyclic_part(graph: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """`graph` without the nodes that cannot be on a cycle: those that wait on nothing left
    in the graph, and those nothing left waits on, removed repeatedly (two linear passes).

    Nearly every waiting invocation is on a chain that ends (a callee doing work, a lock
    holder running): this leaves Tarjan's search only the cycles and what joins them.
    """
    adjacency = {node: list(targets) for node, targets in graph.items()}
    for _ in range(2):
        # Pass 1 trims sinks (out-degree 0); pass 2 runs on the reversed graph: sources.
        reverse: dict[str, list[str]] = {}
        for node, targets in adjacency.items():
            for target in targets:
                reverse.setdefault(target, []).append(node)
        remaining = {node: len(targets) for node, targets in adjacency.items()}
        done = [node for node in reverse if not remaining.get(node)]
        while done:
            node = done.pop()
            for waiter in reverse.get(node, ()):
                remaining[waiter] -= 1
                if remaining[waiter] == 0:
                    done.append(waiter)
        # Reversed for the next pass: A waits on B becomes B is waited on by A.
        adjacency = {
            node: [w for w in reverse.get(node, ()) if remaining.get(w, 0) > 0]
            for node, count in remaining.items()
            if count > 0
        }
    return adjacency


def suggest_victim(deadlock: Deadlock, *, created_at: Mapping[str, datetime]) -> str:
    """The member to cancel to break the cycle: the youngest (the least work is
    undone and the fewest compensations run); ties and unknown times by id."""
    known = [m for m in deadlock.members if m in created_at]
    if not known:
        return deadlock.members[0]
    return max(known, key=lambda m: (created_at[m], m))


def _strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[set[str]]:
    """Tarjan's algorithm with an explicit stack."""
    adjacency = {node: list(targets) for node, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    counter = 0
    for start in adjacency:
        if start in index:
            continue
        # Each frame: (node, iterator position into its targets).
        work: list[tuple[str, int]] = [(start, 0)]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, position = work[-1]
            targets = adjacency.get(node, [])
            if position < len(targets):
                work[-1] = (node, position + 1)
                target = targets[position]
                if target not in index:
                    index[target] = low[target] = counter
                    counter += 1
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
    return components


def _cycle_order(component: set[str], graph: Mapping[str, Iterable[str]]) -> tuple[str, ...]:
    """The component's members in wait order, from its smallest id: follow waits that
    stay in the component, first unvisited (a component with extra waits inside it
    still reads as one loop; members off that loop are appended)."""
    start = min(component)
    order = [start]
    seen = {start}
    node = start
    while True:
        following = next((t for t in graph.get(node, ()) if t in component and t not in seen), None)
        if following is None:
            break
        order.append(following)
        seen.add(following)
        node = following
    order.extend(sorted(component - seen))
    return tuple(order)
