"""`python manage.py refresh_rollups`: keep the service map's hourly rollups current.

The sync engine marks the hours it writes dirty (in its own transactions: 0.3 ms per
step); this worker recomputes them (`invocations.mirror.rollups.refresh_dirty`), every
second or so, and backs off while PostgreSQL is down. A separate process rather than a
part of each sync step, because recounting the current hour is not a few ms: 25 ms when
it holds 4,000 invocations, 235 ms at 104,000 (demo traffic for an hour), measured by
benchmarks/pages_bench.py at 1M rows, and the sync step's time is the live pages'
freshness. Waiting ten times the last recount between recounts keeps its share of a core
under a tenth. Tests call `step()`.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand
from django.db import DatabaseError, InterfaceError, connection

from invocations.mirror import rollups

log = logging.getLogger("invocations.rollups")

MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 30.0
# Wait this many times the last refresh: the worker's share of a core stays under 1/(1+this).
DUTY_FACTOR = 10.0


class Command(BaseCommand):
    help = "Recompute the service map's hourly rollups for the hours the sync engine changed, continuously."

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures = 0
        self.interval = MIN_INTERVAL_S
        self.rng = random.Random()

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--once", action="store_true", help="refresh the dirty hours once and exit")

    def step(self) -> rollups.RefreshReport | None:
        """Refresh the dirty hours once; None when PostgreSQL would not let it (then back off)."""
        try:
            report = rollups.refresh_dirty()
        except (DatabaseError, InterfaceError) as exc:
            self.failures += 1
            ceiling = min(MAX_INTERVAL_S, MIN_INTERVAL_S * 2.0 ** min(self.failures, 16))
            self.interval = self.rng.uniform(MIN_INTERVAL_S, ceiling)
            log.warning("rollup refresh failed (%d in a row), retrying in %.1fs: %s", self.failures, self.interval, exc)
            connection.close()  # a broken connection must not be reused
            return None
        self.failures = 0
        self.interval = min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, DUTY_FACTOR * report.seconds))
        if report.hours:
            # Under traffic the current hour is recounted every step: worth a line only when more is.
            level = logging.INFO if report.hours > 2 or report.pending or report.seconds > 1.0 else logging.DEBUG
            log.log(level, "recounted %d hours in %.3fs (%d still dirty)", report.hours, report.seconds, report.pending)
        return report

    def handle(self, *args: Any, **options: Any) -> None:
        if options["once"]:
            report = rollups.refresh_dirty()
            self.stdout.write(
                f"recounted {report.hours} hours in {report.seconds:.3f} s ({report.pending} still dirty)"
            )
            return
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        log.info("refreshing the service map's rollups")
        while True:
            self.step()
            if stop.wait(self.interval):
                break
        log.info("rollup worker stopped")
