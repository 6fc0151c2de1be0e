"""`python manage.py run_stack` (what `make run` calls): the whole product on one machine.

Starts, in order: migrations, a local login, then (unless RESTATE_ADMIN_URL
points at a Restate of the user's own) restate-server with the demo services
and their traffic, then the sync engine and the web server. Ctrl-C stops every
process it started; running it again reuses ./data.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from dashboard import embedded_redis
from demo.stack import DemoStack, ManagedProcess, spawn, start_web

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
    return ADMIN_USER, password


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

        stopping = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopping.set())

        processes: list[ManagedProcess] = []
        stack: DemoStack | None = None
        redis = None
        manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
        try:
            # The sync engine and the web server are separate processes: live updates
            # travel between them through Redis, unless the user already points at one.
            if not os.environ.get("REDIS_URL"):
                redis = embedded_redis.start(data_dir / "redis", REDIS_PORT, log_path=logs / "redis.log")
                os.environ["REDIS_URL"] = f"redis://127.0.0.1:{REDIS_PORT}/0"
            if settings.RESTATE_EMBEDDED:
                admin, ingress = urlsplit(settings.RESTATE_ADMIN_URL), urlsplit(settings.RESTATE_INGRESS_URL)
                self.stdout.write("Starting restate-server and the demo services...")
                # Fixed ports (the settings' defaults) so a restart finds the same server and data.
                stack = DemoStack.start(
                    data_dir / "demo",
                    admin_port=admin.port,
                    ingress_port=ingress.port,
                    node_port=DEMO_PORTS["node"],
                    python_port=DEMO_PORTS["python"],
                    ts_port=DEMO_PORTS["ts"],
                )
                processes.append(
                    spawn(
                        "demo traffic",
                        [*manage, "demo_traffic", "--rate", str(options["traffic_rate"])],
                        logs / "traffic.log",
                    )
                )
            else:
                self.stdout.write(f"Using your Restate at {settings.RESTATE_ADMIN_URL} (no demo services started).")
            processes.append(spawn("sync engine", [*manage, "sync_restate"], logs / "sync.log"))
            processes.append(start_web(options["port"], logs / "web.log"))
            url = f"http://127.0.0.1:{options['port']}/"
            log_dirs = f"{logs}/" + (f" and {stack.log_dir}/" if stack else "")
            self.stdout.write(
                self.style.SUCCESS(f"\nDashboard: {url}\nLogin:     {user} / {password}\nLogs:      {log_dirs}\n")
            )
            self.stdout.write("Ctrl-C stops everything.")
            while not stopping.wait(1.0):
                for proc in processes:
                    if not proc.alive():
                        self.stderr.write(f"{proc.name} exited with {proc.popen.returncode}; see {proc.log_path}")
                        stopping.set()
        finally:
            self.stdout.write("\nStopping...")
            for proc in reversed(processes):
                proc.stop()
            if stack is not None:
                stack.stop()
            if redis is not None:
                redis.terminate()
                redis.wait(5)
