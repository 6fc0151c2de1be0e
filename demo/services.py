"""Demo Restate services (restate-sdk) that exercise every pattern of the
"Service Communication" reference pages, so the dashboard has real trees,
queues, deadlocks, delayed sends, retries and compensations to show.

Served by `python -m demo.serve PORT` (hypercorn, HTTP/2 cleartext).

Which handler exercises which pattern:
  Greeter.greet                  plain Service handler (the leaf of most trees)
  Counter.add / Counter.get      Virtual Object: exclusive handler / shared handler
  Worker.work                    exclusive handler that sleeps: calls to one key queue in its inbox
  Signup.run / confirm / status  Workflow: run awaits a durable promise that confirm resolves; status is shared
  Signup.reject                  rejects that promise instead: run fails with the rejection
  Orchestrator.call_all          request-response calls to a Service, an Object and a Workflow handler
  Orchestrator.workflow          call to a workflow's run + delayed send of its confirm + call to status
  Orchestrator.generic           generic call by name and generic send
  Orchestrator.send_all          one-way sends to a Service, an Object (ordered, twice) and a Workflow
  Orchestrator.schedule          delayed sends: minutes, hours and days (typed and generic)
  Orchestrator.later             delayed sends of Sleeper.nap after chosen delays (tests: one that fires soon)
  Orchestrator.idempotent        in-handler call with idempotency_key, made twice (same invocation)
  Orchestrator.wait_worker       a caller that waits on a queued Worker.work (caller -> queued callee)
  Orchestrator.long              a call tree worth cancelling: calls Sleeper.nap for many minutes
  Alpha/Beta/Gamma.hop           objects calling each other along a path: A->B->A cross deadlock,
                                 A->B->C->A cycle deadlock (same key, exclusive handlers)
  Flaky.fail                     fails (non-terminal) on every attempt: retries, backs off, pauses at the end
  Trip.book                      saga: reserves, then waits; when cancelled it calls compensations
  Inventory.reserve / release    Virtual Object used by the saga and by the TypeScript Shipping service
  Checkout.order                 Python -> TS Shipping.quote -> Python Inventory.reserve (cross-language tree)
  Sleeper.nap                    long-running invocation (ctx.sleep for minutes)
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import restate
from restate import (
    Context,
    ObjectContext,
    ObjectSharedContext,
    TerminalError,
    WorkflowContext,
    WorkflowSharedContext,
)


def _json(value: Any) -> bytes:
    # generic_call/generic_send take raw bytes: the callee's serde is JSON.
    return json.dumps(value).encode("utf-8")


# ---------------------------------------------------------------- leaves

greeter = restate.Service("Greeter")


@greeter.handler()
async def greet(ctx: Context, name: str) -> str:
    return f"Hello, {name}!"


counter = restate.VirtualObject("Counter")


@counter.handler()
async def add(ctx: ObjectContext, amount: int) -> int:
    total = (await ctx.get("total", type_hint=int) or 0) + amount
    ctx.set("total", total)
    return total


@counter.handler(kind="shared")
async def get(ctx: ObjectSharedContext) -> int:
    return await ctx.get("total", type_hint=int) or 0


worker = restate.VirtualObject("Worker")


@worker.handler()
async def work(ctx: ObjectContext, seconds: float) -> str:
    # Exclusive and slow: while it sleeps it holds the key's lock, so every
    # other call to the same key waits in the inbox (sys_inbox).
    await ctx.sleep(timedelta(seconds=seconds))
    done = (await ctx.get("done", type_hint=int) or 0) + 1
    ctx.set("done", done)
    return f"job {done} on {ctx.key()}"


sleeper = restate.Service("Sleeper")


@sleeper.handler()
async def nap(ctx: Context, minutes: float) -> str:
    # Long-running: nothing to do but wait; a natural thing to cancel.
    await ctx.sleep(timedelta(minutes=minutes))
    return f"slept {minutes} min"


# ---------------------------------------------------------------- workflow

signup = restate.Workflow("Signup")


@signup.main()
async def run(ctx: WorkflowContext, email: str) -> str:
    ctx.set("status", "waiting for confirmation")
    # Durable promise: resolved by `confirm`, possibly before `run` even starts.
    code = await ctx.promise("confirmed", type_hint=str).value()
    ctx.set("status", "confirmed")
    return f"{email} confirmed with {code}"


@signup.handler()
async def confirm(ctx: WorkflowSharedContext, code: str) -> None:
    await ctx.promise("confirmed", type_hint=str).resolve(code)


@signup.handler()
async def reject(ctx: WorkflowSharedContext, reason: str) -> None:
    # The run's await of the promise raises a TerminalError with this message: the run fails.
    await ctx.promise("confirmed", type_hint=str).reject(reason, code=400)


@signup.handler()
async def status(ctx: WorkflowSharedContext) -> str:
    return await ctx.get("status", type_hint=str) or "not started"


# ---------------------------------------------------------------- cross-object deadlocks

# Alpha, Beta and Gamma share one exclusive handler `hop(path)`: it calls the
# first object of `path` (same key) with the rest of the path. A path that
# comes back to an object already holding its lock for this key deadlocks:
#   Alpha.hop(["Beta", "Alpha"])          cross deadlock A -> B -> A
#   Alpha.hop(["Beta", "Gamma", "Alpha"]) cycle deadlock A -> B -> C -> A
#   Alpha.hop(["Beta"])                   an ordinary object-to-object call
HOP_OBJECTS = ("Alpha", "Beta", "Gamma")
_hops: dict[str, Any] = {}


def _hop_object(name: str) -> restate.VirtualObject:
    obj = restate.VirtualObject(name)

    @obj.handler(name="hop")
    async def hop(ctx: ObjectContext, path: list[str]) -> list[str]:
        if not path:
            return [name]
        target, rest = path[0], path[1:]
        if target not in _hops:
            raise TerminalError(f"unknown hop target {target!r}", status_code=400)
        visited = await ctx.object_call(_hops[target], key=ctx.key(), arg=rest)
        return [name, *visited]

    _hops[name] = hop
    return obj


alpha, beta, gamma = (_hop_object(n) for n in HOP_OBJECTS)


# ---------------------------------------------------------------- failures and sagas

flaky = restate.Service(
    "Flaky",
    # Quick enough retries that retry_count visibly grows, bounded so it ends
    # up paused (another state worth showing) instead of retrying forever.
    invocation_retry_policy=restate.InvocationRetryPolicy(
        initial_interval=timedelta(seconds=1),
        exponentiation_factor=2.0,
        max_interval=timedelta(seconds=20),
        max_attempts=40,
        on_max_attempts="pause",
    ),
)


@flaky.handler()
async def fail(ctx: Context, what: str) -> str:
    # A non-terminal exception: Restate retries the invocation on every failure.
    raise RuntimeError(f"{what}: upstream unavailable (the demo fails on every attempt)")


inventory = restate.VirtualObject("Inventory")


@inventory.handler()
async def reserve(ctx: ObjectContext, qty: int) -> int:
    reserved = (await ctx.get("reserved", type_hint=int) or 0) + qty
    ctx.set("reserved", reserved)
    return reserved


@inventory.handler()
async def release(ctx: ObjectContext, qty: int) -> int:
    reserved = max(0, (await ctx.get("reserved", type_hint=int) or 0) - qty)
    ctx.set("reserved", reserved)
    return reserved


trip = restate.Service("Trip")


@trip.handler()
async def book(ctx: Context, minutes: float) -> str:
    """Reserve a seat and a room, then wait for payment (a long nap).

    Cancelling the invocation makes the pending call fail with a TerminalError
    (409 cancelled); the saga then undoes what it did, each undo a call to
    another handler, so the compensations show up as children of this one.
    """
    undo: list[str] = []
    try:
        for sku in ("seat", "room"):
            await ctx.object_call(reserve, key=sku, arg=1)
            undo.append(sku)
        await ctx.service_call(nap, arg=minutes)
    except TerminalError:
        for sku in reversed(undo):
            await ctx.object_call(release, key=sku, arg=1)
        raise
    return "booked"


# ---------------------------------------------------------------- cross-language

checkout = restate.Service("Checkout")


@checkout.handler()
async def order(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    # Shipping is the TypeScript service (demo/ts/services.ts): no Python
    # definition to import, so it is called by name. It calls back into
    # Inventory.reserve, so the tree is Python -> TS -> Python.
    raw = await ctx.generic_call("Shipping", "quote", _json(req))
    return {"order": req, "shipping": json.loads(raw)}


# ---------------------------------------------------------------- the orchestrator


orchestrator = restate.Service("Orchestrator")


@orchestrator.handler()
async def call_all(ctx: Context, name: str) -> dict[str, Any]:
    """Request-response calls to a Service, a Virtual Object and a Workflow."""
    hello = await ctx.service_call(greet, arg=name)
    total = await ctx.object_call(add, key=name, arg=1)
    wf_status = await ctx.workflow_call(status, key=f"status-of-{name}", arg=None)
    return {"greet": hello, "count": total, "workflow": wf_status}


@orchestrator.handler()
async def workflow(ctx: Context, wf_id: str) -> dict[str, Any]:
    """Run a workflow to completion: run awaits the promise that confirm resolves."""
    # The confirmation arrives a few seconds later, as a delayed send to the
    # workflow's other handler, while this handler waits on the run call.
    ctx.workflow_send(confirm, key=wf_id, arg=f"code-{wf_id}", send_delay=timedelta(seconds=3))
    result = await ctx.workflow_call(run, key=wf_id, arg=f"{wf_id}@example.com")
    after = await ctx.workflow_call(status, key=wf_id, arg=None)
    return {"run": result, "status": after}


@orchestrator.handler()
async def generic(ctx: Context, name: str) -> str:
    """Call and send by service/handler name, without the definitions."""
    ctx.generic_send("Counter", "add", _json(1), key=name)
    raw = await ctx.generic_call("Greeter", "greet", _json(name))
    return json.loads(raw)


@orchestrator.handler()
async def send_all(ctx: Context, name: str) -> str:
    """One-way sends: this handler finishes before the messages are processed."""
    ctx.service_send(greet, arg=name)
    # Two sends to one key: executed in this order.
    ctx.object_send(add, key=name, arg=1)
    ctx.object_send(add, key=name, arg=2)
    wf_id = f"send-{name}-{ctx.uuid().hex[:8]}"
    ctx.workflow_send(run, key=wf_id, arg=f"{name}@example.com")
    ctx.workflow_send(confirm, key=wf_id, arg="sent")
    return "sent"


@orchestrator.handler()
async def schedule(ctx: Context, name: str) -> str:
    """Delayed sends: the children stay `scheduled` until their fire time."""
    ctx.service_send(greet, arg=f"{name} (in 5 minutes)", send_delay=timedelta(minutes=5))
    ctx.generic_send("Greeter", "greet", _json(f"{name} (in 30 minutes)"), send_delay=timedelta(minutes=30))
    ctx.object_send(add, key=name, arg=10, send_delay=timedelta(hours=3))
    wf_id = f"later-{name}-{ctx.uuid().hex[:8]}"
    ctx.workflow_send(run, key=wf_id, arg=f"{name}@example.com", send_delay=timedelta(days=2))
    ctx.workflow_send(confirm, key=wf_id, arg="late", send_delay=timedelta(days=2, minutes=1))
    return "scheduled"


@orchestrator.handler()
async def later(ctx: Context, req: dict[str, Any]) -> int:
    """Delayed sends of Sleeper.nap, one per delay in `req["seconds"]`, each napping
    `req["nap_minutes"]` once it fires: a message that fires soon, and stays running a while."""
    for seconds in req["seconds"]:
        ctx.service_send(nap, arg=float(req.get("nap_minutes", 0.0)), send_delay=timedelta(seconds=float(seconds)))
    return len(req["seconds"])


@orchestrator.handler()
async def idempotent(ctx: Context, key: str) -> list[str]:
    """Two calls with the same idempotency key resolve to one invocation."""
    first = await ctx.service_call(greet, arg=f"idempotent {key}", idempotency_key=f"greet-{key}")
    second = await ctx.service_call(greet, arg=f"idempotent {key}", idempotency_key=f"greet-{key}")
    return [first, second]


@orchestrator.handler()
async def wait_worker(ctx: Context, req: dict[str, Any]) -> str:
    """Wait on a Worker key: if it is busy, this caller waits behind its queue."""
    return await ctx.object_call(work, key=req["key"], arg=float(req.get("seconds", 3)))


@orchestrator.handler()
async def long(ctx: Context, minutes: float) -> str:
    """A two-level tree that runs for `minutes`; cancelling the root cancels the nap."""
    return await ctx.service_call(nap, arg=minutes)


SERVICES: list[restate.Service | restate.VirtualObject | restate.Workflow] = [
    greeter,
    counter,
    worker,
    sleeper,
    signup,
    alpha,
    beta,
    gamma,
    flaky,
    inventory,
    trip,
    checkout,
    orchestrator,
]

app = restate.app(SERVICES)
