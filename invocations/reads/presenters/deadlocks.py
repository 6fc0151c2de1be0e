"""/deadlocks/: each stored cycle as a loop drawn with the service map's layout (Graphviz),
its members in wait order, the member we suggest cancelling and why, and what that
cancel reaches; and the banner a member's detail page shows."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from invocations.graph.layout import DrawingError, GraphEdge, GraphNode, PlacedEdge, PlacedNode
from invocations.mirror.models import Deadlock, Invocation, SyncState
from invocations.reads.presenters.formatting import duration
from invocations.reads.presenters.service_map import drawing_cached
from invocations.reads.selectors import actions as selectors_actions
from invocations.reads.selectors import waits as selectors_waits

NODE_W, NODE_H = 230.0, 58.0
TARGET_CHARS = 30
REACH_SHOWN = 10


@dataclass(frozen=True)
class MemberView:
    id: str
    inv: Invocation | None  # None: not in our copy (yet)
    position: int
    waits_on: str  # the next member's id
    wait_kind: str  # "call": waits for its callee; "queued": waits in the inbox behind the key's holder
    holds: tuple[str, str] | None  # the object key whose lock it holds
    queued_on: selectors_waits.QueuePlace | None
    suggested: bool
    box: PlacedNode | None = None

    @property
    def target(self) -> str:
        return self.inv.target if self.inv is not None else "?"

    @property
    def short_target(self) -> str:
        t = self.target
        return t if len(t) <= TARGET_CHARS else t[: TARGET_CHARS - 1] + "…"

    @property
    def wait_words(self) -> str:
        if self.wait_kind == "call":
            return "calls"
        return "queued behind"


@dataclass(frozen=True)
class WaitView:
    source: str
    target: str
    kind: str
    label: str
    route: PlacedEdge | None


@dataclass(frozen=True)
class DeadlockView:
    deadlock: Deadlock
    members: list[MemberView]
    waits: list[WaitView]
    suggested: MemberView
    why: str
    reach: selectors_actions.Reach
    width: float
    height: float
    drawing_error: str
    request_key: str  # one per render: a double click on its button is one cancel

    @property
    def id(self) -> str:
        return self.deadlock.id

    @property
    def keys(self) -> list[str]:
        return [f"{service}/{key}" for service, key in self.deadlock.keys]

    @property
    def reach_more(self) -> int:
        return max(self.reach.total - len(self.reach.reached), 0)


def _why(suggested: MemberView, members: list[MemberView], by_id: dict[str, MemberView]) -> str:
    created = [m.inv.created_at for m in members if m.inv is not None]
    if suggested.inv is None or not created:
        return "We hold too little of this cycle to compare its members: the first one in wait order is suggested."
    younger_by = suggested.inv.created_at - min(created)
    waiting = [m for m in members if m.waits_on == suggested.id]
    caller = waiting[0] if waiting else None
    parts = [
        f"It is the youngest member (started {duration(younger_by)} after the oldest): cancelling it undoes the "
        "least work and runs the fewest compensations."
    ]
    if caller is not None and caller.wait_kind == "call":
        parts.append(
            f"Its caller {caller.target} then gets the cancellation as the failed result of its call; whether the "
            "rest of the cycle completes or fails is up to that handler's code."
        )
    if suggested.queued_on is not None:
        parts.append("It has not started yet (it waits in the inbox), so nothing of it runs at all.")
    return " ".join(parts)


def deadlock_view(deadlock: Deadlock, invs: dict[str, Invocation], calls: set[tuple[str, str]]) -> DeadlockView:
    member_ids = [m.invocation_id for m in deadlock.members.all()]
    places = selectors_waits.queue_places(invocation_ids=member_ids)
    held = selectors_waits.held_keys(invocation_ids=member_ids)
    members = []
    for i, mid in enumerate(member_ids):
        following = member_ids[(i + 1) % len(member_ids)]
        members.append(
            MemberView(
                id=mid,
                inv=invs.get(mid),
                position=i,
                waits_on=following,
                wait_kind="call" if (mid, following) in calls else "queued",
                holds=held.get(mid),
                queued_on=places.get(mid),
                suggested=mid == deadlock.suggested_id,
            )
        )
    by_id = {m.id: m for m in members}
    nodes = [GraphNode(m.id, NODE_W, NODE_H, label=m.target) for m in members]
    edges = [GraphEdge(m.id, m.waits_on, m.wait_words, cls=m.wait_kind) for m in members]
    error, width, height = "", 0.0, 0.0
    routes: list[PlacedEdge | None] = [None] * len(edges)
    try:
        drawing = drawing_cached(nodes, edges)
    except DrawingError as exc:
        error = str(exc)
    else:
        members = [MemberView(**{**m.__dict__, "box": box}) for m, box in zip(members, drawing.nodes, strict=True)]
        routes = list(drawing.edges)
        width, height = drawing.width, drawing.height
    waits = [
        WaitView(source=e.source, target=e.target, kind=e.cls, label=e.label, route=r)
        for e, r in zip(edges, routes, strict=True)
    ]
    suggested = next((m for m in members if m.suggested), members[0])
    return DeadlockView(
        deadlock=deadlock,
        members=members,
        waits=waits,
        suggested=suggested,
        why=_why(suggested, members, by_id),
        reach=selectors_actions.cancel_reach_get(suggested.id, limit=REACH_SHOWN),
        width=width,
        height=height,
        drawing_error=error,
        request_key=secrets.token_urlsafe(16),
    )


def deadlocks_context(*, now: datetime) -> dict[str, Any]:
    current = selectors_waits.deadlocks_current()
    resolved = selectors_waits.deadlocks_recently_resolved()
    ids = {m.invocation_id for d in [*current, *resolved] for m in d.members.all()}
    invs = selectors_waits.invocations_get(invocation_ids=ids)
    calls = selectors_waits.pending_calls_between(
        invocation_ids={m.invocation_id for d in current for m in d.members.all()}
    )
    sync = SyncState.load()
    return {
        "deadlocks": [deadlock_view(d, invs, calls) for d in current],
        "resolved": [(d, [invs.get(m.invocation_id) or m.invocation_id for m in d.members.all()]) for d in resolved],
        "truncated": [t for t in sync.truncated_snapshots if t in ("queues", "locks")],
        "vqueues": sync.queue_tables == SyncState.QueueTables.VQUEUES,
        "now": now,
    }


@dataclass(frozen=True)
class Banner:
    """A detail page's "part of a deadlock" note: the cycles its call tree's invocations are in."""

    deadlock: Deadlock
    member_ids: list[str]
    this_is_member: bool


def deadlock_banners(*, invocation_id: str, root_id: str | None) -> list[Banner]:
    found = selectors_waits.tree_deadlocks(invocation_id=invocation_id, root_id=root_id)
    return [
        Banner(
            deadlock=d,
            member_ids=[m.invocation_id for m in d.members.all()],
            this_is_member=any(m.invocation_id == invocation_id for m in d.members.all()),
        )
        for d in found
    ]
