"""A small HTTP proxy in front of Restate's admin API that counts what goes through
(PATCH operations per path, /query calls), for the bulk tests and benchmark: the
requests a bulk job or the `restate` CLI really made, not what they say they made.
It can also slow PATCHes down, so a test can kill a worker in the middle of a batch."""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

_HOP_BY_HOP = {"transfer-encoding", "content-length", "connection", "content-encoding", "keep-alive"}


class _Server(ThreadingHTTPServer):
    # The default listen backlog (5) resets connections when a bulk job opens 64 at once.
    request_queue_size = 256


class CountingProxy:
    def __init__(self, upstream: str, *, patch_delay_s: float = 0.0) -> None:
        self.patches: Counter[str] = Counter()
        self.queries = 0
        self.others = 0
        self.other_paths: Counter[str] = Counter()
        lock = threading.Lock()
        proxy = self
        # One httpx client per handler thread: a pool shared by many threads failed under
        # load here ("[Errno 9] Bad file descriptor").
        local = threading.local()
        clients: list[httpx.Client] = []

        def client() -> httpx.Client:
            http = getattr(local, "http", None)
            if http is None:
                http = local.http = httpx.Client(timeout=60)
                with lock:
                    clients.append(http)
            return http

        upstream = upstream.rstrip("/")

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connections as with Restate

            def _forward(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                with lock:
                    if self.command == "PATCH":
                        proxy.patches[self.path] += 1
                    elif self.path.startswith("/query"):
                        proxy.queries += 1
                    else:
                        proxy.others += 1
                        proxy.other_paths[f"{self.command} {self.path.split('?')[0]}"] += 1
                if self.command == "PATCH" and patch_delay_s:
                    time.sleep(patch_delay_s)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = client().request(self.command, upstream + self.path, content=body, headers=headers)
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("content-length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _forward  # noqa: N815 - http.server names them so

            def log_message(self, *args: Any) -> None:
                pass

        self._clients = clients
        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def patched_ids(self) -> Counter[str]:
        """PATCHes per invocation id (paths are /invocations/<id>/<operation>)."""
        counts: Counter[str] = Counter()
        for path, n in self.patches.items():
            counts[path.split("/")[2]] += n
        return counts

    def reset(self) -> None:
        self.patches.clear()
        self.queries = self.others = 0
        self.other_paths.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        for http in self._clients:
            http.close()
