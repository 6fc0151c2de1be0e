"""Serve the Python demo services: `python -m demo.serve PORT`.

Hypercorn speaks HTTP/2 cleartext (prior knowledge), which Restate uses to
stream invocations to the service. The limits are raised as the restate-sdk
docs advise: one connection from Restate carries every concurrent invocation,
and hypercorn's defaults (100 streams, short keep-alive) would throttle it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

from demo.services import app

UNLIMITED = 2**31 - 1


async def with_lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The restate ASGI app rejects lifespan events, and hypercorn then hangs on
    shutdown waiting for a lifespan that never completes: answer them here."""
    if scope["type"] != "lifespan":
        await app(scope, receive, send)
        return
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _prime_sdk_signal_handler() -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        return None

    # The SDK answers lifespan with an error after installing its handler.
    with contextlib.suppress(Exception):
        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)


def main(port: int) -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.h2_max_concurrent_streams = UNLIMITED
    config.keep_alive_max_requests = UNLIMITED
    config.keep_alive_timeout = UNLIMITED
    config.accesslog = None
    # Restate keeps invocation streams open; do not wait long for them on shutdown.
    config.graceful_timeout = 1.0

    stop = asyncio.Event()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        # The SDK installs its own SIGTERM handler (to end its streams) on the
        # first ASGI call, replacing any handler of ours. Make that first call
        # now, then install ours on top and chain to the SDK's.
        await _prime_sdk_signal_handler()
        sdk_handle = getattr(loop, "_signal_handlers", {}).get(signal.SIGTERM)

        def on_signal() -> None:
            if sdk_handle is not None:
                sdk_handle._run()
            stop.set()
            # Hypercorn waits for open connections to close, and Restate holds
            # one open for as long as any invocation streams: do not wait for
            # that. Restate retries whatever was in flight on the next start.
            loop.call_later(config.graceful_timeout + 1.0, os._exit, 0)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        await serve(with_lifespan, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    asyncio.run(run())


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 9080)
