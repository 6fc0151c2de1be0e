"""`python manage.py sync_restate`: mirror Restate into PostgreSQL until stopped."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import DatabaseError, InterfaceError

from dashboard import embedded_postgres
from invocations.restate import RestateError
from invocations.sync.engine import StepReport, SyncEngine

log = logging.getLogger("invocations.sync")

# The errors that mean "a dependency is down": back off and try again. Anything
# else is a bug and stops the command loudly.
TRANSIENT_ERRORS = (RestateError, DatabaseError, InterfaceError)


class Command(BaseCommand):
    help = "Mirror Restate's invocations, journals, queues and locks into PostgreSQL, continuously."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--once", action="store_true", help="run one step and exit")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop = threading.Event()
        self.engine: SyncEngine | None = None

    def sync_once(self) -> StepReport:
        if self.engine is None:
            self.engine = SyncEngine.from_settings()
        return self.engine.sync_once()

    def next_interval(self, *, report: StepReport | None, failures: int) -> float:
        if report is None:
            # Exponential backoff while Restate or PostgreSQL is down, capped.
            return min(30.0, settings.SYNC_MIN_INTERVAL_S * 2**failures)
        # Polling costs Restate a full scan; keep its share of Restate's time bounded.
        return min(settings.SYNC_MAX_INTERVAL_S, max(settings.SYNC_MIN_INTERVAL_S, 4 * report.duration_s))

    def recover_database(self) -> None:
        # Backing off alone would wait forever for an embedded server nobody restarts
        # when this is the only process left using it. A no-op with DATABASE_URL.
        try:
            embedded_postgres.ensure_running_again()
        except embedded_postgres.EmbeddedPostgresError as exc:
            log.warning("%s", exc)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["once"]:
            self.stdout.write(str(self.sync_once()))
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        log.info("syncing from %s", settings.RESTATE_ADMIN_URL)
        failures = 0
        while not self.stop.is_set():
            report = None
            try:
                report = self.sync_once()
                failures = 0
                if report.changed:
                    log.info(
                        "synced %d rows (%d changed) in %.2fs", report.rows_read, report.changed, report.duration_s
                    )
            except TRANSIENT_ERRORS as exc:
                failures += 1
                log.warning("sync failed (%d in a row), backing off: %s", failures, exc)
                if isinstance(exc, (DatabaseError, InterfaceError)):
                    self.recover_database()
                assert self.engine is not None
                self.engine.record_failure(exc)
            self.stop.wait(self.next_interval(report=report, failures=failures))
        log.info("sync stopped")
