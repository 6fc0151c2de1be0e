"""Security basics every deployment needs: login throttling, logging out (sockets
included), session lifetime, HTTPS settings clean under `check --deploy`, the
Content-Security-Policy, methods, the websocket origin check, and no Restate
address in banners for non-staff."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client, override_settings
from django.urls import path
from django.utils import timezone

from dashboard.websocket import origin_allowed
from invocations.live.auth import CLOSE_LOGGED_OUT, CloseAtLogoutMixin
from invocations.models import SyncState
from invocations.reads.presenters.errors import redact_addresses
from tests.factories import create_invocation

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "a-long-test-password"


@pytest.fixture
def user(db: None) -> User:
    return User.objects.create_user("op", password=PASSWORD)


def login(client: Client, username: str, password: str) -> Any:
    return client.post("/login/", {"username": username, "password": password, "next": "/invocations/"})


# ------------------------------------------------- login throttling


def test_repeated_failures_lock_the_login_with_a_clear_message(user: User) -> None:
    client = Client()
    limit = settings.AXES_FAILURE_LIMIT
    for _ in range(limit - 1):
        response = login(client, "op", "wrong")
        assert response.status_code == 200 and "did not match" in response.content.decode()
    locked = login(client, "op", "wrong")
    assert locked.status_code == 429
    body = locked.content.decode()
    assert "Too many failed logins" in body and "15 minutes" in body and 'name="username"' in body
    # Locked means locked: the right password does not get in either, and says why.
    again = login(client, "op", PASSWORD)
    assert again.status_code == 429 and "Too many failed logins" in again.content.decode()
    assert client.get("/invocations/").status_code == 302
    # Only that username from that address: someone else can still log in.
    User.objects.create_user("other", password=PASSWORD)
    assert login(Client(), "other", PASSWORD).status_code == 302


def test_a_success_resets_the_count(user: User) -> None:
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        login(client, "op", "wrong")
    assert login(client, "op", PASSWORD).status_code == 302
    client.post("/logout/")
    assert login(client, "op", "wrong").status_code == 200  # counting from zero again


# ------------------------------------------------- logging out


def test_logout_is_a_post_form_in_the_header(user: User) -> None:
    client = Client()
    client.force_login(user)
    body = client.get("/invocations/").content.decode()
    form = re.search(r'<form class="logout" method="post" action="/logout/">.*?</form>', body, re.S)
    assert form and "csrfmiddlewaretoken" in form.group(0)
    assert client.get("/logout/").status_code == 405  # a link or an <img> cannot log anyone out
    response = client.post("/logout/")
    assert response.status_code == 302 and response["Location"] == "/login/"
    assert client.get("/invocations/").status_code == 302


class _Socket(CloseAtLogoutMixin):
    """A page socket as the live consumers are built: refuse the anonymous, accept the rest."""

    async def connect(self) -> None:
        if not self.scope["user"].is_authenticated:
            await self.close(code=4401)
            return
        await self.accept()


@pytest.mark.django_db(transaction=True)
def test_logging_out_closes_that_sessions_sockets() -> None:
    user = User.objects.create_user("op", password=PASSWORD)
    client = Client()
    client.force_login(user)
    other = Client()
    other.force_login(user)  # the same user in another browser: stays connected
    app = AuthMiddlewareStack(URLRouter([path("ws/test/", _Socket.as_asgi())]))

    def cookie(c: Client) -> bytes:
        return f"sessionid={c.cookies['sessionid'].value}".encode()

    async def scenario() -> tuple[Any, Any]:
        mine = WebsocketCommunicator(app, "/ws/test/", headers=[(b"cookie", cookie(client))])
        theirs = WebsocketCommunicator(app, "/ws/test/", headers=[(b"cookie", cookie(other))])
        assert (await mine.connect())[0] and (await theirs.connect())[0]
        response = await sync_to_async(client.post)("/logout/")
        assert response.status_code == 302
        closed = await mine.receive_output(timeout=3)
        still_open = await theirs.receive_nothing(timeout=0.3)
        await theirs.disconnect()
        return closed, still_open

    closed, still_open = asyncio.run(scenario())
    assert closed == {"type": "websocket.close", "code": CLOSE_LOGGED_OUT}
    assert still_open


# ------------------------------------------------- session and HTTPS settings


def _settings_env(**env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HTTPS", "SECURE_", "SESSION_", "CSRF_"))}
    # A database URL that is never connected to: the checks below do not query.
    base.update(DATABASE_URL="postgres://nobody@127.0.0.1:9/none", DJANGO_SETTINGS_MODULE="dashboard.settings")
    base.update(env)
    return base


def _settings_value(expr: str, **env: str) -> str:
    code = f"from dashboard import settings as s; print({expr})"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_settings_env(**env), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_session_lifetime_fits_a_working_day() -> None:
    assert settings.SESSION_COOKIE_AGE == 12 * 3600
    assert _settings_value("s.SESSION_COOKIE_AGE, s.SESSION_EXPIRE_AT_BROWSER_CLOSE") == "43200 False"
    assert (
        _settings_value(
            "s.SESSION_COOKIE_AGE, s.SESSION_EXPIRE_AT_BROWSER_CLOSE",
            SESSION_HOURS="2",
            SESSION_EXPIRE_AT_BROWSER_CLOSE="true",
        )
        == "7200 True"
    )


def _deploy_check(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=_settings_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_deploy_checks_are_clean_behind_https() -> None:
    env = {
        "SECRET_KEY": "k" * 10 + "-Zr8!p2Qw#x7Lm4Tn9Vb1Hc6Yd3Fg5Js0Ka-long-enough-and-varied-secret",
        "ALLOWED_HOSTS": "dashboard.example.com",
        "CSRF_TRUSTED_ORIGINS": "https://dashboard.example.com",
        "HTTPS": "true",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
        "SECURE_HSTS_PRELOAD": "true",
    }
    done = _deploy_check(**env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout
    # The switch is what makes it clean.
    without = _deploy_check(**{**env, "HTTPS": "false"})
    assert without.returncode != 0 and "security.W012" in without.stdout + without.stderr
    values = _settings_value(
        "s.SECURE_PROXY_SSL_HEADER, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS",
        HTTPS="true",
    )
    assert values == "('HTTP_X_FORWARDED_PROTO', 'https') True True True 31536000"


def test_a_bad_trusted_origin_stops_startup() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import dashboard.settings"],
        cwd=ROOT,
        env=_settings_env(CSRF_TRUSTED_ORIGINS="dashboard.example.com"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "CSRF_TRUSTED_ORIGINS" in done.stderr


# ------------------------------------------------- Content-Security-Policy, methods


def test_every_page_carries_a_csp_and_no_inline_script(user: User) -> None:
    root = "inv_1secAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    now = timezone.now()
    create_invocation(id=root, status="running", created_at=now)
    anonymous = Client()
    client = Client()
    client.force_login(user)
    pages = [
        anonymous.get("/login/"),
        client.get("/invocations/"),
        client.get(f"/invocations/{root}/"),
        client.get(f"/invocations/{root}/children/"),
        client.get("/services/"),
        client.get("/invocations/", {"status": "nonsense"}),  # the error page
    ]
    for response in pages:
        policy = response["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["script-src"] == "'self'" and directives["default-src"] == "'self'"
        assert directives["style-src-elem"] == "'self'" and directives["frame-ancestors"] == "'none'"
        body = response.content.decode()
        assert not re.search(r"<script(?![^>]*\ssrc=)", body), "inline <script>"
        assert not re.search(r"\son[a-z]+=", body), "inline event handler"
        assert "<style" not in body
        # htmx would inject its indicator <style>; the page tells it not to.
        assert '<meta name="htmx-config" content=\'{"includeIndicatorStyles": false}\'>' in body


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("post", "/invocations/"),
        ("put", "/invocations/"),
        ("post", "/invocations/inv_1secAAAAAAAAAAAAAAAAAAAAAAAAAAA/"),
        ("delete", "/invocations/inv_1secAAAAAAAAAAAAAAAAAAAAAAAAAAA/children/"),
        ("post", "/services/"),
        ("post", "/"),
        ("post", "/favicon.ico"),
        ("get", "/logout/"),
    ],
)
def test_views_answer_only_their_methods(user: User, method: str, url: str) -> None:
    client = Client()
    client.force_login(user)
    assert getattr(client, method)(url).status_code == 405


# ------------------------------------------------- websocket origin


def scope(origin: str | None, host: str, *, scheme: str = "ws", **headers: str) -> dict[str, Any]:
    raw = [(b"host", host.encode())] + ([(b"origin", origin.encode())] if origin else [])
    raw += [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return {"type": "websocket", "scheme": scheme, "headers": raw}


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        ("http://localhost:8000", "localhost:8000", True),
        ("http://localhost:3000", "localhost:8000", False),  # another app on the same host
        ("http://localhost", "localhost", True),
        ("http://localhost:80", "localhost", True),
        ("http://localhost:8080", "localhost", False),
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
        ("http://[::1]:8000", "[::1]:8000", True),
        ("http://[::1]:8001", "[::1]:8000", False),
        ("http://evil.example:8000", "localhost:8000", False),
        ("http://localhost:8000", "evil.example:8000", False),  # Host not in ALLOWED_HOSTS
        (None, "localhost:8000", False),
        ("null", "localhost:8000", False),
        ("http://localhost:99999", "localhost:8000", False),
    ],
)
def test_origin_must_match_host_and_port(origin: str | None, host: str, allowed: bool) -> None:
    assert origin_allowed(scope(origin, host)) is allowed


def test_origin_behind_a_tls_proxy() -> None:
    # https on 443 outside; the proxy forwards the socket as ws with Host and X-Forwarded-Proto.
    behind = scope("https://localhost", "localhost", x_forwarded_proto="https")
    assert not origin_allowed(behind)  # without trusting the header, the socket looks like ws on 80
    with override_settings(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https")):
        assert origin_allowed(behind)
        assert not origin_allowed(scope("http://localhost", "localhost", x_forwarded_proto="https"))
    # A proxy that rewrites Host: the public origin is configured.
    rewritten = scope("https://dashboard.example.com", "10.0.0.7:8000")
    assert not origin_allowed(rewritten)
    with override_settings(CSRF_TRUSTED_ORIGINS=["https://dashboard.example.com"]):
        assert origin_allowed(rewritten)
        assert not origin_allowed(scope("https://dashboard.example.com:8443", "10.0.0.7:8000"))


def test_the_application_refuses_another_origin() -> None:
    from dashboard.asgi import application

    async def connect(origin: bytes) -> tuple[bool, Any]:
        communicator = WebsocketCommunicator(
            application, "/ws/nothing/", headers=[(b"origin", origin), (b"host", b"localhost:8000")]
        )
        try:
            return await communicator.connect()
        finally:
            await communicator.disconnect()

    # Past the origin check an unknown path answers 4404; refused before it, the handshake is denied.
    assert asyncio.run(connect(b"http://localhost:8000")) == (False, 4404)
    assert asyncio.run(connect(b"http://localhost:3000")) == (False, 1000)


# ------------------------------------------------- the Restate address in banners


def test_restate_address_is_redacted() -> None:
    text = "cannot reach Restate at http://10.1.2.3:9070/query: [Errno 111] Connection refused (restate-admin:9070, [fd00::5]:9070)"
    assert redact_addresses(text) == (
        "cannot reach Restate at [address hidden]: [Errno 111] Connection refused ([address hidden], [address hidden])"
    )
    for untouched in ("Restate's query service is unavailable: 503", "[409] cancelled at 12:30:01"):
        assert redact_addresses(untouched) == untouched


def test_the_sync_banner_shows_the_admin_address_to_staff_only(user: User) -> None:
    SyncState.objects.update_or_create(
        id=1,
        defaults={
            "last_error": "cannot reach Restate at http://10.1.2.3:9070: [Errno 111] Connection refused",
            "last_error_at": timezone.now(),
            "consecutive_failures": 3,
        },
    )
    client = Client()
    client.force_login(user)
    body = client.get("/invocations/").content.decode()
    assert "Sync failing" in body and "10.1.2.3" not in body and "[address hidden]" in body
    staff = User.objects.create_user("admin", password=PASSWORD, is_staff=True)
    client.force_login(staff)
    assert "http://10.1.2.3:9070" in client.get("/invocations/").content.decode()
