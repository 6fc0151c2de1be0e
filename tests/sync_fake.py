"""A small in-memory stand-in for `RestateClient.query/query_batches/version`, for unit
tests of the sync engine's own logic (paging, windows, backlog, failures). It answers
only the query shapes the engine sends, and records every SQL text it was sent.
Behaviour against the real Restate is tested in test_sync_integration / test_sync_reconcile.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from invocations.mirror.sync.mapping import parse_timestamp
from invocations.restate import QueryError, RestateUnavailable

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
Row = dict[str, Any]

_LITERAL = re.compile(r"'((?:[^']|'')*)'")
# Restate refuses a whole query when one id in it is not a valid invocation id (measured on 1.7.12:
# "non valid invocation id" for a wrong length or value range).
VALID_ID = re.compile(r"^inv_1[0-9A-Za-z]{33}$")


def fake_id(n: int) -> str:
    return f"inv_1fake{n:05d}AAAAAAAAAAAAAAAAAAAAAAAA"


def _in_list(sql: str) -> list[str] | None:
    match = re.search(r"\bid IN \(([^)]*)\)", sql)
    if not match:
        return None
    ids = [m.replace("''", "'") for m in _LITERAL.findall(match.group(1))]
    if not all(VALID_ID.match(i) for i in ids):
        raise QueryError("Datafusion error: External error: non valid invocation id")
    return ids


def _limit(sql: str) -> int | None:
    match = re.search(r"LIMIT (\d+)\s*$", sql)
    return int(match.group(1)) if match else None


@dataclass
class FakeRestate:
    invocations: dict[str, Row] = field(default_factory=dict)
    journals: dict[str, list[Row]] = field(default_factory=dict)
    inbox: list[Row] = field(default_factory=list)
    locks: list[Row] = field(default_factory=list)
    promises: list[Row] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    batch_rows: int = 1000
    # Called with each SQL text before it is answered; raise from it to inject a failure.
    before_query: Callable[[str], None] | None = None
    # Rows the full listing leaves out (a row created after the listing passed its partition).
    unlisted: set[str] = field(default_factory=set)
    version_info: dict[str, Any] = field(default_factory=lambda: {"version": "1.7.12", "features": {}})
    down: bool = False

    # -- building Restate's state

    def add(
        self,
        n: int,
        *,
        status: str = "completed",
        modified_at: datetime | None = None,
        parent: int | None = None,
        journal: int = 1,
        journal_size: int | None = None,
    ) -> str:
        inv_id = fake_id(n)
        modified = modified_at or T0 + timedelta(seconds=n)
        row: Row = {
            "id": inv_id,
            "target": "Greeter/greet",
            "target_service_name": "Greeter",
            "target_handler_name": "greet",
            "target_service_ty": "service",
            "status": status,
            "invoked_by": "service" if parent is not None else "ingress",
            "journal_size": journal if journal_size is None else journal_size,
            "retry_count": 0,
            "created_at": modified - timedelta(milliseconds=10),
            "modified_at": modified,
        }
        if parent is not None:
            row["invoked_by_id"] = fake_id(parent)
        self.invocations[inv_id] = row
        self.journals[inv_id] = []
        for index in range(journal):
            self.append_entry(inv_id, index=index, bump=False)
        return inv_id

    def append_entry(self, inv_id: str, *, index: int, bump: bool = True, at: datetime | None = None) -> None:
        entry_type = "Command: Input" if index == 0 else "Command: Run"
        self.journals[inv_id].append(
            {
                "id": inv_id,
                "index": index,
                "entry_type": entry_type,
                "appended_at": T0,
                "entry_json": json.dumps({"n": index}),
                "entry_lite_json": json.dumps({"Command": {entry_type.split(": ")[1]: {}}}),
            }
        )
        if bump:
            row = self.invocations[inv_id]
            row["journal_size"] = len(self.journals[inv_id])
            row["modified_at"] = at or row["modified_at"] + timedelta(seconds=1)

    # -- the RestateClient surface the engine uses

    def version(self) -> dict[str, Any]:
        self._check("GET /version")
        return self.version_info

    def query(self, sql: str) -> list[Row]:
        return [row for batch in self.query_batches(sql) for row in batch]

    def query_batches(self, sql: str) -> Iterator[list[Row]]:
        self._check(sql)
        rows = self._answer(sql)
        for start in range(0, len(rows), self.batch_rows):
            if self.before_query is not None:
                self.before_query(f"-- batch {start // self.batch_rows} of: {sql}")
            yield rows[start : start + self.batch_rows]

    def journal_queries(self) -> list[str]:
        return [q for q in self.queries if "FROM sys_journal" in q]

    # -- answering

    def _check(self, sql: str) -> None:
        self.queries.append(sql)
        if self.down:
            raise RestateUnavailable("fake Restate is down")
        if self.before_query is not None:
            self.before_query(sql)

    def _answer(self, sql: str) -> list[Row]:
        columns = [c.strip() for c in re.match(r"SELECT (.*?) FROM", sql, re.S).group(1).split(",")]  # type: ignore[union-attr]
        limit = _limit(sql)
        if "FROM sys_invocation" in sql:
            rows = self._invocations(sql)
        elif "FROM sys_journal" in sql:
            rows = self._journal(sql)
        elif "FROM sys_inbox" in sql:
            rows = self.inbox
        elif "FROM sys_keyed_service_status" in sql:
            rows = self.locks
        elif "FROM sys_promise" in sql:
            rows = self.promises
        elif "FROM sys_service" in sql or "FROM sys_deployment" in sql:
            rows = []
        else:
            raise AssertionError(f"the fake does not answer: {sql}")
        rows = [{c: r[c] for c in columns if c in r and r[c] is not None} for r in rows]
        return rows if limit is None else rows[:limit]

    def _invocations(self, sql: str) -> list[Row]:
        ids = _in_list(sql)
        if ids is not None:
            return [self.invocations[i] for i in ids if i in self.invocations]
        rows = [r for r in self.invocations.values() if r["id"] not in self.unlisted]
        window = re.search(r"modified_at >= TIMESTAMP '([^']+)'", sql)
        if window:
            since = parse_timestamp(window.group(1))
            assert since is not None
            active = "status NOT IN" in sql
            rows = [
                r
                for r in rows
                if r["modified_at"] >= since or (active and r["status"] not in ("completed", "scheduled", "pending"))
            ]
        return rows

    def _journal(self, sql: str) -> list[Row]:
        ids = _in_list(sql)
        if ids is None:
            assert "WHERE" not in sql, "the journal is read by id, or whole (a first sync)"
            return [e for entries in self.journals.values() for e in entries]
        start = re.search(r"index >= (\d+)", sql)
        first = int(start.group(1)) if start else 0
        return [e for i in ids for e in self.journals.get(i, []) if e["index"] >= first]
