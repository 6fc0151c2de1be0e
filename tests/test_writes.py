"""The COPY-based upsert against real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import DataError

from invocations.mirror.sync import mapping
from invocations.mirror.sync.writes import RawJson, upsert
from invocations.models import JournalEntry

T0 = datetime(2026, 11, 22, tzinfo=UTC)


def entry(index: int, raw: object) -> JournalEntry:
    return JournalEntry(
        invocation_id="inv_1w", index=index, entry_type="Command: Input", appended_at=T0, entry=raw, entry_lite=None
    )


def test_raw_json_is_stored_as_jsonb_without_a_python_round_trip(transactional_db: None) -> None:
    upsert(
        JournalEntry,
        [entry(0, RawJson('{"Command": {"Input": {"payload": [34, 104, 105, 34]}}}')), entry(1, {"parsed": True})],
    )
    stored = {e.index: e.entry for e in JournalEntry.objects.filter(invocation_id="inv_1w")}
    assert stored == {0: {"Command": {"Input": {"payload": [34, 104, 105, 34]}}}, 1: {"parsed": True}}


def test_invalid_raw_json_is_refused_and_the_parsed_fallback_keeps_the_text(transactional_db: None) -> None:
    with pytest.raises(DataError):
        upsert(JournalEntry, [entry(0, RawJson("{not json"))])
    upsert(JournalEntry, [entry(0, mapping.load_json(RawJson("{not json")))])
    assert JournalEntry.objects.get(invocation_id="inv_1w", index=0).entry == {"unparsed": "{not json"}


def test_guarded_update_returns_only_rows_that_changed(transactional_db: None) -> None:
    first = upsert(
        JournalEntry, [entry(0, {"a": 1})], update_fields=["entry"], guard_fields=["entry"], returning=["index"]
    )
    same = upsert(
        JournalEntry, [entry(0, {"a": 1})], update_fields=["entry"], guard_fields=["entry"], returning=["index"]
    )
    changed = upsert(
        JournalEntry, [entry(0, {"a": 2})], update_fields=["entry"], guard_fields=["entry"], returning=["index"]
    )
    assert (first, same, changed) == ([(0,)], [], [(0,)])
