"""Payloads as people read them: pretty JSON when it parses, else text, else a hex
dump, always capped so one huge payload cannot stall a page."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from invocations.mirror.models import JournalEntry

PAYLOAD_CAP = 64 * 1024  # bytes of a payload shown; more is cut with a note
ENTRY_PAYLOAD_CAP = 4 * 1024  # per payload inside a journal entry's full view


@dataclass(frozen=True)
class Payload:
    text: str
    kind: str  # "json", "text", "binary", "empty"
    size: int  # bytes
    truncated: bool = False


def _as_bytes(raw: Any) -> bytes | None:
    """Restate's entry_json carries payload bytes as a list of ints; accept a str too."""
    if isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw):
        return bytes(raw)
    if isinstance(raw, str):
        return raw.encode()
    return None


def format_payload(raw: Any, cap: int = PAYLOAD_CAP) -> Payload | None:
    """Pretty JSON when it parses, else text (escaped by the template), else a hex dump; capped."""
    data = _as_bytes(raw)
    if data is None:
        return None
    if not data:
        return Payload("", "empty", 0)
    size = len(data)
    if size <= cap:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None:
            try:
                return Payload(json.dumps(json.loads(text), indent=2, ensure_ascii=False), "json", size)
            except ValueError:
                return Payload(text, "text", size)
    # Too big to parse safely, or binary: show the head only.
    head = data[:cap]
    try:
        return Payload(head.decode("utf-8"), "text", size, truncated=size > cap)
    except UnicodeDecodeError as exc:
        if exc.start > 0 and size > cap:
            # A multi-byte character cut by the cap: the rest is text.
            return Payload(head[: exc.start].decode("utf-8"), "text", size, truncated=True)
    return Payload(head.hex(" ", 1)[: cap * 3], "binary", size, truncated=size > cap)


def input_payload(entry: JournalEntry | None) -> Payload | None:
    if entry is None or not isinstance(entry.entry, dict):
        return None
    return format_payload(entry.entry.get("Command", {}).get("Input", {}).get("payload"))


@dataclass(frozen=True)
class Output:
    success: Payload | None
    failure: str | None


def output_result(entry: JournalEntry | None) -> Output | None:
    if entry is None or not isinstance(entry.entry, dict):
        return None
    result = entry.entry.get("Command", {}).get("Output", {}).get("result")
    if isinstance(result, dict) and "Success" in result:
        return Output(format_payload(result["Success"]), None)
    if isinstance(result, dict) and "Failure" in result:
        failure = result["Failure"]
        if isinstance(failure, dict):
            return Output(None, f"[{failure.get('code', '?')}] {failure.get('message', '')}".strip())
        return Output(None, str(failure))
    return Output(None, None) if result is None else Output(format_payload(json.dumps(result)), None)


def readable_entry(value: Any, key: str = "") -> Any:
    """The entry JSON with byte arrays decoded, for the journal's "full entry" view."""
    if isinstance(value, dict):
        return {k: readable_entry(v, k) for k, v in value.items()}
    if isinstance(value, list):
        if key in {"payload", "parameter", "value", "Success"} and (data := _as_bytes(value)) is not None:
            payload = format_payload(list(data), cap=ENTRY_PAYLOAD_CAP)
            if payload is None or payload.kind == "empty":
                return ""
            suffix = f" … ({payload.size} bytes, truncated)" if payload.truncated else ""
            if payload.kind == "json":
                return json.loads(payload.text)
            return payload.text + suffix
        if key in {"span_id", "trace_id"} and (data := _as_bytes(value)) is not None:
            return data.hex()
        return [readable_entry(v) for v in value]
    return value
