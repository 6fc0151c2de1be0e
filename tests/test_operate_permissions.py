"""Who may do what: every action URL (the confirmation GET and the POST) for each role
(anonymous, viewer, operator), the websockets, the controls each role is drawn, and
input validation. No Restate here: the POSTs that are refused must never reach it,
and the one that is allowed is sent to a stand-in that records the call."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User
from django.test import Client

from invocations.live.routing import websocket_urlpatterns
from invocations.mirror.actions import Action, actions_allowed
from invocations.operations.roles import Role, user_create
from invocations.records.models import AuditEntry
from invocations.restate import Outcome, RestateError
from invocations.restate.client import OperationResult
from tests.factories import build_edge, create_invocation, invocation_id

pytestmark = pytest.mark.django_db

# The status in which each action is allowed (so the operator's GET is a 200).
STATUS_FOR = {
    Action.CANCEL: "running",
    Action.KILL: "running",
    Action.PAUSE: "running",
    Action.RESUME: "paused",
    Action.RETRY_NOW: "backing-off",
    Action.RESTART_AS_NEW: "completed",
    Action.PURGE: "completed",
    Action.PURGE_JOURNAL: "completed",
}


class ExplodingClient:
    """A Restate client that fails the test if anything calls it."""

    def __getattr__(self, name: str) -> Any:
        pytest.fail(f"Restate was called ({name}) for a request that must be refused first")


class RecordingClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def operate(self, operation: str, invocation_id: str) -> OperationResult:
        self.calls.append((operation, invocation_id))
        return OperationResult(operation, invocation_id, Outcome.DONE, 202, "accepted", {})

    def close(self) -> None:
        pass


@pytest.fixture
def restate_client(monkeypatch: pytest.MonkeyPatch) -> RecordingClient:
    """Stands in for client_from_settings in the service (a real Restate is in test_operate_actions)."""
    recording = RecordingClient()
    monkeypatch.setattr("invocations.operations.services.client_from_settings", lambda: recording)
    return recording


def _client(role: Role | None) -> Client:
    c = Client()
    if role is not None:
        c.force_login(user_create(username=f"u-{role}", password="pw-for-tests-only", role=role))
    return c


def _url(inv_id: str, action: Action | str) -> str:
    name = action.value if isinstance(action, Action) else action
    return f"/invocations/{inv_id}/actions/{name}/"


@pytest.mark.parametrize("action", list(Action))
@pytest.mark.parametrize("role", [None, Role.VIEWER, Role.OPERATOR])
def test_the_permission_matrix(
    action: Action, role: Role | None, monkeypatch: pytest.MonkeyPatch, restate_client: RecordingClient
) -> None:
    inv = create_invocation(status=STATUS_FOR[action])
    c = _client(role)
    get = c.get(_url(inv.id, action))
    if role is not Role.OPERATOR:
        # Nothing may reach Restate for anyone but an operator.
        monkeypatch.setattr("invocations.operations.services.client_from_settings", ExplodingClient)
    post = c.post(_url(inv.id, action), {"request_key": f"k-{action}-{role}"})
    if role is None:
        assert get.status_code == post.status_code == 302
        assert get["Location"].startswith("/login/")
        assert post["Location"].startswith("/login/")
        assert not AuditEntry.objects.exists()
    elif role is Role.VIEWER:
        assert get.status_code == post.status_code == 403
        assert "Operators only" in post.content.decode()
        assert not AuditEntry.objects.exists()
        assert restate_client.calls == []
    else:
        assert get.status_code == 200, get.content.decode()[:500]
        assert post.status_code == 200, post.content.decode()[:500]
        assert restate_client.calls == [(action.operation, inv.id)]
        assert AuditEntry.objects.count() == 1
    # The menu of a tree row follows the same rule.
    menu = c.get(f"/invocations/{inv.id}/actions/")
    assert menu.status_code == {None: 302, Role.VIEWER: 403, Role.OPERATOR: 200}[role]


def test_a_get_never_acts_and_the_confirmation_carries_a_one_time_key(restate_client: RecordingClient) -> None:
    inv = create_invocation(status="running")
    c = _client(Role.OPERATOR)
    first = c.get(_url(inv.id, Action.CANCEL)).content.decode()
    second = c.get(_url(inv.id, Action.CANCEL)).content.decode()
    assert restate_client.calls == [] and not AuditEntry.objects.exists()
    assert 'name="csrfmiddlewaretoken"' in first
    keys = [page.split('name="request_key" value="')[1].split('"')[0] for page in (first, second)]
    assert len(keys[0]) >= 16 and keys[0] != keys[1]


def test_a_double_submit_is_one_call_to_restate(restate_client: RecordingClient) -> None:
    inv = create_invocation(status="running")
    c = _client(Role.OPERATOR)
    answers = [c.post(_url(inv.id, Action.KILL), {"request_key": "same-key"}).content.decode() for _ in range(2)]
    assert restate_client.calls == [("kill", inv.id)]
    assert AuditEntry.objects.count() == 1
    assert "accepted" in answers[0] and "already submitted" in answers[1]


def test_the_post_needs_the_csrf_token_and_the_form_key(restate_client: RecordingClient) -> None:
    inv = create_invocation(status="running")
    user = user_create(username="strict", password="pw-for-tests-only", role=Role.OPERATOR)
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    assert strict.post(_url(inv.id, Action.CANCEL), {"request_key": "k1"}).status_code == 403
    lax = _client(Role.OPERATOR)
    missing = lax.post(_url(inv.id, Action.CANCEL))
    assert missing.status_code == 400 and "one-time key" in missing.content.decode()
    assert restate_client.calls == []


@pytest.mark.parametrize(
    ("url", "status", "words"),
    [
        ("/invocations/{id}/actions/explode/", 404, "is not an action"),
        ("/invocations/not-an-id/actions/cancel/", 400, "Not an invocation id"),
        ("/invocations/inv_1%27%3B%20drop/actions/cancel/", 400, "Not an invocation id"),
    ],
)
def test_bad_action_names_and_ids_are_clear_errors(
    url: str, status: int, words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("invocations.operations.services.client_from_settings", ExplodingClient)
    inv = create_invocation(status="running")
    c = _client(Role.OPERATOR)
    target = url.format(id=inv.id)
    for response in (c.get(target), c.post(target, {"request_key": "k"})):
        assert response.status_code == status, (target, response.status_code)
        assert words in response.content.decode()
    assert not AuditEntry.objects.exists()


def test_an_id_we_do_not_hold_has_no_confirmation_but_restate_decides_a_post(
    restate_client: RecordingClient,
) -> None:
    # Our copy may lag behind Restate: the POST still asks Restate, which knows.
    missing = invocation_id("gone")
    c = _client(Role.OPERATOR)
    assert c.get(_url(missing, Action.CANCEL)).status_code == 404
    assert c.post(_url(missing, Action.CANCEL), {"request_key": "k"}).status_code == 200
    assert restate_client.calls == [("cancel", missing)]


def test_an_action_not_allowed_in_this_status_is_a_409_without_a_button() -> None:
    inv = create_invocation(status="completed")
    c = _client(Role.OPERATOR)
    response = c.get(_url(inv.id, Action.CANCEL))
    assert response.status_code == 409
    page = response.content.decode()
    assert "Not allowed in this state" in page and 'name="request_key"' not in page
    dialog = c.get(_url(inv.id, Action.CANCEL), headers={"HX-Request": "true"})
    assert dialog.status_code == 200 and "Not allowed in this state" in dialog.content.decode()


def test_the_cancel_confirmation_lists_what_it_reaches() -> None:
    root = create_invocation(target="Trip/book", status="running")
    nap = create_invocation(target="Sleeper/nap", status="suspended", parent=root)
    done = create_invocation(target="Inventory/seat/reserve", status="completed", parent=root)
    sent = create_invocation(target="Greeter/greet", status="scheduled", parent=root)
    for callee, kind in ((nap, "call"), (done, "call"), (sent, "delayed_send")):
        build_edge(root, callee, kind=kind).save()
    c = _client(Role.OPERATOR)
    cancel = c.get(_url(root.id, Action.CANCEL)).content.decode()
    assert nap.id in cancel and "Sleeper/nap" in cancel
    assert done.id not in cancel and sent.id not in cancel  # completed: not reached; a send: detached
    assert "Compensations run" in cancel and "1 one-way or delayed send from it is left alone" in cancel
    assert "restate invocations cancel --yes " + root.id in cancel
    assert f"/invocations/{root.id}/cancel" in cancel  # the curl line
    kill = c.get(_url(root.id, Action.KILL)).content.decode()
    assert "No compensation runs" in kill and nap.id in kill and "left alone" in kill


def test_the_reach_is_bounded() -> None:
    root = create_invocation(target="Orchestrator/long", status="running")
    for _ in range(55):
        child = create_invocation(target="Sleeper/nap", status="running", parent=root)
        build_edge(root, child).save()
    page = _client(Role.OPERATOR).get(_url(root.id, Action.CANCEL)).content.decode()
    assert "It reaches 55 more invocations" in page and "and 5 more" in page
    assert page.count('class="status">running</span></li>') == 50


def test_htmx_gets_the_dialog_alone_and_without_js_a_page() -> None:
    inv = create_invocation(status="completed")
    c = _client(Role.OPERATOR)
    dialog = c.get(_url(inv.id, Action.PURGE), headers={"HX-Request": "true"}).content.decode()
    page = c.get(_url(inv.id, Action.PURGE)).content.decode()
    assert dialog.startswith("<dialog") and "<html" not in dialog
    assert "<html" in page and "Back to the invocation" in page
    assert "can no longer be fetched" in dialog


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR])
def test_controls_are_drawn_for_operators_only(role: Role) -> None:
    root = create_invocation(status="running")
    child = create_invocation(status="completed", parent=root)
    build_edge(root, child).save()
    c = _client(role)
    pages = [
        c.get("/invocations/").content.decode(),
        c.get(f"/invocations/{root.id}/").content.decode(),
        c.get(f"/invocations/{root.id}/live/").content.decode(),
        c.get(f"/invocations/{root.id}/children/?offset=0").content.decode(),
    ]
    for page in pages:
        assert ("/actions/" in page) is (role is Role.OPERATOR), page[:300]
    if role is Role.OPERATOR:
        detail = pages[1]
        for action in actions_allowed(status="running", service_type="service"):
            assert _url(root.id, action) in detail
        assert _url(root.id, Action.PURGE) not in detail  # not for a running one
        assert _url(child.id, Action.PURGE) in pages[0]  # the list row of the completed child
        assert f"/invocations/{child.id}/actions/" in detail  # its tree row's menu


def _ws(path: str, user: Any) -> tuple[bool, Any]:
    async def connect() -> tuple[bool, Any]:
        communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path)
        communicator.scope["user"] = user
        connected, code = await communicator.connect()
        await communicator.disconnect()
        return connected, code

    return async_to_sync(connect)()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("role", [None, Role.VIEWER, Role.OPERATOR])
def test_websockets_need_a_login_and_take_any_role(role: Role | None) -> None:
    inv = create_invocation(status="running")
    user: Any = AnonymousUser()
    if role is not None:
        user = user_create(username=f"ws-{role}", password="pw-for-tests-only", role=role)
        user = User.objects.get(pk=user.pk)
    for path in ("/ws/invocations/", f"/ws/invocations/{inv.id}/"):
        connected, code = _ws(path, user)
        assert connected is (role is not None), (path, role, code)
        if role is None:
            assert code == 4401


def test_restate_not_answering_is_said_in_words(monkeypatch: pytest.MonkeyPatch) -> None:
    class Down(RecordingClient):
        def operate(self, operation: str, invocation_id: str) -> OperationResult:
            raise RestateError("connection refused")

    monkeypatch.setattr("invocations.operations.services.client_from_settings", Down)
    inv = create_invocation(status="running")
    page = _client(Role.OPERATOR).post(_url(inv.id, Action.CANCEL), {"request_key": "k"}).content.decode()
    assert "Restate did not answer" in page
