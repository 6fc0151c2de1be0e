"""/delayed/ from our copy (real PostgreSQL, rows made by the factories): the pending
delayed messages in fire order with their sender, sending journal entry, payload and
send time; the filters (target, sender, fire window) and their 400s; keyset pages; the
chart of upcoming fires and its bar links; the bulk cancel of a filter (its dry run is
the page's set); the list filters underneath; and the page's socket. Restate's own
delayed sends are tested in test_delayed_restate.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from invocations import events
from invocations.graph.fires import RANGES, bucket_floor, fire_chart
from invocations.live.routing import websocket_urlpatterns
from invocations.mirror.actions import Action
from invocations.mirror.models import Invocation, JournalEntry
from invocations.operations.roles import Role, user_set_role
from invocations.reads.filters import InvocationFilters
from invocations.reads.selectors import delayed as selectors
from invocations.reads.selectors.jobs import bulk_preview
from tests.factories import build_edge, create_invocation, payload_bytes

NOW = timezone.now


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    cache.clear()  # shared renders are cached per filter
    yield
    cache.clear()


def sender(target: str = "Orchestrator/schedule", **fields: Any) -> Invocation:
    fields.setdefault("created_at", timezone.now() - timedelta(minutes=3))
    return create_invocation(target=target, status="completed", **fields)


def delayed(
    fires_in: timedelta,
    *,
    by: Invocation | None = None,
    target: str = "Greeter/greet",
    payload: Any = "hello",
    index: int | None = None,
    **fields: Any,
) -> Invocation:
    """A pending delayed message firing `fires_in` from now: sent by `by` (its OneWayCall
    at journal `index`, with the payload) or through the ingress (an Input entry)."""
    now = timezone.now()
    sent = fields.pop("sent_at", now - timedelta(minutes=2))
    inv = create_invocation(
        target=target,
        status=fields.pop("status", "scheduled"),
        parent=by,
        invoked_by_target=by.target if by else None,
        created_at=sent,
        scheduled_at=sent,
        scheduled_start_at=now + fires_in,
        **fields,
    )
    if by is not None:
        index = index if index is not None else 1 + 2 * JournalEntry.objects.filter(invocation_id=by.id).count()
        build_edge(by, inv, kind="delayed_send", journal_index=index, created_at=sent, fire_at=now + fires_in).save()
        JournalEntry.objects.create(
            invocation_id=by.id,
            index=index,
            entry_type="Command: OneWayCall",
            appended_at=sent,
            entry={
                "Command": {
                    "OneWayCall": {
                        "request": {"invocation_id": inv.id, "parameter": payload_bytes(payload)},
                        "invoke_time": int((now + fires_in).timestamp() * 1000),
                    }
                }
            },
            entry_lite={"Command": {"OneWayCall": {"invocation_id": inv.id}}},
        )
    else:
        JournalEntry.objects.create(
            invocation_id=inv.id,
            index=0,
            entry_type="Command: Input",
            appended_at=sent,
            entry={"Command": {"Input": {"payload": payload_bytes(payload), "headers": []}}},
            entry_lite={"Command": {"Input": {}}},
        )
    return inv


def shown_ids(body: str) -> list[str]:
    return re.findall(r'<tr id="delayed-(inv_[^"]+)"', body)


@pytest.fixture
def operator(client: Client) -> Client:
    user_set_role(username="op", role=Role.OPERATOR)
    return client


# ---------------------------------------------------------------- the list


def test_pending_messages_in_fire_order_with_sender_entry_payload_and_send_time(client: Client) -> None:
    orch = sender()
    later = delayed(timedelta(hours=3), by=orch, target="Counter/alice/add", payload=10)
    soon = delayed(timedelta(minutes=5), by=orch, payload={"name": "bob", "tags": ["a", "b"]})
    from_ingress = delayed(timedelta(minutes=30), payload="from the ingress")
    # Not pending: fired (running now), cancelled (gone from Restate), a plain running call.
    delayed(timedelta(minutes=-1), by=orch, status="running")
    delayed(timedelta(minutes=7), by=orch, gone_from_restate_at=timezone.now())
    create_invocation(target="Greeter/greet", status="running", created_at=timezone.now())

    response = client.get("/delayed/")
    assert response.status_code == 200
    body = response.content.decode()
    assert shown_ids(body) == [soon.id, from_ingress.id, later.id]
    assert response.context["matching"] == 3
    assert 'href="/delayed/">Delayed</a>' in body, "the header links the page"

    row = body[body.index(f'id="delayed-{soon.id}"') :].split("</tr>")[0]
    assert f'<time class="countdown" datetime="{soon.scheduled_start_at.isoformat()}"' in row
    assert soon.scheduled_start_at.strftime("%Y-%m-%d %H:%M:%S") + " UTC" in row
    assert "Greeter/greet" not in row or "/greet</a>" in row
    assert f'href="/invocations/{orch.id}/#journal-3"' in row and "journal entry 3" in row
    assert "Orchestrator/schedule" in row
    assert "&quot;name&quot;: &quot;bob&quot;" in row and "\n  &quot;tags&quot;: [" in row, "pretty-printed JSON"
    assert "2 min 0 s ago" in row or "min" in row  # sent two minutes ago
    ingress_row = body[body.index(f'id="delayed-{from_ingress.id}"') :].split("</tr>")[0]
    assert "the ingress" in ingress_row and "&quot;from the ingress&quot;" in ingress_row
    later_row = body[body.index(f'id="delayed-{later.id}"') :].split("</tr>")[0]
    assert 'Counter/<code class="object-key">alice</code>/add' in later_row
    # A viewer has no control; the page says where the same set is in the list.
    assert "Cancel…" not in body and "bulk-action" not in body
    assert "/invocations/?status=scheduled" in body


def test_a_large_payload_is_cut_inside_postgresql_and_says_its_size(client: Client) -> None:
    big = "x" * 50_000
    msg = delayed(timedelta(minutes=1), by=sender(), payload=big)
    heads = selectors.payload_heads(invocation_ids=[msg.id], sendings=selectors.sendings_get(invocation_ids=[msg.id]))
    assert len(heads[msg.id].head) == selectors.PAYLOAD_HEAD and heads[msg.id].size == 50_002
    row = client.get("/delayed/").content.decode()
    assert f"first {selectors.PAYLOAD_HEAD} characters of 48.8\xa0KB" in row
    assert "x" * 3000 not in row


def test_filters_by_target_sender_and_fire_window_and_keeps_them_in_the_url(client: Client) -> None:
    orch, trip = sender(), sender("Trip/book")
    a = delayed(timedelta(minutes=10), by=orch, target="Greeter/greet")
    b = delayed(timedelta(minutes=20), by=trip, target="Greeter/greet")
    c = delayed(timedelta(hours=2), by=orch, target="Counter/k/add")
    d = delayed(timedelta(hours=30), target="Counter/k/get")

    def ids(query: str) -> list[str]:
        response = client.get(f"/delayed/?{query}", HTTP_HX_REQUEST="true")
        assert response.status_code == 200, response.content
        return shown_ids(response.content.decode())

    assert ids("service=Greeter") == [a.id, b.id]
    assert ids("service=Counter&handler=add") == [c.id]
    assert ids("sender_service=Orchestrator") == [a.id, c.id]
    assert ids("sender_service=Trip&sender_handler=book") == [b.id]
    assert ids("sender_handler=schedule&service=Counter") == [c.id]
    window = timezone.now() + timedelta(minutes=15)
    assert ids(f"fires_after={window.isoformat().replace('+', '%2B')}") == [b.id, c.id, d.id]
    assert ids(f"fires_before={window.isoformat().replace('+', '%2B')}") == [a.id]
    page = client.get("/delayed/?sender_service=Trip&chart=week").content.decode()
    assert 'name="sender_service" value="Trip"' in page and 'name="chart" value="week"' in page
    assert 'ws-connect="/ws/delayed/?sender_service=Trip&amp;chart=week"' in page
    # Without JavaScript the form sends every field: the URL is cleaned to what is set.
    response = client.get("/delayed/?service=&handler=&sender_service=Trip&fires_after=")
    assert response.status_code == 302 and response["Location"] == "/delayed/?sender_service=Trip"


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("fires_after=tomorrow", "fires_after: Enter a valid date/time."),
        ("fires_after=2026-01-02T00:00:00Z&fires_before=2026-01-01T00:00:00Z", "fires_after must be earlier"),
        ("fires_before=99999-01-01", "fires_before"),
        ("chart=month", "chart: Select a valid choice. month is not one of the available choices."),
        ("after=nonsense", "is not of the form"),
        ("after=2026-01-01T00:00:00~" + "x" * 150, "after"),
        (
            "sender_service=a/b",
            "sender_service: &#x27;a/b&#x27; has a &#x27;/&#x27;: service and handler names never do",
        ),
        ("service=" + "s" * 300, "service"),
    ],
)
def test_bad_input_is_a_400_saying_what_was_wrong(client: Client, query: str, says: str) -> None:
    response = client.get(f"/delayed/?{query}")
    assert response.status_code == 400
    assert says in response.content.decode()


def test_pages_follow_fire_order_by_keyset(client: Client) -> None:
    orch = sender()
    same = timedelta(minutes=30)
    made = [delayed(same if n % 3 == 0 else timedelta(minutes=n), by=orch, index=1 + 2 * n) for n in range(120)]
    expected = [m.id for m in sorted(made, key=lambda m: (m.scheduled_start_at, m.id))]
    seen: list[str] = []
    query = ""
    for _ in range(3):
        response = client.get(f"/delayed/?{query}")
        assert response.status_code == 200
        seen += shown_ids(response.content.decode())
        next_query = response.context["next_query"]
        if not next_query:
            break
        query = next_query
        assert "after=" in query
    assert seen == expected, "every message once, in fire order, ties by id"
    assert response.context["matching"] == 120


# ---------------------------------------------------------------- the chart


def test_chart_buckets_are_aligned_and_sized_by_the_busiest() -> None:
    now = datetime(2026, 11, 23, 1, 7, 42, tzinfo=UTC)
    assert bucket_floor(now, timedelta(minutes=5)) == datetime(2026, 11, 23, 1, 5, tzinfo=UTC)
    assert bucket_floor(now, timedelta(hours=6)) == datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
    day = RANGES["day"]
    burst = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)
    chart = fire_chart(chart=day, now=now, counts={burst: 400, burst + timedelta(hours=5): 1})
    assert chart.start == datetime(2026, 11, 23, 1, tzinfo=UTC) and chart.end == chart.start + timedelta(hours=24)
    assert len(chart.bars) == 24 and chart.total == 401 and chart.peak == 400
    tall, small = chart.bars[2], chart.bars[7]
    assert tall.start == burst and tall.count == 400 and tall.height == chart.plot_height
    assert small.count == 1 and 1.5 <= small.height < 2, "one message in a busy chart still shows"
    assert all(b.height == 0 for b in chart.bars if not b.count)
    assert [t.text for t in chart.x_labels][:3] == ["01:00", "04:00", "07:00"]
    week = fire_chart(chart=RANGES["week"], now=now, counts={})
    assert len(week.bars) == 28 and week.bars[1].start == datetime(2026, 11, 23, 6, tzinfo=UTC)
    assert week.x_labels[0].text == "Mon 00:00" and [t.text for t in week.y_labels] == ["0"]
    hour = fire_chart(chart=RANGES["hour"], now=now, counts={})
    assert len(hour.bars) == 12 and hour.end - hour.start == timedelta(hours=1)


def test_chart_counts_upcoming_fires_and_a_bar_links_to_its_messages(client: Client) -> None:
    orch = sender()
    now = timezone.now()
    start = bucket_floor(now, timedelta(hours=1))
    three = start + timedelta(hours=3)  # a burst at "03:00" of the chart
    burst = [
        delayed(three - now + timedelta(seconds=n), by=orch, index=1 + 2 * n, target="Email/send") for n in range(7)
    ]
    delayed(timedelta(hours=1, minutes=1), by=orch, target="Greeter/greet")
    delayed(timedelta(days=3), target="Greeter/greet")  # after the day's chart
    overdue = delayed(timedelta(minutes=-90), target="Greeter/greet")  # due, not started yet in our copy
    sent = create_invocation(target="Greeter/greet", status="scheduled", created_at=now)  # no fire time
    assert sent.scheduled_start_at is None

    response = client.get("/delayed/")
    context = response.context
    counts = context["counts"]
    assert counts.buckets.get(three) == 7 and counts.after == 1 and counts.before == 1 and counts.unknown == 1
    assert context["matching"] == counts.total == 11
    (bar,) = [b for b in context["bars"] if b.bar.start == three]
    assert bar.bar.count == 7 and bar.bar.height == context["chart"].plot_height and not bar.selected
    body = response.content.decode()
    assert f"<title>7 messages fire {three:%a %H:%M}\u2013{three + timedelta(hours=1):%H:%M} UTC</title>" in body
    assert '<text class="count"' in body, "the count shown on hover"
    assert "1 was due before and has not started yet" in body and "1 later" in body
    assert overdue.id in shown_ids(body)

    # The bar's link: the list of those seven, the bar selected, the chart unchanged.
    params = parse_qs(bar.query)
    assert datetime.fromisoformat(params["fires_after"][0]) == three
    assert datetime.fromisoformat(params["fires_before"][0]) == three + timedelta(hours=1)
    filtered = client.get(f"/delayed/?{bar.query}")
    assert shown_ids(filtered.content.decode()) == [m.id for m in burst]
    assert filtered.context["matching"] == 7
    assert [b.selected for b in filtered.context["bars"]].count(True) == 1
    assert filtered.context["counts"].buckets.get(three) == 7, "the chart leaves out the window"
    # Filters other than the window narrow the chart too; the range comes from the URL.
    assert client.get("/delayed/?service=Greeter").context["counts"].buckets.get(three) == 0
    week = client.get("/delayed/?chart=week").context
    assert len(week["bars"]) == 28 and week["counts"].after == 0
    assert client.get("/delayed/?chart=hour").context["chart"].range.name == "hour"


# ---------------------------------------------------------------- cancelling


def test_an_operator_cancels_one_or_every_message_of_the_filter_through_the_bulk_dry_run(operator: Client) -> None:
    orch = sender()
    mine = [delayed(timedelta(minutes=5 + n), by=orch, index=1 + 2 * n, target="Email/send") for n in range(3)]
    other = delayed(timedelta(minutes=9), target="Greeter/greet")
    delayed(timedelta(minutes=8), by=orch, index=99, target="Email/send", gone_from_restate_at=timezone.now())

    response = operator.get("/delayed/?service=Email")
    body = response.content.decode()
    assert f'href="/invocations/{mine[0].id}/actions/cancel/"' in body and body.count("Cancel…") == 3
    list_query = response.context["list_query"]
    assert 'name="filter" value="' in body and 'name="action" value="cancel"' in body
    assert parse_qs(list_query) == {"status": ["scheduled"], "service": ["Email"]}

    # The dry run of the bulk job is exactly the page's set (the cancelled-and-gone one is left out).
    preview = operator.get("/jobs/new/", {"action": "cancel", "filter": list_query})
    assert preview.status_code == 200
    assert preview.context["preview"].count == 3
    targets = {i.id for i in preview.context["preview"].sample}
    assert targets == {m.id for m in mine} and other.id not in targets
    # The same with a sender and a fire window: the list filters underneath say the same set.
    windowed = operator.get(
        "/delayed/",
        {
            "sender_service": "Orchestrator",
            "sender_handler": "schedule",
            "fires_before": (timezone.now() + timedelta(minutes=6, seconds=30)).isoformat(),
        },
    )
    assert shown_ids(windowed.content.decode()) == [m.id for m in mine[:2]]
    filters = InvocationFilters(
        statuses=("scheduled",),
        parent_service="Orchestrator",
        parent_handler="schedule",
        fires_before=windowed.context["filters"].fires_before,
    )
    assert windowed.context["list_query"] == filters.query_string()
    assert bulk_preview(filters=filters, action=Action.CANCEL).count == 2


def test_the_list_page_takes_the_same_filters(client: Client) -> None:
    orch = sender("Counter/k1/add")
    a = delayed(timedelta(minutes=5), by=orch)
    b = delayed(timedelta(hours=5), by=sender("Orchestrator/schedule"))
    when = (timezone.now() + timedelta(hours=1)).isoformat()

    def ids(params: dict[str, str]) -> set[str]:
        response = client.get("/invocations/", params, HTTP_HX_REQUEST="true")
        assert response.status_code == 200, response.content
        return set(re.findall(r'<tr id="row-(inv_[^"]+)"', response.content.decode()))

    assert ids({"parent_service": "Counter"}) == {a.id}
    assert ids({"parent_handler": "add"}) == {a.id}
    assert ids({"parent_handler": "k1"}) == set(), "a key is not a handler"
    assert ids({"fires_after": when}) == {b.id}
    assert ids({"fires_before": when, "status": "scheduled"}) == {a.id}
    page = client.get("/invocations/", {"fires_after": when}).content.decode()
    assert 'type="hidden" name="fires_after"' in page and "Scheduled to fire from" in page
    assert client.get("/invocations/", {"parent_service": "a/b"}).status_code == 400
    assert client.get("/invocations/", {"fires_after": when, "fires_before": when}).status_code == 400


# ---------------------------------------------------------------- the socket


async def _socket(path: str, user: Any, steps: list[Any]) -> tuple[int | None, str, list[str]]:
    from channels.db import database_sync_to_async

    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path)
    communicator.scope["user"] = user
    connected, code = await communicator.connect(timeout=5)
    if not connected:
        return code, "", []
    first = await communicator.receive_from(timeout=10)
    later = []
    layer = get_channel_layer()
    for step in steps:
        ids = await database_sync_to_async(step)()
        await layer.group_send(events.LIST_GROUP, {"type": "invocations.changed", "ids": ids, "count": len(ids)})
        message = ""
        while not await communicator.receive_nothing(timeout=1.5):
            message += await communicator.receive_from(timeout=5)
        later.append(message)
    await communicator.disconnect()
    return None, first, later


def test_the_socket_redraws_when_a_message_fires_or_arrives_and_ignores_other_changes(
    transactional_db: None,
) -> None:
    user = User.objects.create_user("watcher")
    assert async_to_sync(_socket)("/ws/delayed/", AnonymousUser(), [])[0] == 4401
    assert async_to_sync(_socket)("/ws/delayed/?chart=month", user, [])[0] == 4400
    orch = sender()
    soon = delayed(timedelta(seconds=30), by=orch)
    other = create_invocation(target="Greeter/greet", status="running", created_at=timezone.now())
    state: dict[str, str] = {}

    def unrelated() -> list[str]:
        Invocation.objects.filter(id=other.id).update(status="completed")
        return [other.id]

    def fires() -> list[str]:
        Invocation.objects.filter(id=soon.id).update(status="running", running_at=timezone.now())
        return [soon.id]

    def arrives() -> list[str]:
        state["new"] = delayed(timedelta(hours=2), by=orch, index=9).id
        return [state["new"]]

    closed, first, later = async_to_sync(_socket)("/ws/delayed/?chart=hour", user, [unrelated, fires, arrives])
    assert closed is None
    assert first.lstrip().startswith('<section id="delayed-chart" class="fires" hx-swap-oob="outerHTML"')
    assert 'id="delayed-table" hx-swap-oob="outerHTML"' in first and f'id="delayed-{soon.id}"' in first
    assert later[0] == "", "a change to no delayed message draws nothing"
    assert 'id="delayed-table"' in later[1] and f'id="delayed-{soon.id}"' not in later[1], "it fired: gone"
    assert f'id="delayed-{state["new"]}"' in later[2], "a new message appears"


# ---------------------------------------------------------------- generated at scale


def test_generated_delayed_messages_read_like_synced_ones(transactional_db: None) -> None:
    """`generate_invocations --delayed` (the benchmark's data): senders, edges, OneWayCall and
    Input entries as the sync writes them, so the page finds sender, entry and payload."""
    from django.core.management import call_command

    from demo.management.commands.generate_invocations import DELAYED_SENDERS, Command

    user = User.objects.create_user("gen")
    client = Client()
    client.force_login(user)
    command = Command()
    call_command(command, count=400, big_tree=0, seed=3, delayed=60, stdout=__import__("io").StringIO())
    assert command.result is not None and command.result.delayed == 60
    messages = Invocation.objects.filter(id__startswith="inv_1gen", status="scheduled", invoked_by="service")
    pending = selectors.pending_delayed(InvocationFilters()).filter(id__startswith="inv_1gen")
    assert messages.filter(invoked_by_target__isnull=False).count() >= 60 and pending.count() >= 60
    response = client.get("/delayed/?chart=week")
    # The --delayed ones (the tree generator's scheduled children come without journals).
    generated = [r for r in response.context["rows"] if r.inv.id in set(pending.values_list("id", flat=True))]
    senders = {(svc, handler) for svc, handler, _ in DELAYED_SENDERS}
    sent = [r for r in generated if (r.sender_target.split("/")[0], r.sender_target.split("/")[-1]) in senders]
    assert sent and all(r.journal_index is not None and r.payload_source == "sent" for r in sent)
    assert '"note": "reminder' in sent[0].payload.text
    burst = command.result.delayed_burst_at
    assert burst is not None and burst.hour == 3
    in_burst = pending.filter(scheduled_start_at__gte=burst, scheduled_start_at__lt=burst + timedelta(minutes=5))
    assert in_burst.count() >= 1
    call_command("generate_invocations", delete=True, verbosity=0)
    assert not Invocation.objects.filter(id__startswith="inv_1gen").exists()
    assert not JournalEntry.objects.filter(invocation_id__startswith="inv_1gen").exists()


def test_counts_past_the_cap_say_more_than(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selectors, "COUNT_CAP", 2)
    orch = sender()
    for n in range(5):
        delayed(timedelta(days=3, minutes=n), by=orch, index=1 + 2 * n)
    delayed(timedelta(minutes=10), by=orch, index=20)
    page = client.get("/delayed/")
    counts = page.context["counts"]
    assert counts.after == 3 and counts.capped and page.context["matching_capped"]
    body = page.content.decode()
    assert "more than 2 later" in body and "More than 3 pending delayed messages" in body
    assert len(shown_ids(body)) == 6, "the list itself is never cut by the cap"
    after = (timezone.now() + timedelta(days=2)).isoformat()
    windowed = client.get("/delayed/", {"fires_after": after})
    assert windowed.context["matching"] == 3 and "More than 2 pending" in windowed.content.decode()


def test_the_socket_redraws_when_its_first_bucket_is_over(
    transactional_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart starts at the current bucket: once it is over the page is redrawn, change or not."""
    from invocations.graph import fires

    monkeypatch.setitem(
        fires.RANGES, "hour", fires.ChartRange("hour", "next hour", "1-second", timedelta(seconds=1), 12, 3, "%S")
    )
    user = User.objects.create_user("ticker")

    async def watch() -> tuple[str, str]:
        communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/delayed/?chart=hour")
        communicator.scope["user"] = user
        connected, _ = await communicator.connect(timeout=5)
        assert connected
        first = await communicator.receive_from(timeout=10)
        again = await communicator.receive_from(timeout=5)  # nothing changed: the next second's bucket
        await communicator.disconnect()
        return first, again

    first, again = async_to_sync(watch)()
    assert 'id="delayed-chart"' in first and 'id="delayed-chart"' in again, "redrawn without any change"
