"""The events module only sends: the engine hands it ids and their trees' roots, and it
names the groups. It sends after commit, and never reads the database."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from invocations import events
from invocations.mirror.sync.engine import SyncEngine
from tests.sync_fake import FakeRestate

Sent = list[tuple[str, dict[str, Any]]]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Sent:
    messages: Sent = []
    monkeypatch.setattr(events, "_send", lambda group, message: messages.append((group, message)))
    return messages


def test_changed_rows_reach_the_list_and_their_trees_without_a_query(
    transactional_db: None, sent: Sent, django_assert_num_queries: Any
) -> None:
    with django_assert_num_queries(0):
        events.sync_step_committed(
            changed_ids=["inv_child", "inv_root", "inv_orphan"], changed_roots={"inv_root", "inv_orphan"}
        )
    groups = [group for group, _ in sent]
    # The sync line last: a page handles its messages in order, and the trees' signal should not
    # wait for the sync line's database read.
    assert groups[-1] == events.SYNC_GROUP
    assert set(groups[:-1]) == {events.LIST_GROUP, events.tree_group("inv_root"), events.tree_group("inv_orphan")}
    listed = next(m for g, m in sent if g == events.LIST_GROUP)
    assert listed == {"type": "invocations.changed", "ids": ["inv_child", "inv_root", "inv_orphan"], "count": 3}


def test_without_roots_each_id_is_its_own_tree(transactional_db: None, sent: Sent) -> None:
    events.sync_step_committed(changed_ids=["inv_a"])
    assert events.tree_group("inv_a") in {g for g, _ in sent}


def test_too_many_trees_or_an_overflow_tell_every_detail_page_once(transactional_db: None, sent: Sent) -> None:
    many = [f"inv_{n}" for n in range(events.MAX_TREE_MESSAGES + 1)]
    events.sync_step_committed(changed_ids=many, changed_roots=many)
    assert [g for g, _ in sent].count(events.ALL_TREES_GROUP) == 1
    assert not any(g.startswith("tree.") for g, _ in sent)
    listed = next(m for g, m in sent if g == events.LIST_GROUP)
    assert listed["count"] == len(many)

    sent.clear()
    events.sync_step_committed(changed_ids=["inv_a"], changed_roots=["inv_a"], overflow=True)
    assert events.ALL_TREES_GROUP in {g for g, _ in sent}


def test_inside_a_transaction_it_waits_for_the_commit(transactional_db: None, sent: Sent) -> None:
    with transaction.atomic():
        events.sync_step_committed(changed_ids=["inv_a"], changed_roots=["inv_a"])
        assert not sent
    assert sent

    sent.clear()
    with pytest.raises(RuntimeError), transaction.atomic():
        events.sync_step_committed(changed_ids=["inv_b"], changed_roots=["inv_b"])
        raise RuntimeError("rolled back")
    assert not sent, "never tell a page about a row it cannot read"


def test_a_failure_only_refreshes_the_sync_indicator(transactional_db: None, sent: Sent) -> None:
    events.sync_step_committed(changed_ids=[])
    assert sent == [(events.SYNC_GROUP, {"type": "sync.changed"})]


def test_each_tree_is_told_its_rows_new_statuses_up_to_a_bound(transactional_db: None, sent: Sent) -> None:
    events.sync_step_committed(
        changed_ids=["inv_child", "inv_root", "inv_other"],
        changed_roots={"inv_root", "inv_other"},
        statuses={"inv_root": {"inv_child": "completed", "inv_root": "running"}, "inv_other": {"inv_other": "failed"}},
    )
    told = {g: m.get("statuses") for g, m in sent if g.startswith("tree.")}
    assert told == {
        events.tree_group("inv_root"): {"inv_child": "completed", "inv_root": "running"},
        events.tree_group("inv_other"): {"inv_other": "failed"},
    }

    sent.clear()
    many = {f"inv_{n}": "running" for n in range(events.MAX_TOLD_STATUSES + 1)}
    events.sync_step_committed(changed_ids=list(many), changed_roots=["inv_0"], statuses={"inv_0": many})
    assert [m["statuses"] for g, m in sent if g.startswith("tree.")] == [{}], "past the bound, the fetch tells"


def test_a_sync_step_tells_the_statuses_it_wrote(transactional_db: None, sent: Sent) -> None:
    restate = FakeRestate()
    parent = restate.add(1, status="running")
    child = restate.add(2, status="suspended", parent=1)
    SyncEngine(restate).sync_once()  # type: ignore[arg-type]
    told = {g: m.get("statuses") for g, m in sent if g == events.tree_group(parent)}
    assert told == {events.tree_group(parent): {parent: "running", child: "suspended"}}
