"""Start and stop the real processes behind the demo: restate-server (from the
npm package), the Python services (hypercorn) and the TypeScript service (tsx).

Used by the tests and by the run command, so it needs no Django settings.
Every child runs in its own process group and `stop()` ends the whole group
(tsx and hypercorn fork helpers), so nothing is left running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from invocations.restate import RestateClient, RestateError

REPO_ROOT = Path(__file__).resolve().parent.parent
RESTATE_SERVER = REPO_ROOT / "node_modules" / ".bin" / "restate-server"
TSX = REPO_ROOT / "node_modules" / ".bin" / "tsx"
TS_SERVICES = REPO_ROOT / "demo" / "ts" / "services.ts"


class StackError(RuntimeError):
    """A process did not start; the message carries the tail of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it if it has not exited after `grace_s`."""
        try:
            if self.alive():
                self._signal(signal.SIGTERM)
                try:
                    self.popen.wait(grace_s)
                except subprocess.TimeoutExpired:
                    self._signal(signal.SIGKILL)
                    self.popen.wait(grace_s)
            # The leader may be gone while forked helpers linger in its group.
            self._signal(signal.SIGKILL)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def _signal(self, sig: int) -> None:
        # The child was started with start_new_session, so its pgid is its pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spawn(name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> ManagedProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the ManagedProcess, closed in stop()
    popen = subprocess.Popen(
        argv,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # own process group: stop() can kill helpers too
    )
    return ManagedProcess(name, popen, log_path, log)


def _fail(proc: ManagedProcess, why: str) -> None:
    proc.stop()
    raise StackError(f"{proc.name} {why}; last lines of {proc.log_path}:\n{log_tail(proc.log_path)}")


def wait_for_port(proc: ManagedProcess, port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            _fail(proc, f"exited with code {proc.popen.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    _fail(proc, f"did not listen on port {port} within {timeout_s:.0f}s")


def start_web(port: int, log_path: Path, env: dict[str, str] | None = None) -> ManagedProcess:
    """The dashboard's ASGI server (Daphne) on 127.0.0.1:`port`, as `make run`, the browser
    tests and the page benchmark run it; `env` adds e.g. DATABASE_URL and REDIS_URL."""
    argv = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "dashboard.asgi:application"]
    proc = spawn("web server", argv, log_path, env)
    wait_for_port(proc, port)
    return proc


def tracing_env(endpoint: str, *, token: str) -> dict[str, str]:
    """restate-server's environment for pushing its invocation spans to the dashboard's
    receiver (`endpoint` is its /v1/traces), with the bearer token, every 100 ms
    instead of the exporter's default 5 s."""
    return {
        "RESTATE_TRACING_SERVICES_ENDPOINT": f"otlp+{endpoint}",
        "RESTATE_TRACING_HEADERS__AUTHORIZATION": f"Bearer {token}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


def start_restate(
    base_dir: Path,
    *,
    ingress_port: int,
    admin_port: int,
    node_port: int,
    log_path: Path,
    timeout_s: float = 30.0,
    extra_env: dict[str, str] | None = None,
) -> ManagedProcess:
    """Start restate-server with its data in `base_dir`; returns once /version answers.

    `extra_env` adds to restate-server's environment, e.g. an experimental feature
    (`{"RESTATE_EXPERIMENTAL_ENABLE_VQUEUES": "true"}`); it cannot move the ports.
    """
    if not RESTATE_SERVER.exists():
        raise StackError(f"{RESTATE_SERVER} is missing: run `npm ci` first")
    base_dir.mkdir(parents=True, exist_ok=True)
    env = {
        "RESTATE_INGRESS__BIND_ADDRESS": f"127.0.0.1:{ingress_port}",
        "RESTATE_ADMIN__BIND_ADDRESS": f"127.0.0.1:{admin_port}",
        "RESTATE_BIND_ADDRESS": f"127.0.0.1:{node_port}",
        "RESTATE_ADVERTISED_ADDRESS": f"http://127.0.0.1:{node_port}",
        # Unix sockets would land in base_dir with names too long for sun_path.
        "RESTATE_LISTEN_MODE": "tcp",
    }
    env = {**(extra_env or {}), **env}
    proc = spawn("restate-server", [str(RESTATE_SERVER), "--no-logo", "--base-dir", str(base_dir)], log_path, env)
    with RestateClient(
        admin_url=f"http://127.0.0.1:{admin_port}", ingress_url=f"http://127.0.0.1:{ingress_port}", timeout=2.0
    ) as client:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not proc.alive():
                _fail(proc, f"exited with code {proc.popen.returncode}")
            if client.health() and _query_ready(client):
                wait_for_port(proc, ingress_port, timeout_s)
                return proc
            time.sleep(0.2)
    _fail(proc, f"admin API did not answer on port {admin_port} within {timeout_s:.0f}s")
    raise AssertionError("unreachable")


def _query_ready(client: RestateClient) -> bool:
    # /version answers before the query engine (and the partitions behind it)
    # is ready; callers expect to query and invoke right away.
    try:
        client.query("SELECT id FROM sys_deployment LIMIT 1")
    except RestateError:
        return False
    return True


def start_python_services(port: int, log_path: Path) -> ManagedProcess:
    proc = spawn("python-services", [sys.executable, "-m", "demo.serve", str(port)], log_path)
    wait_for_port(proc, port)
    return proc


def start_ts_services(port: int, log_path: Path) -> ManagedProcess:
    if not TSX.exists():
        raise StackError(f"{TSX} is missing: run `npm ci` first")
    proc = spawn("ts-services", [str(TSX), str(TS_SERVICES)], log_path, {"PORT": str(port)})
    wait_for_port(proc, port)
    return proc


def register_demo(client: RestateClient, python_port: int, ts_port: int | None) -> list[dict[str, Any]]:
    """Register both deployments (force: re-registering after a restart is fine)."""
    ports = [python_port] if ts_port is None else [python_port, ts_port]
    return [register_deployment(client, port) for port in ports]


def register_deployment(client: RestateClient, port: int) -> dict[str, Any]:
    """Register the demo service listening on `port` (one of the two), e.g. after it restarted."""
    return client.register_deployment(f"http://127.0.0.1:{port}")


@dataclass
class DemoStack:
    """restate-server + Python services + TS service, registered, on free ports.

    >>> with DemoStack.start(Path("/tmp/demo")) as stack:
    ...     stack.client.call("Greeter", "greet", payload="you")
    """

    base_dir: Path
    ingress_port: int
    admin_port: int
    node_port: int
    python_port: int
    ts_port: int | None
    # Extra environment for restate-server, kept across restart_restate.
    restate_env: dict[str, str] = field(default_factory=dict)
    restate: ManagedProcess | None = None
    services: list[ManagedProcess] = field(default_factory=list)
    client: RestateClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = RestateClient(admin_url=self.admin_url, ingress_url=self.ingress_url, timeout=30.0)

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def ingress_url(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"

    @property
    def log_dir(self) -> Path:
        return self.base_dir / "logs"

    @classmethod
    def start(
        cls, base_dir: Path, *, with_ts: bool = True, restate_env: dict[str, str] | None = None, **ports: int
    ) -> DemoStack:
        """Start everything; ports not given are picked free. Stops what started on failure.

        `restate_env` adds to restate-server's environment, now and on every restart.
        """
        stack = cls(
            base_dir=base_dir,
            restate_env=dict(restate_env or {}),
            ingress_port=ports.get("ingress_port") or free_port(),
            admin_port=ports.get("admin_port") or free_port(),
            node_port=ports.get("node_port") or free_port(),
            python_port=ports.get("python_port") or free_port(),
            ts_port=(ports.get("ts_port") or free_port()) if with_ts else None,
        )
        try:
            stack.start_restate()
            stack.services.append(start_python_services(stack.python_port, stack.log_dir / "python-services.log"))
            if stack.ts_port is not None:
                stack.services.append(start_ts_services(stack.ts_port, stack.log_dir / "ts-services.log"))
            register_demo(stack.client, stack.python_port, stack.ts_port)
        except BaseException:
            stack.stop()
            raise
        return stack

    def start_restate(self) -> None:
        if self.restate is not None and self.restate.alive():
            return  # a second server on the same ports and data would fight the first
        self.restate = start_restate(
            self.base_dir / "restate",
            ingress_port=self.ingress_port,
            admin_port=self.admin_port,
            node_port=self.node_port,
            log_path=self.log_dir / "restate-server.log",
            extra_env=self.restate_env,
        )

    def stop_restate(self) -> None:
        if self.restate is not None:
            self.restate.stop()
            self.restate = None

    def restart_restate(self) -> None:
        """Stop restate-server and start it again on the same ports and data (an outage)."""
        self.stop_restate()
        self.start_restate()

    def stop(self) -> None:
        for proc in reversed(self.services):
            proc.stop()
        self.services.clear()
        self.stop_restate()
        self.client.close()

    def __enter__(self) -> DemoStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "DemoStack",
    "ManagedProcess",
    "RestateError",
    "StackError",
    "free_port",
    "register_demo",
    "register_deployment",
    "start_python_services",
    "start_restate",
    "start_ts_services",
]
