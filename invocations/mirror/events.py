"""The one place that names Channels groups and sends to them.

The sync engine calls `sync_step_committed` once per step, after its writes
committed (Zulip's rule: never tell a browser about a row it could not yet
read). Messages are coalesced: one per group per step, however many rows
changed. Consumers only join the groups named here and re-render what their
page shows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from invocations.mirror.models import Invocation

log = logging.getLogger(__name__)

LIST_GROUP = "invocations.list"  # every list page
SYNC_GROUP = "sync.state"  # every page's sync indicator
ALL_TREES_GROUP = "trees.all"  # every detail page, when too many trees changed to name them
# Past this many changed trees in one step (e.g. the first load), one message
# to every detail page is cheaper than a message per tree.
MAX_TREE_MESSAGES = 200


def tree_group(root_id: str) -> str:
    # Channels group names allow [a-zA-Z0-9._-]; Restate ids are inv_ + base62.
    return f"tree.{root_id}"


def _send(group: str, message: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    async_to_sync(layer.group_send)(group, message)


def changed_roots(ids: Iterable[str]) -> set[str]:
    """The trees (by root id; a node whose root is unresolved counts as its own tree) touched by `ids`."""
    roots: set[str] = set()
    ids = list(ids)
    for start in range(0, len(ids), 5000):
        chunk = ids[start : start + 5000]
        for inv_id, root_id in Invocation.objects.filter(id__in=chunk).values_list("id", "root_id"):
            roots.add(root_id or inv_id)
    return roots


def sync_step_committed(*, changed_ids: list[str], overflow: bool = False) -> None:
    """Tell every page what the step changed. Safe to call inside a transaction: it waits for the commit.

    overflow: more rows changed than `changed_ids` lists (a first load); every tree is told.
    """
    transaction.on_commit(lambda: _broadcast(changed_ids, overflow))


def _broadcast(changed_ids: list[str], overflow: bool) -> None:
    try:
        _send(SYNC_GROUP, {"type": "sync.changed"})
        if not changed_ids:
            return
        _send(LIST_GROUP, {"type": "invocations.changed", "ids": changed_ids[:1000], "count": len(changed_ids)})
        roots = set() if overflow else changed_roots(changed_ids)
        if overflow or len(roots) > MAX_TREE_MESSAGES:
            _send(ALL_TREES_GROUP, {"type": "tree.changed"})
        else:
            for root in roots:
                _send(tree_group(root), {"type": "tree.changed"})
    except Exception:
        log.exception("broadcast after sync step failed")
