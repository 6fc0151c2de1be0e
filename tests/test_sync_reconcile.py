"""Reconciliation against the real restate-server: damage our copy (rows deleted, a status
corrupted, a live row marked gone, a row Restate never had), reconcile, and our copy
equals what Restate's own SQL says again: ids, status and modified_at, for every row."""

from __future__ import annotations

from datetime import datetime

import pytest
from django.utils import timezone

from demo import traffic
from invocations.mirror.models import Invocation, JournalEntry
from invocations.mirror.sync.engine import SyncEngine
from invocations.mirror.sync.mapping import parse_timestamp
from invocations.restate import RestateClient
from tests.conftest import wait_completed
from tests.test_sync_integration import settle, tree_ids

pytestmark = pytest.mark.integration

Facts = dict[str, tuple[str, datetime | None]]
PHANTOM = "inv_1phantomNeverInRestateAAAAAAAAAA"


def restate_facts(restate: RestateClient) -> Facts:
    rows = restate.query("SELECT id, status, modified_at FROM sys_invocation")
    return {r["id"]: (r["status"], parse_timestamp(r.get("modified_at"))) for r in rows}


def our_facts() -> Facts:
    rows = Invocation.objects.filter(gone_from_restate_at__isnull=True).values_list("id", "status", "modified_at")
    return {inv_id: (status, modified) for inv_id, status, modified in rows}


def differences(before: Facts, ours: Facts, after: Facts) -> list[str]:
    """Rows where ours differs from Restate, among rows Restate did not change meanwhile.

    Other tests leave invocations behind in the shared restate-server (retrying, suspended,
    running): one that changed in Restate while we compared proves nothing either way.
    """
    stable = {i for i in before.keys() | after.keys() if before.get(i) == after.get(i)}
    out = []
    for inv_id in sorted(stable):
        theirs, mine = after.get(inv_id), ours.get(inv_id)
        if theirs != mine:
            out.append(f"{inv_id}: restate={theirs} ours={mine}")
    return out


def test_reconciliation_repairs_every_kind_of_drift(engine: SyncEngine, restate: RestateClient) -> None:
    roots = [traffic.fire_call_service(restate)[0] for _ in range(3)] + traffic.fire_greet(restate)
    for root in roots:
        wait_completed(restate, root)
    ids = [i for root in roots for i in tree_ids(restate, root)]
    settle(engine, restate, ids)
    engine.reconcile()  # whatever other tests left: start from an equal copy

    deleted = ids[:3]
    corrupted, marked_gone = ids[3], ids[4]
    Invocation.objects.filter(id__in=deleted).delete()
    JournalEntry.objects.filter(invocation_id__in=deleted).delete()
    Invocation.objects.filter(id=corrupted).update(status="running", completed_at=None)
    Invocation.objects.filter(id=marked_gone).update(gone_from_restate_at=timezone.now())
    template = Invocation.objects.get(id=ids[5])
    template.id = PHANTOM  # a row Restate never had (or purged before any listing saw it)
    template.save(force_insert=True)
    assert differences(restate_facts(restate), our_facts(), restate_facts(restate)), "the damage shows"

    before = restate_facts(restate)
    report = engine.reconcile()
    ours = our_facts()
    after = restate_facts(restate)

    assert not differences(before, ours, after)
    assert set(deleted) <= ours.keys()
    assert ours[corrupted][0] == "completed"
    assert report.revived >= 1 and Invocation.objects.get(id=marked_gone).gone_from_restate_at is None
    assert report.gone >= 1
    assert Invocation.objects.get(id=PHANTOM).gone_from_restate_at is not None
    # Re-fetched rows get their journals and roots back in the next step.
    engine.sync_once()
    assert JournalEntry.objects.filter(invocation_id=deleted[0], entry_type="Command: Input").exists()
    assert Invocation.objects.get(id=deleted[0]).root_id is not None
