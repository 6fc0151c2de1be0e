"""The events module only sends: the engine hands it ids and their trees' roots, and it
names the groups. It sends after commit, and never reads the database."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from invocations import events

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
