"""Websocket plumbing of the project: what an unknown socket path gets (a clean close, not a 500)."""

from __future__ import annotations

from channels.generic.websocket import AsyncWebsocketConsumer

# Close codes of our own (4000-4999 are the application's): "no such socket", like HTTP 404.
CLOSE_UNKNOWN_PATH = 4404


class UnknownPathConsumer(AsyncWebsocketConsumer):
    """The last websocket route: a path nothing else serves is refused cleanly
    (URLRouter alone raises, which Daphne turns into a logged 500)."""

    async def connect(self) -> None:
        await self.close(code=CLOSE_UNKNOWN_PATH)
