"""Restate journal entries turned into display rows: what a Call / OneWayCall / Sleep /
Notification entry means, which invocation it points at, and when it fires.

With journal v2 the typed columns are null, so everything comes from entry_lite_json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from invocations.mirror.models import JournalEntry
from invocations.reads.presenters.payloads import readable_entry


def _target_text(target: Any) -> str:
    """{"VirtualObject": {"name", "key", "handler"}} -> "Name/key/handler"."""
    if not isinstance(target, dict) or not target:
        return ""
    ty, t = next(iter(target.items()))
    if not isinstance(t, dict):
        return str(ty)
    key = t.get("key")
    return f"{t.get('name', '?')}{'/' + str(key) if key is not None else ''}/{t.get('handler', '?')}"


def _ms_to_dt(ms: Any) -> datetime | None:
    if isinstance(ms, int) and ms > 0:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)
    return None


@dataclass(frozen=True)
class JournalRow:
    entry: JournalEntry
    summary: str
    link_id: str | None = None  # an invocation this entry points at
    at: datetime | None = None  # a fire / wake-up time
    at_label: str = ""
    full: str = ""  # pretty JSON of the whole entry, byte arrays decoded


def journal_row(entry: JournalEntry) -> JournalRow:
    lite = entry.entry_lite if isinstance(entry.entry_lite, dict) else {}
    body: dict = {}
    for section in ("Command", "Notification"):
        if isinstance(lite.get(section), dict):
            inner = lite[section]
            body = next(iter(inner.values()), {}) if section == "Command" else inner
            break
    body = body if isinstance(body, dict) else {}
    summary, link_id, at, at_label = "", None, None, ""
    kind = entry.entry_type.split(": ", 1)[-1]
    if kind in ("Call", "OneWayCall") and entry.entry_type.startswith("Command"):
        summary = _target_text(body.get("invocation_target"))
        link_id = body.get("invocation_id")
        if (at := _ms_to_dt(body.get("invoke_time"))) is not None:
            at_label = "delayed send, fires"
        elif kind == "OneWayCall":
            summary += " (one-way send)"
    elif kind == "Sleep" and entry.entry_type.startswith("Command"):
        at, at_label = _ms_to_dt(body.get("wake_up_time")), "wakes up"
    elif "key" in body:
        summary = f"key {body['key']!r}"
    elif kind == "Output":
        summary = str(body.get("result", ""))
    elif entry.entry_type.startswith("Notification"):
        summary = str(body.get("result", ""))
        if isinstance(body.get("id"), dict) and "CompletionId" in body["id"]:
            summary = f"completion {body['id']['CompletionId']}: {summary}"
        full = entry.entry or {}
        call_id = full.get("Notification", {}).get("Completion", {}).get("CallInvocationId", {})
        if isinstance(call_id, dict) and call_id.get("invocation_id"):
            link_id = call_id["invocation_id"]
    full_text = json.dumps(readable_entry(entry.entry), indent=2, ensure_ascii=False) if entry.entry else ""
    return JournalRow(entry, summary, link_id, at, at_label, full_text)
