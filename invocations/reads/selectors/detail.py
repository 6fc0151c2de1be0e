"""Reads for the invocation detail page: the invocation, its journal, its call tree.

The tree is one query on `root_id` (indexed) plus one for its edges. `root_id`
stays null while some ancestor was never seen (purged before we synced it, or
not synced yet); then we walk up `parent_id` to the topmost ancestor we hold
and walk down level by level, which is bounded by the depth of the tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import QuerySet, Subquery

from invocations.graph import trees
from invocations.mirror.models import Deployment, Invocation, InvocationEdge, JournalEntry

JOURNAL_CAP = 1000  # entries shown on the page; the rest is counted, not rendered
MAX_WALK = 500  # parent hops / levels before we stop following links (bad data must not loop)


class InvocationNotFound(LookupError):
    """The id is well formed but our copy does not hold it."""


def invocation_get(invocation_id: str) -> Invocation:
    try:
        return Invocation.objects.get(id=invocation_id)
    except Invocation.DoesNotExist:
        raise InvocationNotFound(invocation_id) from None


def tree_root_get(invocation_id: str) -> str | None:
    """The root of the tree this invocation belongs to (itself while unresolved); None if we do not hold it."""
    row = Invocation.objects.filter(id=invocation_id).values_list("id", "root_id").first()
    if row is None:
        return None
    return row[1] or row[0]


def invocation_brief_get(invocation_id: str | None) -> Invocation | None:
    """Id and target only (a parent named in a header); None when we do not hold it."""
    if not invocation_id:
        return None
    return Invocation.objects.filter(id=invocation_id).only("id", "target").first()


@dataclass(frozen=True)
class JournalPage:
    entries: list[JournalEntry]
    total: int  # entries we hold

    @property
    def truncated(self) -> bool:
        return self.total > len(self.entries)


def journal_get(invocation_id: str, *, limit: int = JOURNAL_CAP) -> JournalPage:
    entries = list(JournalEntry.objects.filter(invocation_id=invocation_id).order_by("index")[:limit])
    total = len(entries)
    if total == limit:
        total = JournalEntry.objects.filter(invocation_id=invocation_id).count()
    return JournalPage(entries, total)


def journal_entry_get(invocation_id: str, entry_type: str) -> JournalEntry | None:
    """The first entry of a type (the Input and Output commands), even beyond the page cap."""
    return JournalEntry.objects.filter(invocation_id=invocation_id, entry_type=entry_type).order_by("index").first()


def deployment_get(deployment_id: str | None) -> Deployment | None:
    if not deployment_id:
        return None
    return Deployment.objects.filter(id=deployment_id).first()


@dataclass(frozen=True)
class TreeData:
    root_id: str
    rows: list[dict]
    edges: list[dict]
    # The top of what we hold has a parent we never saw: the real root is missing.
    missing_parent_id: str | None
    complete_root: bool  # True when found via root_id (every ancestor seen)


def _rows(qs: QuerySet[Invocation]) -> list[dict]:
    return list(qs.values(*trees.ROW_FIELDS))


def topmost_known_ancestor(inv: Invocation) -> tuple[str, str | None]:
    """Walk parent_id up while we hold the parent; returns (topmost id, its unseen parent id or None)."""
    current_id, parent_id = inv.id, inv.parent_id
    seen = {current_id}
    for _ in range(MAX_WALK):
        if not parent_id or parent_id in seen:
            return current_id, None
        row = Invocation.objects.filter(id=parent_id).values_list("id", "parent_id", "root_id").first()
        if row is None:
            return current_id, parent_id
        current_id, parent_id, root_id = row
        seen.add(current_id)
        if root_id and root_id != current_id and Invocation.objects.filter(id=root_id).exists():
            return root_id, None  # this ancestor knows the root: jump there
    return current_id, None


def tree_get(inv: Invocation) -> TreeData:
    edge_fields = [f for f in trees.EDGE_FIELDS if f != "target"]
    if inv.root_id and (inv.root_id == inv.id or Invocation.objects.filter(id=inv.root_id).exists()):
        root_id = inv.root_id
        rows = _rows(Invocation.objects.filter(root_id=root_id))
        callers = Invocation.objects.filter(root_id=root_id).values("id")
        edges = list(
            InvocationEdge.objects.filter(caller_id__in=Subquery(callers)).values(
                *edge_fields, "target_service", "target_key", "target_handler"
            )
        )
        missing = None
        complete = True
    else:
        root_id, missing = topmost_known_ancestor(inv)
        rows, edges = _walk_down(root_id)
        complete = False
    for e in edges:
        key = e.pop("target_key")
        e["target"] = f"{e.pop('target_service')}{'/' + key if key is not None else ''}/{e.pop('target_handler')}"
    return TreeData(root_id=root_id, rows=rows, edges=edges, missing_parent_id=missing, complete_root=complete)


def _walk_down(root_id: str) -> tuple[list[dict], list[dict]]:
    """Breadth-first by parent_id: one query per level, for trees whose root_id is not resolved."""
    edge_fields = [f for f in trees.EDGE_FIELDS if f != "target"]
    rows = _rows(Invocation.objects.filter(id=root_id))
    frontier = [r["id"] for r in rows]
    seen = set(frontier)
    edges: list[dict] = []
    for _ in range(MAX_WALK):
        if not frontier:
            break
        edges += list(
            InvocationEdge.objects.filter(caller_id__in=frontier).values(
                *edge_fields, "target_service", "target_key", "target_handler"
            )
        )
        level = [r for r in _rows(Invocation.objects.filter(parent_id__in=frontier)) if r["id"] not in seen]
        rows += level
        frontier = [r["id"] for r in level]
        seen.update(frontier)
    return rows, edges


def tree_build(inv: Invocation, *, now: datetime) -> tuple[trees.Tree, TreeData]:
    data = tree_get(inv)
    return trees.build_tree(data.rows, data.edges, data.root_id, now=now), data
