"""Websocket plumbing of the project: which pages may open a socket (same origin,
port included) and what an unknown socket path gets (a clean close, not a 500)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.generic.websocket import AsyncWebsocketConsumer
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
# Close codes of our own (4000-4999 are the application's): "no such socket", like HTTP 404.
CLOSE_UNKNOWN_PATH = 4404


def _origin(scheme: str, host: str, port: int | None) -> tuple[str, int] | None:
    if not host or scheme not in DEFAULT_PORTS:
        return None
    return host.lower(), port or DEFAULT_PORTS[scheme]


def _parse_origin(raw: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(raw)
        return _origin(parts.scheme, parts.hostname or "", parts.port)
    except ValueError:  # a malformed port
        return None


def socket_is_secure(scope: dict[str, Any], headers: dict[bytes, bytes]) -> bool:
    """wss, directly or (as Django decides for HTTP) by the proxy's SECURE_PROXY_SSL_HEADER."""
    if scope.get("scheme") in ("wss", "https"):
        return True
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if not proxy_header:
        return False
    meta_name, expected = proxy_header
    name = meta_name.removeprefix("HTTP_").lower().replace("_", "-").encode()
    return headers.get(name, b"").decode("latin1").split(",")[0].strip() == expected


def origin_allowed(scope: dict[str, Any]) -> bool:
    """Whether a page at `Origin` may open this socket: the origin is this very server
    (host and port as the browser addressed it, Host checked against ALLOWED_HOSTS) or
    one of CSRF_TRUSTED_ORIGINS (a proxy that rewrites Host). Channels' own
    AllowedHostsOriginValidator compares host names only, so any port on an allowed
    host (another app on localhost:3000) could subscribe with the user's cookies."""
    headers = dict(scope.get("headers", []))
    origin = _parse_origin(headers.get(b"origin", b"").decode("latin1"))
    if origin is None:
        return False
    if origin in {_parse_origin(o) for o in settings.CSRF_TRUSTED_ORIGINS}:
        return True
    domain, port = split_domain_port(headers.get(b"host", b"").decode("latin1"))
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return False
    # Without a port in Host, the browser used the default one of the socket's scheme.
    default = DEFAULT_PORTS["wss" if socket_is_secure(scope, headers) else "ws"]
    try:
        server = (domain.strip("[]"), int(port) if port else default)
    except ValueError:
        return False
    return origin == server


class SameOriginValidator:
    """ASGI middleware: refuse (HTTP 403 at the handshake) sockets opened from another origin."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.app(scope, receive, send)


class UnknownPathConsumer(AsyncWebsocketConsumer):
    """The last websocket route: a path nothing else serves is refused cleanly
    (URLRouter alone raises, which Daphne turns into a logged 500)."""

    async def connect(self) -> None:
        await self.close(code=CLOSE_UNKNOWN_PATH)
