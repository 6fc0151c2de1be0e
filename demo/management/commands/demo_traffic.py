"""`python manage.py demo_traffic --rate 5 [--duration 60]`: keep demo traffic
flowing into the configured Restate until Ctrl-C / SIGTERM (or the duration)."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from demo.traffic import run_traffic
from invocations.restate import client_from_settings


class Command(BaseCommand):
    help = "Send a steady mix of demo invocations (calls, sends, queues, deadlocks, sagas...) to Restate."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rate", type=float, default=5.0, help="patterns started per second (default 5)")
        parser.add_argument("--duration", type=float, default=None, help="seconds to run (default: until stopped)")

    def handle(self, *args: Any, rate: float, duration: float | None, **options: Any) -> None:
        stop = threading.Event()
        # SIGTERM (e.g. from the run command's process manager) stops as cleanly as Ctrl-C.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        client = client_from_settings()
        self.stdout.write(f"demo traffic: {rate}/s into {client.ingress_url} (Ctrl-C to stop)")
        try:
            stats = run_traffic(client, rate_per_s=rate, duration_s=duration, stop_event=stop)
        finally:
            client.close()
        summary = ", ".join(f"{name} {n}" for name, n in stats.fired.most_common())
        self.stdout.write(
            f"fired {sum(stats.fired.values())} patterns ({stats.invocations} ingress invocations; "
            f"{stats.cancelled} cancelled, {stats.killed} killed, {stats.errors} errors): {summary}"
        )
