"""`POST /v1/traces`: the OTLP/HTTP receiver Restate pushes its trace spans to.

It answers fast and only records (spans and invocation ids, see mirror.feed); the sync
engine, another process, reads Restate. Every refusal is a 4xx that says why, counted
on the sync line, since Restate itself only logs a failed export.
"""

from __future__ import annotations

import hmac
import threading
import time
import zlib

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from invocations.mirror import feed
from invocations.restate.spans import JSON, PROTOBUF, SpanFormatError, export_parse, export_response

# An unauthenticated flood must not turn into as many database writes: refusals are
# recorded at most this often per process (all are answered).
REFUSAL_RECORD_EVERY_S = 1.0
_last_refusal_recorded = 0.0
_refusal_lock = threading.Lock()


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@csrf_exempt
@require_POST
def traces_receive(request: HttpRequest) -> HttpResponse:
    if not settings.TRACES_TOKEN:
        return _text(404, "The trace receiver is off: set TRACES_TOKEN (and send it as a bearer token).")
    try:
        _authorize(request)
        content_type = _content_type(request)
        export = export_parse(_body(request), content_type=content_type)
    except Refused as refused:
        _record_refusal(f"{refused.status}: {refused}")
        response = _text(refused.status, str(refused))
        if refused.status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="traces"'
        return response
    except SpanFormatError as exc:
        _record_refusal(f"400: {exc}")
        return _text(400, str(exc))
    feed.spans_receive(export=export)
    return HttpResponse(export_response(content_type=content_type), content_type=content_type)


def _authorize(request: HttpRequest) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Refused(401, "Missing bearer token: send `Authorization: Bearer <TRACES_TOKEN>`.")
    if not hmac.compare_digest(token.strip().encode(), settings.TRACES_TOKEN.encode()):
        raise Refused(401, "Wrong bearer token.")


def _content_type(request: HttpRequest) -> str:
    content_type = (request.content_type or "").lower()
    if content_type not in (PROTOBUF, JSON):
        raise Refused(415, f"Unsupported content type {content_type!r}: send {PROTOBUF} or {JSON}.")
    return content_type


def _body(request: HttpRequest) -> bytes:
    limit = settings.TRACES_MAX_BODY_BYTES
    declared = request.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"Body of {int(declared)} bytes is over the limit of {limit} bytes (TRACES_MAX_BODY_BYTES).")
    body = request.read(limit + 1)
    if len(body) > limit:
        raise Refused(413, f"Body is over the limit of {limit} bytes (TRACES_MAX_BODY_BYTES).")
    encoding = request.headers.get("Content-Encoding", "identity").lower()
    if encoding == "gzip":
        # Bounded: a small compressed body must not inflate past the same limit.
        inflater = zlib.decompressobj(wbits=31)
        try:
            body = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise Refused(400, f"Body is not valid gzip: {exc}") from exc
        if len(body) > limit or inflater.unconsumed_tail:
            raise Refused(413, f"Body inflates past the limit of {limit} bytes (TRACES_MAX_BODY_BYTES).")
    elif encoding != "identity":
        raise Refused(415, f"Unsupported content encoding {encoding!r}: send gzip or none.")
    return body


def _record_refusal(reason: str) -> None:
    global _last_refusal_recorded
    with _refusal_lock:
        now = time.monotonic()
        if now - _last_refusal_recorded < REFUSAL_RECORD_EVERY_S:
            return
        _last_refusal_recorded = now
    feed.refusal_record(reason=reason)


def _text(status: int, message: str) -> HttpResponse:
    return HttpResponse(message + "\n", status=status, content_type="text/plain; charset=utf-8")
