"""Sockets end with the session: a logout closes every socket that session opened.

A consumer built on `CloseAtLogoutMixin` joins its session's group as it connects;
the `user_logged_out` handler below tells that group the session ended, and each
consumer closes with 4401, the code it uses for "not logged in" at connect. Without
this, a page left open keeps receiving updates after its user logged out elsewhere in
the same browser, until the socket happens to reconnect."""

from __future__ import annotations

import logging
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer
from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver
from django.http import HttpRequest

from invocations import events

log = logging.getLogger(__name__)

CLOSE_LOGGED_OUT = 4401


class CloseAtLogoutMixin(AsyncWebsocketConsumer):
    """A consumer base: a signed-in socket joins its session's group before `connect`
    runs (Channels then leaves `self.groups` at disconnect by itself), and closes when
    that session logs out."""

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        user = self.scope.get("user")
        key = getattr(self.scope.get("session"), "session_key", None)
        if key and user is not None and user.is_authenticated:
            joined: list[str] = list(getattr(self, "groups", None) or [])
            self.groups = [*joined, events.session_group(key)]
        await super().websocket_connect(message)

    async def session_ended(self, event: dict[str, Any]) -> None:
        await self.close(code=CLOSE_LOGGED_OUT)


@receiver(user_logged_out, dispatch_uid="invocations.live.auth.close_sockets_at_logout")
def close_sockets_at_logout(sender: Any, request: HttpRequest | None, **kwargs: Any) -> None:
    # Sent before the session is flushed, so its key still names the group.
    key = getattr(getattr(request, "session", None), "session_key", None)
    if key:
        events.session_ended(key)
