"""Load generator for the demo services, using only RestateClient.

Every `fire_*` function starts one pattern with one-way ingress sends (never
blocking on a deadlock or a long nap) and returns the ids of the invocations
it started. `run_traffic` keeps a steady mix flowing: mostly cheap quick
trees, with rate-limited rare patterns, and a cap on what stays stuck (the
oldest deadlock is cancelled, the oldest failing one killed, sagas are
cancelled after a while so their compensations run).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from invocations.restate import RestateClient, RestateError

logger = logging.getLogger(__name__)


def new_key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------- one function per pattern


def fire_call_service(client: RestateClient, name: str | None = None) -> list[str]:
    """Calls to a Service, a Virtual Object and a Workflow handler (Orchestrator.call_all)."""
    return [client.send("Orchestrator", "call_all", payload=name or new_key("user"))]


def fire_greet(client: RestateClient, name: str | None = None) -> list[str]:
    """The cheapest thing: one Service invocation straight from the ingress."""
    return [client.send("Greeter", "greet", payload=name or new_key("guest"))]


def fire_counter(client: RestateClient, key: str | None = None) -> list[str]:
    return [client.send("Counter", "add", key=key or random.choice(["ann", "bob", "cid"]), payload=1)]


def fire_generic(client: RestateClient, name: str | None = None) -> list[str]:
    """Generic call and generic send by name (Orchestrator.generic)."""
    return [client.send("Orchestrator", "generic", payload=name or new_key("gen"))]


def fire_sends(client: RestateClient, name: str | None = None) -> list[str]:
    """One-way sends to a Service, an Object (twice, ordered) and a Workflow (Orchestrator.send_all)."""
    return [client.send("Orchestrator", "send_all", payload=name or new_key("msg"))]


def fire_object_chain(client: RestateClient, key: str | None = None) -> list[str]:
    """Object -> object -> object calls that complete: Alpha -> Beta -> Gamma."""
    return [client.send("Alpha", "hop", key=key or new_key("chain"), payload=["Beta", "Gamma"])]


def fire_delayed_sends(client: RestateClient, name: str | None = None) -> list[str]:
    """Delayed sends from a handler (minutes, hours, days) and from the ingress (?delay=)."""
    name = name or new_key("later")
    return [
        client.send("Orchestrator", "schedule", payload=name),
        client.send("Greeter", "greet", payload=f"{name} (ingress, 10 min)", delay=timedelta(minutes=10)),
        client.send("Counter", "add", key=name, payload=5, delay=timedelta(hours=6)),
    ]


def fire_queue(client: RestateClient, key: str | None = None, n: int = 5, seconds: float = 3.0) -> list[str]:
    """n callers of Worker.work on ONE key: the first holds the lock, the rest form its inbox."""
    key = key or new_key("queue")
    return [client.send("Orchestrator", "wait_worker", payload={"key": key, "seconds": seconds}) for _ in range(n)]


def fire_cross_deadlock(client: RestateClient, key: str | None = None) -> list[str]:
    """Alpha(k) -> Beta(k) -> Alpha(k): stuck until someone cancels."""
    return [client.send("Alpha", "hop", key=key or new_key("cross"), payload=["Beta", "Alpha"])]


def fire_cycle_deadlock(client: RestateClient, key: str | None = None) -> list[str]:
    """Alpha(k) -> Beta(k) -> Gamma(k) -> Alpha(k): stuck until someone cancels."""
    return [client.send("Alpha", "hop", key=key or new_key("cycle"), payload=["Beta", "Gamma", "Alpha"])]


def fire_saga(client: RestateClient, minutes: float = 30.0) -> list[str]:
    """Trip.book: reserves, then naps; cancel it to see the compensations (Inventory.release)."""
    return [client.send("Trip", "book", payload=minutes)]


def fire_failing(client: RestateClient, what: str | None = None) -> list[str]:
    """Flaky.fail: a non-terminal error on every attempt, so retry_count keeps growing."""
    return [client.send("Flaky", "fail", payload=what or new_key("charge"))]


def fire_idempotent(client: RestateClient, key: str | None = None) -> list[str]:
    """Ingress sends with one idempotency key (same invocation both times) whose handler
    makes two in-handler calls with one idempotency key (one child)."""
    key = key or new_key("idem")
    first = client.send("Orchestrator", "idempotent", payload=key, idempotency_key=f"order-{key}")
    again = client.send("Orchestrator", "idempotent", payload=key, idempotency_key=f"order-{key}")
    return sorted({first, again})


def fire_workflow(client: RestateClient, wf_id: str | None = None) -> list[str]:
    """Orchestrator.workflow: calls Signup.run, delayed-sends Signup.confirm, calls Signup.status."""
    return [client.send("Orchestrator", "workflow", payload=wf_id or new_key("signup"))]


def fire_cross_language(client: RestateClient, sku: str | None = None) -> list[str]:
    """Python Checkout.order -> TypeScript Shipping.quote -> Python Inventory.reserve."""
    return [client.send("Checkout", "order", payload={"sku": sku or random.choice(["book", "lamp", "mug"]), "qty": 1})]


def fire_long(client: RestateClient, minutes: float = 15.0) -> list[str]:
    """Orchestrator.long -> Sleeper.nap(minutes): a running tree worth cancelling."""
    return [client.send("Orchestrator", "long", payload=minutes)]


# ---------------------------------------------------------------- the steady mix


@dataclass(frozen=True)
class Pattern:
    name: str
    fire: Callable[[RestateClient], list[str]]
    weight: float  # share of the picks
    min_interval_s: float = 0.0  # rare patterns: at most one per interval, whatever the rate


# Cheap quick trees dominate; the rest are rate-limited by wall clock so a
# higher --rate means more quick traffic, not more stuck invocations.
MIX: tuple[Pattern, ...] = (
    Pattern("greet", fire_greet, 20),
    Pattern("counter", fire_counter, 15),
    Pattern("call_service", fire_call_service, 15),
    Pattern("generic", fire_generic, 8),
    Pattern("sends", fire_sends, 8),
    Pattern("object_chain", fire_object_chain, 6),
    Pattern("workflow", fire_workflow, 6),
    Pattern("cross_language", fire_cross_language, 6),
    Pattern("idempotent", fire_idempotent, 4),
    Pattern("queue", fire_queue, 3, min_interval_s=20),
    Pattern("delayed", fire_delayed_sends, 2, min_interval_s=120),
    Pattern("saga", fire_saga, 2, min_interval_s=30),
    Pattern("long", fire_long, 2, min_interval_s=60),
    Pattern("failing", fire_failing, 2, min_interval_s=60),
    Pattern("cross_deadlock", fire_cross_deadlock, 2, min_interval_s=40),
    Pattern("cycle_deadlock", fire_cycle_deadlock, 2, min_interval_s=60),
)


@dataclass
class Limits:
    max_deadlocks: int = 6  # more stuck deadlock roots than this: cancel the oldest
    max_failing: int = 4  # more failing roots than this: kill the oldest
    saga_cancel_after_s: float = 45.0  # cancel each saga after this long: compensations run


@dataclass
class TrafficStats:
    fired: Counter[str] = field(default_factory=Counter)
    invocations: int = 0
    errors: int = 0
    cancelled: int = 0
    killed: int = 0


def run_traffic(
    client: RestateClient,
    *,
    rate_per_s: float,
    duration_s: float | None = None,
    stop_event: threading.Event | None = None,
    mix: tuple[Pattern, ...] = MIX,
    limits: Limits | None = None,
    rng: random.Random | None = None,
) -> TrafficStats:
    """Fire `rate_per_s` patterns per second until `duration_s` passes or `stop_event` is set.

    Survives Restate outages: a failed send is counted and retried later
    with a short pause, never raised.
    """
    if rate_per_s <= 0:
        raise ValueError("rate_per_s must be positive")
    stop_event = stop_event or threading.Event()
    limits = limits or Limits()
    rng = rng or random.Random()
    stats = TrafficStats()
    last_fired: dict[str, float] = {}
    deadlocks: deque[str] = deque()
    failing: deque[str] = deque()
    sagas: deque[tuple[float, str]] = deque()
    interval = 1.0 / rate_per_s
    start = time.monotonic()
    next_at = start

    while not stop_event.is_set():
        now = time.monotonic()
        if duration_s is not None and now - start >= duration_s:
            break
        pattern = _pick(mix, rng, last_fired, now)
        try:
            ids = pattern.fire(client)
            last_fired[pattern.name] = now
            stats.fired[pattern.name] += 1
            stats.invocations += len(ids)
            if pattern.name.endswith("deadlock"):
                deadlocks.extend(ids)
            elif pattern.name == "failing":
                failing.extend(ids)
            elif pattern.name == "saga":
                sagas.extend((now, i) for i in ids)
            _housekeep(client, limits, stats, deadlocks, failing, sagas, now)
        except RestateError as exc:
            stats.errors += 1
            logger.warning("traffic: %s failed: %s", pattern.name, exc)
            stop_event.wait(1.0)  # Restate is down or overloaded: do not spin
            next_at = time.monotonic()
        next_at += interval
        # Do not try to catch up after a long stall (an outage): resume the steady rate.
        next_at = max(next_at, time.monotonic() - interval)
        stop_event.wait(max(0.0, next_at - time.monotonic()))
    return stats


def _pick(mix: tuple[Pattern, ...], rng: random.Random, last_fired: dict[str, float], now: float) -> Pattern:
    due = [p for p in mix if now - last_fired.get(p.name, float("-inf")) >= p.min_interval_s]
    return rng.choices(due, weights=[p.weight for p in due])[0]


def _housekeep(
    client: RestateClient,
    limits: Limits,
    stats: TrafficStats,
    deadlocks: deque[str],
    failing: deque[str],
    sagas: deque[tuple[float, str]],
    now: float,
) -> None:
    """Keep what is stuck bounded, and let the dashboard see cancels and kills happen."""
    while len(deadlocks) > limits.max_deadlocks:
        if client.cancel(deadlocks.popleft()).ok:
            stats.cancelled += 1
    while len(failing) > limits.max_failing:
        if client.kill(failing.popleft()).ok:
            stats.killed += 1
    while sagas and now - sagas[0][0] >= limits.saga_cancel_after_s:
        if client.cancel(sagas.popleft()[1]).ok:
            stats.cancelled += 1
