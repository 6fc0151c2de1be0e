"""The one place that names Channels groups and sends to them.

The sync engine calls `sync_step_committed` after its writes committed (Zulip's
rule: never tell a browser about a row it could not yet read), handing over the
changed ids and the trees they belong to: this module only sends, it never
reads the database. Messages are coalesced: one per group per call, however
many rows changed. Consumers only join the groups named here and re-render what
their page shows.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection, transaction

log = logging.getLogger(__name__)

LIST_GROUP = "invocations.list"  # every list page
SYNC_GROUP = "sync.state"  # every page's sync indicator
ALL_TREES_GROUP = "trees.all"  # every detail page, when too many trees changed to name them
# Past this many changed trees in one step (e.g. the first load), one message
# to every detail page is cheaper than a message per tree.
MAX_TREE_MESSAGES = 200
# Statuses told with the trees' signals, at most (a step that changed more sends none).
MAX_TOLD_STATUSES = 500
# The list pages get at most this many ids per message (and the full count).
MAX_LIST_IDS = 1000


def tree_group(root_id: str) -> str:
    # Channels group names allow [a-zA-Z0-9._-]; Restate ids are inv_ + base62.
    return f"tree.{root_id}"


def session_group(session_key: str) -> str:
    """The group of one browser session's sockets. Hashed: group names allow only ASCII
    letters, digits, '-', '_' and '.', and the key itself is a credential."""
    return "session." + hashlib.sha256(session_key.encode()).hexdigest()[:32]


def session_ended(session_key: str) -> None:
    """Tell the sockets of a session that it logged out (they close)."""
    try:
        _send(session_group(session_key), {"type": "session.ended"})
    except Exception:
        log.warning("could not tell the sockets of a session that it ended", exc_info=True)


def _send(group: str, message: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    async_to_sync(layer.group_send)(group, message)


def _after_commit(func: Callable[[], None]) -> None:
    if connection.in_atomic_block:
        transaction.on_commit(func)
    else:
        # Autocommit: what the caller hands over is committed already. transaction.on_commit
        # would first ask the connection for its autocommit mode, which raises when
        # PostgreSQL is the thing that just failed, and the committed rows would go untold.
        func()


def sync_step_committed(
    *,
    changed_ids: Sequence[str],
    changed_roots: Iterable[str] | None = None,
    overflow: bool = False,
    statuses: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Tell every page what a sync step changed. Inside a transaction it waits for the commit.

    changed_roots: the root ids of the trees the changed rows belong to (a row whose
        root is not resolved yet is its own tree). None: the ids are roots themselves.
    overflow: more rows changed than `changed_ids` lists (a first load); every tree is told.
    statuses: root -> {id: status} of the changed rows, as written. With up to MAX_TOLD_STATUSES
        of them, each tree's signal carries its own, so a detail page shows its new status at
        once, before its fetch of the header and tree returns (measured: most of the time from
        our commit to the page was that fetch).
    """
    ids = list(changed_ids)
    roots = set(ids if changed_roots is None else changed_roots)
    told = {root: dict(rows) for root, rows in (statuses or {}).items()}
    if sum(len(rows) for rows in told.values()) > MAX_TOLD_STATUSES:
        told = {}
    _after_commit(lambda: _broadcast(ids, roots, overflow, told))


def _broadcast(changed_ids: list[str], roots: set[str], overflow: bool, statuses: dict[str, dict[str, str]]) -> None:
    try:
        # The changes before the sync line: a page's consumer handles its messages in order,
        # and the sync line is a database read, so sent first it delayed every tree's signal.
        if changed_ids or overflow:
            if overflow or len(roots) > MAX_TREE_MESSAGES:
                _send(ALL_TREES_GROUP, {"type": "tree.changed"})
            else:
                for root in roots:
                    _send(tree_group(root), {"type": "tree.changed", "statuses": statuses.get(root, {})})
            _send(
                LIST_GROUP,
                {"type": "invocations.changed", "ids": changed_ids[:MAX_LIST_IDS], "count": len(changed_ids)},
            )
        _send(SYNC_GROUP, {"type": "sync.changed"})
    except Exception:
        log.exception("broadcast after sync step failed")


# ---------------------------------------------------------------- actions, jobs, attach

AUDIT_GROUP = "audit.log"  # the audit page
JOBS_GROUP = "jobs.all"  # the jobs history page


def job_group(job_id: int) -> str:
    return f"job.{int(job_id)}"


def attach_group(invocation_id: str) -> str:
    # Restate ids are inv_ + base62: valid in a group name as they are.
    return f"attach.{invocation_id}"


def action_committed(*, root_ids: Iterable[str]) -> None:
    """An action was sent and audited: the audit page shows it, and the trees it
    touched redraw (their header says what was done, before the re-sync lands)."""
    roots = set(root_ids)

    def send() -> None:
        try:
            _send(AUDIT_GROUP, {"type": "audit.appended"})
            for root in roots:
                _send(tree_group(root), {"type": "tree.changed"})
        except Exception:
            log.exception("broadcast after an action failed")

    _after_commit(send)


def spans_arrived(*, root_ids: Iterable[str]) -> None:
    """New attempt spans for invocations whose row did not change (a poll saw the new state
    first): the trees redraw their attempt bars. Detail pages only; the list shows no spans."""
    roots = set(root_ids)

    def send() -> None:
        try:
            if len(roots) > MAX_TREE_MESSAGES:
                _send(ALL_TREES_GROUP, {"type": "tree.changed"})
                return
            for root in roots:
                _send(tree_group(root), {"type": "tree.changed"})
        except Exception:
            log.exception("broadcast of arrived spans failed")

    _after_commit(send)


def job_progressed(*, job_id: int) -> None:
    """A bulk job's counts or state changed (committed): its page and the history redraw."""

    def send() -> None:
        try:
            _send(job_group(job_id), {"type": "job.progressed", "job_id": int(job_id)})
            _send(JOBS_GROUP, {"type": "job.progressed", "job_id": int(job_id)})
            _send(AUDIT_GROUP, {"type": "audit.appended"})
        except Exception:
            log.exception("broadcast of job progress failed")

    _after_commit(send)


def attach_finished(*, invocation_id: str) -> None:
    """The shared wait for an invocation's result ended (committed): every attached page shows it."""

    def send() -> None:
        try:
            _send(attach_group(invocation_id), {"type": "attach.finished", "invocation_id": invocation_id})
        except Exception:
            log.exception("broadcast of an attach result failed")

    _after_commit(send)


# ---------------------------------------------------------------- queues, locks, deadlocks

OBJECTS_GROUP = "objects.all"  # /objects/: every key with a holder or a queue
DEADLOCKS_GROUP = "deadlocks.all"  # /deadlocks/
STUCK_GROUP = "stuck.all"  # /stuck/: waits changed (queues, locks, deadlocks)


def object_group(service: str, key: str) -> str:
    """The group of one virtual object key's page. Hashed: keys are any string, and
    group names allow only ASCII letters, digits, '-', '_' and '.'."""
    return "object." + hashlib.sha256(f"{service}\0{key}".encode()).hexdigest()[:32]


def queues_changed(*, keys: Iterable[tuple[str, str]]) -> None:
    """The locks or queues of these object keys changed (committed): the object pages redraw.
    The trees of the queued invocations are told through `sync_step_committed`."""
    changed = set(keys)
    if not changed:
        return

    def send() -> None:
        try:
            # "at": after the commit, the same for every reader, so their redraws can share one render.
            at = time.time()
            _send(OBJECTS_GROUP, {"type": "objects.changed", "at": at})
            _send(STUCK_GROUP, {"type": "stuck.changed"})
            for service, key in changed:
                _send(object_group(service, key), {"type": "object.changed", "at": at})
        except Exception:
            log.exception("broadcast of queue changes failed")

    _after_commit(send)


def deadlocks_changed(*, roots: Iterable[str]) -> None:
    """A cycle was found or broke (committed): /deadlocks/ and /stuck/ redraw, and so do
    the trees of its members (their banner)."""
    trees = set(roots)

    def send() -> None:
        try:
            _send(DEADLOCKS_GROUP, {"type": "deadlocks.changed"})
            _send(STUCK_GROUP, {"type": "stuck.changed"})
            _send(SYNC_GROUP, {"type": "sync.changed"})  # every page's header counts deadlocks
            for root in trees:
                _send(tree_group(root), {"type": "tree.changed"})
        except Exception:
            log.exception("broadcast of deadlock changes failed")

    _after_commit(send)


# ---------------------------------------------------------------- workflows

# Every workflow id's page, when too many workflows' promises changed at once to name them
# (the first load of a Restate with many workflows), like ALL_TREES_GROUP for the trees.
ALL_WORKFLOWS_GROUP = "workflows.all"


def workflow_group(service: str, workflow_id: str) -> str:
    """The group of one workflow id's page. Hashed: ids are any string, and group names
    allow only ASCII letters, digits, '-', '_' and '.'."""
    return "workflow." + hashlib.sha256(f"{service}\0{workflow_id}".encode()).hexdigest()[:32]


def promises_changed(*, keys: Iterable[tuple[str, str]]) -> None:
    """The durable promises of these workflow ids (service, workflow id) changed in our copy
    (committed): their pages redraw, and so does /stuck/ (a run waiting on a promise says
    whether our copy has it resolved). The sync engine sends it after it replaced
    `WorkflowPromise` with rows that differ."""
    changed = set(keys)
    if not changed:
        return

    def send() -> None:
        try:
            # "at": after the commit, the same for every reader, so their redraws can share one render.
            at = time.time()
            _send(STUCK_GROUP, {"type": "stuck.changed"})
            if len(changed) > MAX_TREE_MESSAGES:
                _send(ALL_WORKFLOWS_GROUP, {"type": "workflow.changed", "at": at})
                return
            for service, workflow_id in changed:
                _send(workflow_group(service, workflow_id), {"type": "workflow.changed", "at": at})
        except Exception:
            log.exception("broadcast of promise changes failed")

    _after_commit(send)
