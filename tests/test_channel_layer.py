"""The Redis channel layer as the settings configure it for REDIS_URL: a socket that hears
nothing for a while must keep listening. With redis-py 8's default 5 s read timeout, equal
to channels_redis's 5 s blocking pop, every quiet consumer died after 5 s and its page
reconnected (seen as a crashed ObjectConsumer in Daphne's log while a holder ran 8 s)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.test_browser import redis_url  # noqa: F401  (fixture used by name)

ROOT = Path(__file__).resolve().parent.parent

# Waits 7 s on a channel nobody sends to, then sends itself one message and receives it.
SCRIPT = """
import asyncio, django
django.setup()
from channels.layers import get_channel_layer

async def main():
    layer = get_channel_layer()
    channel = await layer.new_channel()
    try:
        await asyncio.wait_for(layer.receive(channel), 7)
    except asyncio.TimeoutError:
        pass  # our own patience ran out: the layer itself did not fail
    await layer.send(channel, {"type": "still.here"})
    print((await layer.receive(channel))["type"])

asyncio.run(main())
"""


def test_a_quiet_socket_outlives_the_redis_read_timeout(redis_url: str) -> None:  # noqa: F811
    env = {**os.environ, "REDIS_URL": redis_url, "DJANGO_SETTINGS_MODULE": "dashboard.settings"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stdout.decode().strip() == "still.here"
