"""The virtual object pages from our copy (real PostgreSQL, rows made by the factories):
/objects/ sorted by contention and filtered by service, a key's page with its holder,
queue in Restate's order and who waits on each entry, keys of any shape in the URL,
bad input, truncated snapshots, the queue facts of the detail page and its tree rows,
and both pages' sockets. Restate's own queues are tested in test_objects_restate.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import unquote

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User
from django.core.cache import cache
from django.test import Client
from django.urls import resolve, reverse
from django.utils import timezone

from demo.stack import free_port
from invocations import events
from invocations.live.routing import websocket_urlpatterns
from invocations.mirror.models import Invocation, ObjectLock, QueuedInvocation, Service, SyncState
from invocations.reads.presenters.objects import _state_row
from invocations.reads.selectors.objects import StateEntry, busy_keys_page, object_state_read
from invocations.urls import object_key_from_segment, object_key_to_segment
from tests.factories import T0, build_edge, create_invocation, invocation_id
from tests.test_live_updates import run_session

KEYS = ["plain", "", " ", "a/b", "/", "//", "trailing/", ".", "..", "../x", ".hidden", "a b", "é/ü 雪", "~", "~s", "~e",
        "~d", "a~", "%2F", "%", "a?b#c&d=e", "line\nbreak", "tab\there", "+plus+", "'quote\""]  # fmt: skip


@pytest.fixture(autouse=True)
def no_restate(settings: Any) -> Iterator[None]:
    """Restate's state is read over HTTP: point it at a port nobody listens on (never at
    whatever Restate happens to run here); the state cache must not leak between tests."""
    settings.RESTATE_ADMIN_URL = f"http://127.0.0.1:{free_port()}"
    cache.clear()
    yield
    cache.clear()


def keyed(name: str = "Worker", kind: str = "virtual_object") -> None:
    Service.objects.update_or_create(name=name, defaults={"service_type": kind})


def queue(service: str, key: str, *invocations: Invocation, first_seq: int = 0) -> None:
    for n, inv in enumerate(invocations):
        QueuedInvocation.objects.create(
            invocation_id=inv.id, service_name=service, service_key=key, sequence_number=first_seq + n
        )


def hold(service: str, key: str, inv: Invocation) -> None:
    ObjectLock.objects.create(service_name=service, service_key=key, invocation_id=inv.id)


def work(key: str, n: int, *, status: str = "pending", queued_s: float = 0, **fields: Any) -> Invocation:
    """Worker/<key>/work number n; a pending one was queued `queued_s` seconds after T0."""
    at = T0 + timedelta(seconds=queued_s)
    if status == "pending":
        fields.setdefault("inboxed_at", at)
    # The key set apart from the target: the factory would split a key holding "/".
    fields.update(service_key=key, handler_name="work", service_type="virtual_object")
    return create_invocation(
        id=invocation_id("wk", n), target=f"Worker/{key}/work", status=status, created_at=at, ran_ms=None, **fields
    )


def text(response: Any) -> str:
    return response.content.decode()


# ------------------------------------------------------------------ keys in the URL


@pytest.mark.parametrize("key", KEYS)
def test_any_key_survives_the_url(key: str) -> None:
    assert object_key_from_segment(object_key_to_segment(key)) == key
    url = reverse("invocations:object", args=["Worker", key])
    # What the server routes on is the percent-decoded path: one segment for the key.
    path = unquote(url)
    assert path.startswith("/objects/Worker/") and path.endswith("/")
    segment = path[len("/objects/Worker/") : -1]
    assert "/" not in segment and segment not in (".", "..") and segment != ""
    assert resolve(path).kwargs == {"service": "Worker", "key": key}


@pytest.mark.parametrize("key", ["", "a/b", "..", "é/ü 雪", "~s", "a?b#c&d=e"])
def test_the_page_of_an_awkward_key_shows_that_key(client: Client, key: str) -> None:
    keyed()
    holder = work(key, 1, status="running")
    hold("Worker", key, holder)
    response = client.get(reverse("invocations:object", args=["Worker", key]))
    assert response.status_code == 200
    assert response.context["key"] == key and response.context["holder_id"] == holder.id
    assert holder.id in text(response)


def test_a_hand_typed_stray_tilde_stands_for_itself() -> None:
    assert object_key_from_segment("a~b~") == "a~b~"


# ------------------------------------------------------------------ /objects/


def test_objects_lists_busy_keys_by_contention_with_their_holders(client: Client) -> None:
    keyed()
    keyed("Counter")
    # k-long: 3 queued; k-old and k-new: 2 queued each, k-old's head waiting longer; k-held: holder only.
    hold("Worker", "k-long", work("k-long", 1, status="running"))
    queue(
        "Worker",
        "k-long",
        work("k-long", 2, queued_s=50),
        work("k-long", 3, queued_s=51),
        work("k-long", 4, queued_s=52),
    )
    old_holder = work("k-old", 5, status="suspended", running_at=T0 - timedelta(minutes=5))
    hold("Worker", "k-old", old_holder)
    queue("Worker", "k-old", work("k-old", 6, queued_s=10), work("k-old", 7, queued_s=60), first_seq=4)
    queue("Worker", "k-new", work("k-new", 8, queued_s=30), work("k-new", 9, queued_s=31))
    hold("Worker", "k-held", work("k-held", 10, status="running"))
    counter = create_invocation(id=invocation_id("ct", 11), target="Counter/c/add", status="running", ran_ms=None)
    hold("Counter", "c", counter)

    page = busy_keys_page()
    assert [(r.service, r.key, r.queue_length) for r in page.rows] == [
        ("Worker", "k-long", 3),
        ("Worker", "k-old", 2),
        ("Worker", "k-new", 2),
        ("Counter", "c", 0),
        ("Worker", "k-held", 0),
    ]
    assert page.total == 5
    old = page.rows[1]
    assert old.holder_id == old_holder.id and old.holder_handler == "work" and old.holder_status == "suspended"
    assert old.holder_running_at == T0 - timedelta(minutes=5)
    assert old.oldest_queued_at == T0 + timedelta(seconds=10), "the head's queued time (sys_inbox has none)"
    assert page.rows[2].holder_id is None

    body = text(client.get("/objects/"))
    assert body.index("k-long") < body.index("k-old") < body.index("k-new") < body.index("k-held")
    assert old_holder.id in body and "5 keys with a holder or a queue" in body
    assert 'href="/objects/Worker/k-old/"' in body
    assert "nobody: the head of the queue is about to start" in body  # k-new

    filtered = text(client.get("/objects/?service=Counter"))
    assert (
        counter.id in filtered and "k-long" not in filtered and "1 key with a holder or a queue in Counter" in filtered
    )
    assert 'ws-connect="/ws/objects/?service=Counter"' in filtered


def test_objects_pages_past_a_hundred_keys(client: Client) -> None:
    keyed()
    for n in range(105):
        hold("Worker", f"key-{n:03d}", work(f"key-{n:03d}", n, status="running", running_at=T0 + timedelta(seconds=n)))
    first = client.get("/objects/?service=Worker")
    assert len(first.context["rows"]) == 100 and "showing 1\N{EN DASH}100" in text(first)
    assert first.context["rows"][0].key == "key-000", "the longest-held lock first"
    second = client.get("/objects/?service=Worker&page=2")
    assert [r.key for r in second.context["rows"]] == [f"key-{n}" for n in range(100, 105)]
    assert 'ws-connect="/ws/objects/?service=Worker&amp;page=2"' in text(second)
    beyond = client.get("/objects/?service=Worker&page=9")
    assert beyond.status_code == 200 and "No key on this page: there are 105 in all." in text(beyond)


def test_past_the_rank_cap_keys_are_ordered_by_queue_length_alone_and_the_page_says_so(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyed()
    monkeypatch.setattr("invocations.reads.selectors.objects.RANK_CAP", 2)
    hold("Worker", "b-held-long", work("b-held-long", 1, status="running", running_at=T0 - timedelta(hours=1)))
    hold("Worker", "a-held", work("a-held", 2, status="running"))
    queue("Worker", "c-queued", work("c-queued", 3, queued_s=5))
    page = busy_keys_page()
    assert not page.ranked and page.total == 3
    assert [r.key for r in page.rows] == ["c-queued", "a-held", "b-held-long"], "length, then name"
    assert page.rows[0].oldest_queued_at == T0 + timedelta(seconds=5), "the page's rows still say how long"
    assert "Ordered by queue length alone, then by name: past 2 keys" in text(client.get("/objects/"))


def test_objects_htmx_gets_only_the_results(client: Client) -> None:
    keyed()
    body = text(client.get("/objects/?service=Worker", headers={"HX-Request": "true"}))
    assert body.lstrip().startswith('<div id="objects-results"') and "<html" not in body


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("service=Nope", "no service named &#x27;Nope&#x27; in our copy of Restate"),
        ("service=Greeter", "Greeter is a service: only virtual objects and workflows have keys"),
        ("page=0", "page: Ensure this value is greater than or equal to 1."),
        ("page=two", "page: Enter a whole number."),
    ],
)
def test_a_bad_objects_filter_is_a_400_that_says_why(client: Client, query: str, reason: str) -> None:
    Service.objects.create(name="Greeter", service_type="service")
    response = client.get(f"/objects/?{query}")
    assert response.status_code == 400
    assert "Bad filter" in text(response) and reason in text(response)


# ------------------------------------------------------------------ one key


def test_a_key_page_shows_the_holder_then_the_queue_in_sequence_order_and_who_waits(client: Client) -> None:
    keyed()
    holder = work("k", 1, status="running", running_at=T0 - timedelta(minutes=2))
    hold("Worker", "k", holder)
    # Queued: from the ingress; sent one-way by a service; called by B, which A called in turn.
    from_ingress = work("k", 2, queued_s=1)
    sender = create_invocation(id=invocation_id("snd", 3), target="Orchestrator/send_all", status="completed")
    sent = work("k", 4, queued_s=2, parent_id=sender.id, root_id=sender.id, invoked_by="service")
    a = create_invocation(id=invocation_id("ca", 5), target="Orchestrator/long", status="suspended", ran_ms=None)
    b = create_invocation(
        id=invocation_id("cb", 6), target="Orchestrator/wait_worker", status="suspended", ran_ms=None, parent=a
    )
    called = work("k", 7, queued_s=3, parent_id=b.id, root_id=a.id, invoked_by="service")
    for edge in (build_edge(sender, sent, kind="send"), build_edge(a, b), build_edge(b, called)):
        edge.save()
    # Restate's sequence numbers only grow: the queue's order is theirs, not the ids' or times'.
    queue("Worker", "k", called, first_seq=7)
    queue("Worker", "k", from_ingress, first_seq=8)
    queue("Worker", "k", sent, first_seq=9)

    response = client.get("/objects/Worker/k/")
    assert response.status_code == 200
    body = text(response)
    queue_part = body[body.index('<section id="object-queue"') :].split("</section>")[0]
    assert queue_part.index(holder.id) < queue_part.index(called.id) < queue_part.index(from_ingress.id)
    assert queue_part.index(from_ingress.id) < queue_part.index(sent.id)
    assert "took the lock" in queue_part and "Restate's running_at" in queue_part
    assert "3 waiting, in Restate's order" in queue_part
    rows = {e.invocation_id: e for e in response.context["queue"]}
    assert [w.id for w in rows[called.id].waiting] == [b.id, a.id], "nearest caller first, up to the root"
    assert rows[sent.id].waiting == [] and rows[sent.id].reached_by == "send"
    called_row = queue_part[queue_part.index(f'id="queued-{called.id}"') :].split("</tr>")[0]
    assert "Orchestrator/wait_worker" in called_row and "Orchestrator/long" in called_row
    assert f'sent one-way by <a href="/invocations/{sender.id}/">' in queue_part
    assert "no invocation: it came from the ingress" in queue_part
    assert 'ws-connect="/ws/object/?service=Worker&amp;key=k"' in body

    recent = body[body.index('<section id="object-recent"') :].split("</section>")[0]
    assert holder.id in recent and sent.id in recent and a.id not in recent
    assert 'href="/invocations/?service=Worker&amp;key=k"' in recent


def test_an_idle_key_has_a_page_too(client: Client) -> None:
    keyed()
    body = text(client.get("/objects/Worker/nobody-here/"))
    assert "Nobody holds the lock." in body and "Nothing queued on this key." in body
    assert "Our copy holds no invocation of this key." in body


def test_restate_not_answering_is_said_on_the_key_page(client: Client) -> None:
    keyed()
    response = client.get("/objects/Worker/k/")
    assert response.status_code == 200
    state = text(response)[text(response).index('<section id="object-state"') :].split("</section>")[0]
    assert "read from Restate's <code>state</code> table at" in state
    assert "Could not read the state from Restate, so it is not shown" in state
    assert "127.0.0.1" not in state, "Restate's address is for staff only"


def test_read_again_gets_only_the_state(client: Client) -> None:
    keyed()
    body = text(client.get("/objects/Worker/k/?partial=state", headers={"HX-Request": "true"}))
    assert body.lstrip().startswith('<section id="object-state"') and "object-queue" not in body
    # Without JavaScript the link reloads the whole page.
    assert 'id="object-queue"' in text(client.get("/objects/Worker/k/?partial=state"))


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        ("/objects/Nope/k/", 404, "Our copy of Restate has no service named &#x27;Nope&#x27;"),
        ("/objects/Greeter/k/", 404, "Greeter is a service, not a virtual object or workflow: it has no keys."),
        ("/objects/Worker/nul%00key/", 400, "A key cannot contain a NUL character"),
    ],
)
def test_a_bad_key_page_says_why(client: Client, path: str, status: int, reason: str) -> None:
    keyed()
    Service.objects.create(name="Greeter", service_type="service")
    response = client.get(path)
    assert response.status_code == status and reason in text(response)


def test_a_service_the_catalog_has_not_synced_yet_is_known_by_its_invocations(client: Client) -> None:
    work("k", 1, status="running")
    assert client.get("/objects/Worker/k/").status_code == 200


def test_truncated_snapshots_are_said_on_both_pages(client: Client) -> None:
    keyed()
    SyncState.objects.update_or_create(id=1, defaults={"queues_truncated": True, "locks_truncated": True})
    for path in ("/objects/", "/objects/Worker/k/"):
        body = text(client.get(path))
        assert "Incomplete: Restate held more rows than the sync keeps" in body, path
        assert "queues (sys_inbox) and lock holders (sys_keyed_service_status)" in body, path
    SyncState.objects.filter(id=1).update(queues_truncated=False, locks_truncated=False)
    assert "Incomplete: Restate held" not in text(client.get("/objects/"))


def test_vqueues_mode_says_what_it_leaves_uncovered(client: Client) -> None:
    keyed()
    SyncState.objects.update_or_create(id=1, defaults={"queue_tables": "vqueues"})
    for path in ("/objects/", "/objects/Worker/k/", "/deadlocks/"):
        assert "Scoped objects are not covered" in text(client.get(path)), path
    SyncState.objects.filter(id=1).update(queue_tables="classic")
    assert "Scoped objects" not in text(client.get("/objects/"))


# ------------------------------------------------------------------ state values


def test_state_values_are_pretty_printed_when_json_and_said_cut_when_cut() -> None:
    pretty = _state_row(StateEntry(key="cart", text='{"items":[1,2],"name":"é"}', hex=None, length=27))
    assert pretty.kind == "JSON" and pretty.text == '{\n  "items": [\n    1,\n    2\n  ],\n  "name": "é"\n}'
    cut = _state_row(StateEntry(key="big", text='{"a": "' + "x" * 4089, hex=None, length=1_000_000))
    assert cut.kind == "text" and cut.cut, "a cut JSON value is shown as the text it is"
    plain = _state_row(StateEntry(key="name", text="not json", hex=None, length=8))
    assert plain.kind == "text" and not plain.cut
    binary = _state_row(StateEntry(key="raw", text=None, hex="00ff", length=2))
    assert binary.kind == "bytes (hex)" and binary.text == "00ff" and not binary.cut


def test_a_nul_in_the_key_is_refused_before_restate() -> None:
    found = object_state_read(service="Worker", key="a\x00b")
    assert "NUL" in found.error and found.entries == []


# ------------------------------------------------------------------ the detail page


def test_a_queued_invocation_shows_its_place_and_holder_in_its_header_and_tree_row(client: Client) -> None:
    keyed()
    holder = work("k", 1, status="running")
    hold("Worker", "k", holder)
    root = create_invocation(
        id=invocation_id("rt", 2), target="Orchestrator/wait_worker", status="suspended", ran_ms=None
    )
    first = work("k", 3, queued_s=1)
    second = work("k", 4, queued_s=2, parent_id=root.id, root_id=root.id, invoked_by="service")
    build_edge(root, second).save()
    queue("Worker", "k", first, second)

    body = text(client.get(f"/invocations/{second.id}/"))
    header = body[body.index('<section id="inv-header"') : body.index('<div class="payloads">')]
    assert "position 2 of 2 on" in header and f'behind <a href="/invocations/{holder.id}/">' in header
    assert "Worker/k/work, which holds the lock" in header
    assert 'href="/objects/Worker/k/"' in header
    tree = body[body.index('<section id="inv-tree"') :]
    row = tree[tree.index(f'id="node-{second.id}"') :].split("\n")[0]
    assert f"position 2 of 2, behind {holder.id}" in row

    held = text(client.get(f"/invocations/{holder.id}/"))
    assert "holds the lock of" in held and "2 calls queued behind it" in held
    facts = held[held.index('<dl class="facts">') : held.index('<div class="payloads">')]
    assert "position" not in facts


# ------------------------------------------------------------------ live


@pytest.fixture
def user(transactional_db: None) -> User:
    cache.clear()
    return User.objects.create_user("objects-live")


def test_objects_socket_redraws_the_table_when_queues_change(user: User) -> None:
    keyed()
    hold("Worker", "k", work("k", 1, status="running"))

    def a_call_queues() -> None:
        queue("Worker", "k", work("k", 2))
        events.queues_changed(keys=[("Worker", "k")])

    s = run_session("/ws/objects/?service=Worker", user, a_call_queues)
    assert '<section id="objects-table" hx-swap-oob="outerHTML">' in s.first
    assert 'class="queue-length">0<' in s.first
    (update,) = s.updates
    assert 'id="objects-table" hx-swap-oob="outerHTML"' in update and 'class="queue-length">1<' in update


def test_objects_socket_redraws_when_a_holder_it_shows_changes(user: User) -> None:
    keyed()
    holder = work("k", 1, status="running")
    hold("Worker", "k", holder)
    other = create_invocation(id=invocation_id("ot", 2), status="running", ran_ms=None)

    def unrelated() -> None:
        # The sync indicator is always sent: the session sees the step, and nothing else.
        Invocation.objects.filter(id=other.id).update(status="completed")
        events.sync_step_committed(changed_ids=[other.id])

    def suspends() -> None:
        Invocation.objects.filter(id=holder.id).update(status="suspended")
        events.sync_step_committed(changed_ids=[holder.id])

    s = run_session("/ws/objects/", user, unrelated, suspends)
    assert "objects-table" not in s.updates[0], "a change to an invocation not drawn redraws nothing"
    assert 'id="objects-table"' in s.updates[1] and 'class="status">suspended' in s.updates[1]


def test_key_socket_redraws_queue_recent_and_state(user: User) -> None:
    keyed()
    holder = work("a/b", 1, status="running")
    hold("Worker", "a/b", holder)
    queued = work("a/b", 2)
    queue("Worker", "a/b", queued)

    def the_holder_finishes() -> None:
        Invocation.objects.filter(id=holder.id).update(status="completed", completed_at=T0 + timedelta(seconds=5))
        Invocation.objects.filter(id=queued.id).update(status="running", running_at=T0 + timedelta(seconds=5))
        ObjectLock.objects.all().delete()
        QueuedInvocation.objects.all().delete()
        hold("Worker", "a/b", queued)
        events.queues_changed(keys=[("Worker", "a/b")])

    def a_new_invocation_of_the_key() -> None:
        fresh = work("a/b", 3, status="completed", completed_at=T0)
        events.sync_step_committed(changed_ids=[fresh.id])

    s = run_session("/ws/object/?service=Worker&key=a%2Fb", user, the_holder_finishes, a_new_invocation_of_the_key)
    for part in ("object-queue", "object-recent", "object-state"):
        assert f'id="{part}" hx-swap-oob="outerHTML"' in s.first
    assert f'id="queued-{queued.id}"' in s.first
    moved = s.updates[0]
    assert f'id="queued-{queued.id}"' not in moved and "Nothing queued on this key." in moved
    holder_line = moved[moved.index('<p class="object-holder') :].split("</p>")[0]
    assert queued.id in holder_line and 'class="status">running' in holder_line
    assert invocation_id("wk", 3) in s.updates[1], "a new invocation of the key shows among the recent ones"


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/ws/object/?service=Worker", 4400),
        ("/ws/object/?service=Nope&key=k", 4404),
        ("/ws/objects/?service=Nope", 4400),
        ("/ws/objects/?page=0", 4400),
    ],
)
def test_object_sockets_refuse_bad_input(user: User, path: str, code: int) -> None:
    keyed()
    assert run_session(path, user).closed == code


def test_object_sockets_refuse_anonymous(transactional_db: None) -> None:
    assert run_session("/ws/objects/", AnonymousUser()).closed == 4401
    assert run_session("/ws/object/?service=Worker&key=k", AnonymousUser()).closed == 4401


def test_readers_of_one_queue_change_share_one_render_of_objects(user: User, monkeypatch: pytest.MonkeyPatch) -> None:
    from invocations.live import fragments

    keyed()
    hold("Worker", "k", work("k", 1, status="running"))
    renders: list[str] = []
    real = fragments.objects_context

    def counting(**kwargs: Any) -> dict[str, Any]:
        renders.append(kwargs["service"])
        return real(**kwargs)

    monkeypatch.setattr(fragments, "objects_context", counting)

    async def two_readers() -> list[str]:
        readers = [WebsocketCommunicator(URLRouter(websocket_urlpatterns), "/ws/objects/") for _ in range(2)]
        for reader in readers:
            reader.scope["user"] = user
            assert (await reader.connect(timeout=5))[0]
            await reader.receive_from(timeout=5)
        await database_sync_to_async(lambda: events.queues_changed(keys=[("Worker", "k")]))()
        got = [await reader.receive_from(timeout=10) for reader in readers]
        for reader in readers:
            await reader.disconnect()
        return got

    first, second = async_to_sync(two_readers)()
    assert first == second and 'id="objects-table"' in first
    assert len(renders) == 3, "one render per connect, then one for both readers of the change"


def test_a_state_read_is_shared_only_by_redraws_of_changes_announced_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    from invocations.reads.presenters import objects as presenter
    from invocations.reads.selectors.objects import StateRead

    reads: list[float] = []

    def counting(*, service: str, key: str) -> StateRead:
        reads.append(time.time())
        return StateRead(read_at=timezone.now())

    monkeypatch.setattr(presenter.selectors, "object_state_read", counting)
    announced = time.time()
    first = presenter.object_state(service="Worker", key="k", fresh_after=announced)
    assert presenter.object_state(service="Worker", key="k", fresh_after=announced) == first and len(reads) == 1
    # A change announced after that read (the state may have changed with it) needs a new read.
    presenter.object_state(service="Worker", key="k", fresh_after=time.time() + 0.001)
    assert len(reads) == 2
    presenter.object_state(service="Worker", key="k")  # a page load or "read again": now
    assert len(reads) == 3
