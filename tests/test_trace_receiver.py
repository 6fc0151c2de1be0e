"""`POST /v1/traces`: what it refuses (and says why), what it keeps, and that its hint
queue stays bounded under a flood. Bodies are built like restate-server's own exports
(tests/spans.py); the real server's spans are tested in test_trace_feed_restate."""

from __future__ import annotations

import gzip
from typing import Any

import pytest
from django.test import Client, override_settings

from invocations.mirror.models import InvocationSpan, SyncHint, TraceFeed
from invocations.mirror.sync import hints
from tests.spans import export_body, export_json, restate_span

TOKEN = "receiver-test-token"
AUTH = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
PROTOBUF = "application/x-protobuf"
INV = "inv_1aaaaaaaaaaaaaaaaaaaaaaaaa"
INV2 = "inv_1bbbbbbbbbbbbbbbbbbbbbbbbb"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def receiver_on(monkeypatch: pytest.MonkeyPatch) -> Any:
    from invocations.views import traces

    monkeypatch.setattr(traces, "_last_refusal_recorded", -1e9)  # each test records its first refusal
    with override_settings(TRACES_TOKEN=TOKEN, TRACES_MAX_BODY_BYTES=64 * 1024):
        yield


def post(body: bytes, *, content_type: str = PROTOBUF, **headers: str) -> Any:
    return Client().post("/v1/traces", data=body, content_type=content_type, **{**AUTH, **headers})


def test_an_export_is_stored_hinted_and_counted() -> None:
    body = export_body(
        restate_span("invocation-attempt", INV, error="transient failure", deployment="dp_1"),
        restate_span("invocation-end", INV, result="success"),
        restate_span("invocation-start", INV2),
        restate_span("some-other-span", "not-an-invocation"),
    )
    response = post(body)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == PROTOBUF

    attempt = InvocationSpan.objects.get(invocation_id=INV, kind="attempt")
    assert (attempt.status, attempt.status_message, attempt.deployment_id) == (2, "transient failure", "dp_1")
    assert InvocationSpan.objects.get(invocation_id=INV, kind="end").result == "success"
    assert InvocationSpan.objects.count() == 3, "a span about no invocation is not kept"
    assert sorted(hints.hints_due()[0]) == [INV, INV2]
    feed = TraceFeed.objects.get()
    assert (feed.requests, feed.spans, feed.ids_hinted, feed.refused) == (1, 4, 2, 0)
    assert feed.last_received_at is not None

    # An exporter that retries sends the same spans again: kept once.
    assert post(body).status_code == 200
    assert InvocationSpan.objects.count() == 3
    assert TraceFeed.objects.get().requests == 2


def test_json_and_gzip_encodings_are_accepted() -> None:
    assert post(export_json(restate_span("invocation-start", INV)), content_type="application/json").status_code == 200
    gzipped = gzip.compress(export_body(restate_span("invocation-start", INV2)))
    assert post(gzipped, HTTP_CONTENT_ENCODING="gzip").status_code == 200
    assert set(InvocationSpan.objects.values_list("invocation_id", flat=True)) == {INV, INV2}
    span = InvocationSpan.objects.get(invocation_id=INV)
    assert len(span.trace_id) == 32 and len(span.span_id) == 16


@pytest.mark.parametrize(
    ("headers", "status", "says"),
    [
        ({"HTTP_AUTHORIZATION": ""}, 401, "Missing bearer token"),
        ({"HTTP_AUTHORIZATION": "Basic abc"}, 401, "Missing bearer token"),
        ({"HTTP_AUTHORIZATION": "Bearer wrong"}, 401, "Wrong bearer token"),
        ({"content_type": "text/plain"}, 415, "Unsupported content type"),
        ({"HTTP_CONTENT_ENCODING": "br"}, 415, "Unsupported content encoding"),
    ],
)
def test_refusals_say_why_and_keep_nothing(headers: dict[str, str], status: int, says: str) -> None:
    content_type = headers.pop("content_type", PROTOBUF)
    response = post(export_body(restate_span("invocation-start", INV)), content_type=content_type, **headers)
    assert response.status_code == status
    assert says in response.content.decode()
    assert not InvocationSpan.objects.exists() and not SyncHint.objects.exists()
    feed = TraceFeed.objects.get()
    assert feed.refused == 1 and says in feed.last_refusal and feed.requests == 0
    if status == 401:
        assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("body", "content_type", "says"),
    [
        (b"\xff\xff\xff\xff not protobuf", PROTOBUF, "not an OTLP ExportTraceServiceRequest (protobuf)"),
        (b"{not json", "application/json", "not an OTLP ExportTraceServiceRequest (JSON)"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}', "application/json", "JSON"),
        (b'{"resourceSpans": 5}', "application/json", "JSON"),
    ],
)
def test_a_malformed_body_is_a_400_that_says_so(body: bytes, content_type: str, says: str) -> None:
    response = post(body, content_type=content_type)
    assert response.status_code == 400
    assert says in response.content.decode()
    assert not InvocationSpan.objects.exists()


def test_an_oversized_body_is_refused_before_and_after_inflating() -> None:
    big = export_body(*[restate_span("invocation-start", INV) for _ in range(2000)])
    assert len(big) > 64 * 1024
    response = post(big)
    assert response.status_code == 413 and "over the limit" in response.content.decode()
    # Small on the wire, huge once inflated: refused without inflating it all.
    bomb = gzip.compress(b"\0" * (10 * 1024 * 1024))
    assert len(bomb) < 64 * 1024
    response = post(bomb, HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 413 and "inflates past the limit" in response.content.decode()
    assert not InvocationSpan.objects.exists()


def test_off_without_a_token_and_post_only() -> None:
    with override_settings(TRACES_TOKEN=""):
        response = post(export_body(restate_span("invocation-start", INV)))
    assert response.status_code == 404 and "TRACES_TOKEN" in response.content.decode()
    assert Client().get("/v1/traces", **AUTH).status_code == 405


def test_the_hint_queue_is_bounded_and_what_it_drops_is_counted() -> None:
    ids = [f"inv_1flood{n:020d}" for n in range(30)]
    with override_settings(TRACES_HINT_QUEUE_MAX=10):
        assert post(export_body(*[restate_span("invocation-start", i) for i in ids[:25]])).status_code == 200
        assert SyncHint.objects.count() == 10
        # An id already queued is refreshed even when the queue is full; new ones are dropped.
        assert post(export_body(*[restate_span("invocation-end", i) for i in ids[:2] + ids[25:]])).status_code == 200
    assert SyncHint.objects.count() == 10
    feed = TraceFeed.objects.get()
    assert (feed.ids_hinted, feed.ids_dropped) == (10 + 2, 15 + 5)
    assert feed.last_dropped_at is not None
    # Every span is still kept for the pages: only the hint queue is bounded.
    assert InvocationSpan.objects.count() == 25 + 7


def test_spans_are_kept_for_a_while_and_up_to_a_number() -> None:
    from datetime import timedelta

    from django.db import connection
    from django.utils import timezone

    from invocations.mirror import feed

    assert post(export_body(*[restate_span("invocation-attempt", INV) for _ in range(6)])).status_code == 200
    old = list(InvocationSpan.objects.order_by("id").values_list("id", flat=True)[:2])
    InvocationSpan.objects.filter(id__in=old).update(received_at=timezone.now() - timedelta(days=8))
    with override_settings(SPANS_KEEP_S=7 * 86400, SPANS_MAX_ROWS=3):
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {InvocationSpan._meta.db_table}")  # the cap reads the planner's estimate
        assert feed.spans_prune() == 3
    kept = list(InvocationSpan.objects.order_by("id").values_list("id", flat=True))
    assert len(kept) == 3 and not set(old) & set(kept), "the expired went first, then the oldest past the cap"


def test_the_sync_line_says_which_mode_and_why_exports_were_refused() -> None:
    from django.utils import timezone

    from invocations.live import fragments
    from invocations.mirror.models import SyncState

    SyncState.objects.create(id=1, last_success_at=timezone.now(), mirrored_as_of=timezone.now())
    line = fragments.sync_state()
    assert 'data-mode="poll"' in line and "Polling" in line and "refused" not in line

    assert post(export_body(restate_span("invocation-start", INV)), HTTP_AUTHORIZATION="Bearer nope").status_code == 401
    line = fragments.sync_state()
    assert "Trace export refused" in line and "Wrong bearer token" in line

    assert post(export_body(restate_span("invocation-start", INV))).status_code == 200
    SyncState.objects.filter(id=1).update(feed_mode="push", last_net_changed=2)
    line = fragments.sync_state()
    assert 'data-mode="push"' in line and "Live from Restate's spans" in line and "1 span received" in line
    assert "Trace export refused" not in line, "an export accepted since then: the refusal is history"
    assert "Full scan" in line and "lag" not in line and "caught 2 changes no span announced" in line
