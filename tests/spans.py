"""OTLP export bodies shaped like restate-server 1.7.12's (names and attributes verified
against a real server), for the receiver's tests."""

from __future__ import annotations

import json
import os
import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status


def restate_span(
    name: str,
    invocation_id: str,
    *,
    target: str = "Greeter/greet",
    start_ns: int | None = None,
    duration_ns: int = 5_000_000,
    error: str | None = None,
    deployment: str = "",
    result: str = "",
) -> Span:
    start = start_ns if start_ns is not None else time.time_ns()
    attributes = {"restate.invocation.id": invocation_id, "restate.invocation.target": target}
    if deployment:
        attributes |= {"restate.deployment.id": deployment, "restate.deployment.address": "http://127.0.0.1:9080/"}
    if result:
        attributes["restate.invocation.result"] = result
    return Span(
        trace_id=os.urandom(16),
        span_id=os.urandom(8),
        name=f"{name} {target}",
        start_time_unix_nano=start,
        end_time_unix_nano=start + duration_ns,
        status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_OK, message=error or ""),
        attributes=[KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attributes.items()],
    )


def export_body(*spans: Span) -> bytes:
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=list(spans))])],
    )
    return request.SerializeToString()


def export_json(*spans: Span) -> bytes:
    """OTLP/JSON: ids in hex, as the spec writes them (not protobuf's base64)."""
    document = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": s.trace_id.hex(),
                                "spanId": s.span_id.hex(),
                                "name": s.name,
                                "startTimeUnixNano": str(s.start_time_unix_nano),
                                "endTimeUnixNano": str(s.end_time_unix_nano),
                                "status": {"code": s.status.code},
                                "attributes": [
                                    {"key": a.key, "value": {"stringValue": a.value.string_value}} for a in s.attributes
                                ],
                            }
                            for s in spans
                        ]
                    }
                ]
            }
        ]
    }
    return json.dumps(document).encode()
