"""Restate's trace spans, as its OTLP/HTTP exporter sends them: parsed into the few
facts the dashboard keeps. Pure (no Django, no database): the receiver's view and the
tests call it with the request's bytes.

Only spans about an invocation are kept (they carry `restate.invocation.id`); a
Collector that forwards every service's traces to us costs a parse, nothing more.
What 1.7.12 sends, verified: `ingress <svc>/<handler>`, `invocation-start ...`,
`invocation-attempt ...` (status ERROR with the failure's message when the attempt
failed; `restate.deployment.id`/`.address`), `invocation-end ...`
(`restate.invocation.result`).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from invocations.restate.ids import INVOCATION_ID_RE

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# Span name prefix -> our kind (SpanKind's values).
KINDS = {
    "ingress": "ingress",
    "invocation-start": "start",
    "invocation-attempt": "attempt",
    "invocation-end": "end",
}
# Cut before storing: a failure message can be a whole stack trace.
STATUS_MESSAGE_CHARS = 2000


class SpanFormatError(ValueError):
    """The body is not an OTLP trace export in the encoding it claims."""


@dataclass(frozen=True)
class SpanRecord:
    invocation_id: str
    kind: str
    trace_id: str
    span_id: str
    started_at: datetime
    ended_at: datetime
    status: int  # 0 unset, 1 ok, 2 error (OTLP's codes)
    status_message: str = ""
    deployment_id: str = ""
    deployment_address: str = ""
    result: str = ""


@dataclass(frozen=True)
class Export:
    spans_total: int  # every span in the body, ours or not
    records: list[SpanRecord]


def export_parse(body: bytes, *, content_type: str) -> Export:
    """Parse one export request; raises SpanFormatError on anything malformed."""
    request = ExportTraceServiceRequest()
    if content_type == PROTOBUF:
        try:
            request.ParseFromString(body)
        except (DecodeError, RuntimeWarning, ValueError) as exc:
            raise SpanFormatError(f"not an OTLP ExportTraceServiceRequest (protobuf): {exc}") from exc
    elif content_type == JSON:
        _parse_json(body, request)
    else:
        raise SpanFormatError(f"unsupported content type {content_type!r}: send {PROTOBUF} or {JSON}")
    total = 0
    records: list[SpanRecord] = []
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                total += 1
                record = _record(span)
                if record is not None:
                    records.append(record)
    return Export(spans_total=total, records=records)


def export_response(*, content_type: str) -> bytes:
    """The success answer in the request's encoding (OTLP says: same as the request)."""
    if content_type == JSON:
        return b"{}"
    return ExportTraceServiceResponse().SerializeToString()


def _parse_json(body: bytes, request: ExportTraceServiceRequest) -> None:
    # OTLP/JSON writes trace and span ids as hex, where protobuf's JSON mapping expects
    # base64: convert them before handing the document to json_format.
    try:
        document = json.loads(body)
        for resource_spans in document.get("resourceSpans", []):
            for scope_spans in resource_spans.get("scopeSpans", []):
                for span in scope_spans.get("spans", []):
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if span.get(key):
                            span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except (ValueError, TypeError, AttributeError, json_format.ParseError) as exc:
        raise SpanFormatError(f"not an OTLP ExportTraceServiceRequest (JSON): {exc}") from exc


def _record(span: Any) -> SpanRecord | None:
    attributes = {a.key: a.value for a in span.attributes}
    invocation_id = _string(attributes.get("restate.invocation.id"))
    kind = KINDS.get(span.name.split(" ", 1)[0])
    if kind is None or not INVOCATION_ID_RE.fullmatch(invocation_id):
        return None
    started, ended = _time(span.start_time_unix_nano), _time(span.end_time_unix_nano)
    return SpanRecord(
        invocation_id=invocation_id,
        kind=kind,
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        started_at=started,
        ended_at=max(started, ended),
        status=int(span.status.code),
        status_message=span.status.message[:STATUS_MESSAGE_CHARS],
        deployment_id=_string(attributes.get("restate.deployment.id"))[:100],
        deployment_address=_string(attributes.get("restate.deployment.address"))[:2000],
        result=_string(attributes.get("restate.invocation.result"))[:16],
    )


def _string(value: Any) -> str:
    if value is None or value.WhichOneof("value") != "string_value":
        return ""
    return str(value.string_value)


def _time(unix_nano: int) -> datetime:
    return datetime.fromtimestamp(unix_nano / 1e9, tz=UTC)
