"""`python manage.py run_stack` (what `make run` calls): the whole product on one machine.

Starts, in order: migrations, a local login, then (unless RESTATE_ADMIN_URL
points at a Restate of the user's own) restate-server with the demo services
and their traffic, then the sync engine, the service map's rollup worker and the
web server. A process that dies is started again (demo.supervise: capped backoff,
one line saying which and why), the embedded PostgreSQL included. Ctrl-C stops
every process it started; running it again reuses ./data.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from dashboard import embedded_postgres, embedded_redis
from demo.stack import (
    DemoStack,
    ManagedProcess,
    register_deployment,
    spawn,
    start_python_services,
    start_ts_services,
    start_web,
    tracing_env,
)
from demo.supervise import EmbeddedPostgresHandle, Event, PopenHandle, Supervisor
from invocations.operations.roles import Role, user_set_role
from invocations.operations.tasks import ATTACH_QUEUE, BULK_QUEUE

ADMIN_USER = "admin"
DEMO_PORTS = {"node": 15122, "python": 19080, "ts": 19081}
REDIS_PORT = 16379


def local_login(data_dir: Path) -> tuple[str, str]:
    """A dashboard login for this machine, created once; its password is kept in ./data."""
    password_file = data_dir / "admin_password"
    if not password_file.exists():
        password_file.write_text(secrets.token_urlsafe(12))
        password_file.chmod(0o600)
    password = password_file.read_text().strip()
    user, _ = get_user_model().objects.get_or_create(
        username=ADMIN_USER, defaults={"is_staff": True, "is_superuser": True}
    )
    if not user.check_password(password):
        user.set_password(password)
        user.save()
    user_set_role(username=ADMIN_USER, role=Role.OPERATOR)
    return ADMIN_USER, password


def traces_token(data_dir: Path) -> str:
    """The receiver's bearer token: TRACES_TOKEN when set, else one made once and kept in ./data."""
    if settings.TRACES_TOKEN:
        return settings.TRACES_TOKEN
    token_file = data_dir / "traces_token"
    if not token_file.exists():
        token_file.write_text(secrets.token_urlsafe(24))
        token_file.chmod(0o600)
    return token_file.read_text().strip()


class Command(BaseCommand):
    help = "Run the dashboard with everything it needs (embedded Restate + demo unless RESTATE_ADMIN_URL is set)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--traffic-rate", type=float, default=3.0, help="demo invocations started per second")

    def handle(self, *args: Any, **options: Any) -> None:
        data_dir: Path = settings.DATA_DIR
        logs = data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        call_command("migrate", interactive=False, verbosity=0)
        user, password = local_login(data_dir)
        # The web server (a child) receives Restate's spans with this token; Restate sends it.
        os.environ["TRACES_TOKEN"] = traces_token(data_dir)

        supervisor = Supervisor(report=self.report)
        wake = threading.Event()

        def on_signal(*_: object) -> None:
            supervisor.request_stop()
            wake.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)

        stack: DemoStack | None = None
        try:
            stack = self.add_children(supervisor, logs=logs, port=options["port"], traffic_rate=options["traffic_rate"])
            if stack is not None:
                self.stdout.write("Starting restate-server and the demo services...")
            else:
                self.stdout.write(f"Using your Restate at {settings.RESTATE_ADMIN_URL} (no demo services started).")
            supervisor.start_all(now=time.monotonic())
            if not supervisor.stop_requested:
                url = f"http://127.0.0.1:{options['port']}/"
                log_dirs = f"{logs}/" + (f" and {stack.log_dir}/" if stack else "")
                self.stdout.write(
                    self.style.SUCCESS(f"\nDashboard: {url}\nLogin:     {user} / {password}\nLogs:      {log_dirs}\n")
                )
                self.stdout.write(
                    f"Spans:     point Restate's tracing at {url}v1/traces with the header "
                    f"`authorization: Bearer <{data_dir}/traces_token>` (the demo's Restate already is)."
                )
                self.stdout.write("Ctrl-C stops everything; a process that dies is started again.")
            while not wake.wait(1.0):
                supervisor.poll_once(time.monotonic())
        finally:
            self.stdout.write("\nStopping...")
            supervisor.stop_all()
            if stack is not None:
                stack.stop()

    def add_children(self, supervisor: Supervisor, *, logs: Path, port: int, traffic_rate: float) -> DemoStack | None:
        """Register every child with the supervisor, in start order; returns the demo stack, if any."""
        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        # None when DATABASE_URL points at a server of the user's own: not ours to restart.
        if (pg_dir := embedded_postgres.embedded_data_dir()) is not None:
            supervisor.add(
                "embedded PostgreSQL", lambda: EmbeddedPostgresHandle.ensure(pg_dir), log_path=pg_dir / "log"
            )
        # The sync engine and the web server are separate processes: live updates
        # travel between them through Redis, unless the user already points at one.
        if not os.environ.get("REDIS_URL"):
            os.environ["REDIS_URL"] = f"redis://127.0.0.1:{REDIS_PORT}/0"
            redis_dir = settings.DATA_DIR / "redis"
            supervisor.add(
                "redis",
                lambda: PopenHandle(embedded_redis.start(redis_dir, REDIS_PORT, log_path=logs / "redis.log")),
                log_path=logs / "redis.log",
            )
        stack: DemoStack | None = None
        if settings.RESTATE_EMBEDDED:
            admin, ingress = urlsplit(settings.RESTATE_ADMIN_URL), urlsplit(settings.RESTATE_INGRESS_URL)
            # Fixed ports (the settings' defaults) so a restart finds the same server and data.
            assert admin.port is not None and ingress.port is not None
            stack = DemoStack(
                base_dir=settings.DATA_DIR / "demo",
                admin_port=admin.port,
                ingress_port=ingress.port,
                node_port=DEMO_PORTS["node"],
                python_port=DEMO_PORTS["python"],
                ts_port=DEMO_PORTS["ts"],
                restate_env=tracing_env(f"http://127.0.0.1:{port}/v1/traces", token=os.environ["TRACES_TOKEN"]),
            )
            demo = stack
            supervisor.add("restate-server", lambda: _start_restate(demo), log_path=demo.log_dir / "restate-server.log")
            python_log, ts_log = demo.log_dir / "python-services.log", demo.log_dir / "ts-services.log"
            supervisor.add(
                "python demo services",
                lambda: _registered(demo, start_python_services(demo.python_port, python_log), demo.python_port),
                log_path=python_log,
            )
            assert demo.ts_port is not None
            ts_port = demo.ts_port
            supervisor.add(
                "ts demo services",
                lambda: _registered(demo, start_ts_services(ts_port, ts_log), ts_port),
                log_path=ts_log,
            )
            traffic = [*manage, "demo_traffic", "--rate", str(traffic_rate)]
            supervisor.add(
                "demo traffic",
                lambda: spawn("demo traffic", traffic, logs / "traffic.log"),
                log_path=logs / "traffic.log",
            )
        supervisor.add(
            "sync engine",
            lambda: spawn("sync engine", [*manage, "sync_restate"], logs / "sync.log"),
            log_path=logs / "sync.log",
        )
        # Recounts the hours the sync engine changed, for the service map (its own process: the
        # recount of a busy hour must not lengthen sync steps, which set the live pages' freshness).
        supervisor.add(
            "rollup worker",
            lambda: spawn("rollup worker", [*manage, "refresh_rollups"], logs / "rollups.log"),
            log_path=logs / "rollups.log",
        )
        # Bulk jobs and attach waits run in procrastinate workers on our PostgreSQL, never
        # in the web server: a job survives a web restart, and a worker killed mid-job is
        # replaced and resumes where the job's rows say it stopped.
        for name, argv in worker_commands(manage):
            log_path = logs / f"{name.replace(' ', '-')}.log"
            supervisor.add(name, _spawner(name, argv, log_path), log_path=log_path)
        supervisor.add("web server", lambda: start_web(port, logs / "web.log"), log_path=logs / "web.log")
        return stack

    def report(self, event: Event) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {event.message}"
        if event.kind == "restarted":
            self.stdout.write(self.style.SUCCESS(line))
        else:
            self.stderr.write(self.style.WARNING(line))


def _spawner(name: str, argv: list[str], log_path: Path) -> Callable[[], ManagedProcess]:
    return lambda: spawn(name, argv, log_path)


def worker_commands(manage: list[str]) -> list[tuple[str, list[str]]]:
    """The task-queue workers a deployment runs: one for bulk jobs, one for attach waits."""
    worker = [*manage, "procrastinate", "worker"]
    return [
        ("bulk worker", [*worker, "--name", "bulk", "--queues", BULK_QUEUE, "--concurrency", "2"]),
        # An attach may wait for days: on shutdown, hand it back to the queue after 5 s instead of waiting for it.
        (
            "attach worker",
            [
                *worker,
                "--name",
                "attach",
                "--queues",
                ATTACH_QUEUE,
                "--concurrency",
                "500",
                "--shutdown-graceful-timeout",
                "5",
            ],
        ),
    ]


def _start_restate(stack: DemoStack) -> ManagedProcess:
    stack.start_restate()
    assert stack.restate is not None
    return stack.restate


def _registered(stack: DemoStack, proc: ManagedProcess, port: int) -> ManagedProcess:
    """`proc`, once its deployment is registered with Restate. Needed on a fresh data dir;
    after a restart it picks up handlers changed in the meantime and proves Restate reaches
    the service again (force: registering the same deployment twice is fine)."""
    try:
        register_deployment(stack.client, port)
    except BaseException:
        proc.stop()
        raise
    return proc
