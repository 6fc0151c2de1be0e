"""The wait-for graph and its cycles (deadlocks), on plain rows: the two shapes
Restate's docs warn about, the one-key case, waits that are not cycles, and a
100,000-long chain (iterative: no recursion limit)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from invocations.graph.waits import Deadlock, deadlocks, suggest_victim, wait_edges

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def test_a_cross_deadlock_across_two_keys_is_found_with_exactly_its_members() -> None:
    # a holds Alpha/k and calls Beta/k: that call (b2) queues behind b, which holds
    # Beta/k and calls Alpha/k: that call (a2) queues behind a.
    graph = wait_edges(
        pending_calls=[("a", "b2"), ("b", "a2"), ("root", "a")],
        queued={"b2": ("Beta", "k"), "a2": ("Alpha", "k")},
        holders={("Alpha", "k"): "a", ("Beta", "k"): "b"},
    )
    found = deadlocks(graph, keys_held={"a": ("Alpha", "k"), "b": ("Beta", "k")})
    assert found == [Deadlock(members=("a", "b2", "b", "a2"), keys=(("Alpha", "k"), ("Beta", "k")))]
    assert "root" not in found[0].members, "waits on the cycle without being part of it"


def test_a_three_key_cycle_and_an_unrelated_chain() -> None:
    graph = wait_edges(
        pending_calls=[("a", "b1"), ("b", "c1"), ("c", "a1"), ("x", "y"), ("y", "z")],
        queued={"b1": ("B", "1"), "c1": ("C", "1"), "a1": ("A", "1")},
        holders={("A", "1"): "a", ("B", "1"): "b", ("C", "1"): "c"},
    )
    (cycle,) = deadlocks(graph)
    assert set(cycle.members) == {"a", "b1", "b", "c1", "c", "a1"}
    assert cycle.members[0] == "a" and cycle.members[1] == "b1", "in wait order from the smallest id"


def test_a_handler_calling_its_own_key_is_a_one_key_deadlock() -> None:
    graph = wait_edges(pending_calls=[("a", "a2")], queued={"a2": ("Alpha", "k")}, holders={("Alpha", "k"): "a"})
    assert [d.members for d in deadlocks(graph)] == [("a", "a2")]


def test_queues_and_calls_without_a_cycle_are_not_deadlocks() -> None:
    graph = wait_edges(
        pending_calls=[("a", "b"), ("b", "c")],
        queued={"q1": ("K", "1"), "q2": ("K", "1"), "h": ("K", "1")},  # a holder never waits on itself
        holders={("K", "1"): "h"},
    )
    assert deadlocks(graph) == []
    assert graph["q1"] == ["h"] and "h" not in graph


def test_two_cycles_are_two_deadlocks_sorted_by_id() -> None:
    graph = {"m": ["n"], "n": ["m"], "b": ["c"], "c": ["b"]}
    assert [d.members for d in deadlocks(graph)] == [("b", "c"), ("m", "n")]


def test_a_chain_of_100000_waits_ending_in_a_cycle_needs_no_recursion() -> None:
    n = 100_000
    graph = {f"i{k:06d}": [f"i{k + 1:06d}"] for k in range(n)}
    graph[f"i{n:06d}"] = [f"i{n - 1:06d}"]  # the last two wait on each other
    (cycle,) = deadlocks(graph)
    assert set(cycle.members) == {f"i{n - 1:06d}", f"i{n:06d}"}


def test_the_suggested_victim_is_the_youngest_member() -> None:
    cycle = Deadlock(members=("a", "b", "c"), keys=())
    created = {"a": T0, "b": T0 + timedelta(seconds=5), "c": T0 + timedelta(seconds=2)}
    assert suggest_victim(cycle, created_at=created) == "b"
    assert suggest_victim(cycle, created_at={}) == "a"
