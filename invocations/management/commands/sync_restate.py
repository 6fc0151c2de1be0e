"""`python manage.py sync_restate`: mirror Restate into PostgreSQL until stopped.

A thin shell: the loop (pacing, backoff, the one-engine lock) is
`invocations.mirror.sync.loop.SyncLoop`, which the tests drive directly.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from invocations.analysis.deadlocks import DeadlockDetector
from invocations.mirror.sync.hints import HintListener
from invocations.mirror.sync.loop import TRANSIENT_ERRORS, SyncLoop

log = logging.getLogger("invocations.sync")

__all__ = ["TRANSIENT_ERRORS", "Command"]


class Command(BaseCommand):
    help = "Mirror Restate's invocations, journals, queues and locks into PostgreSQL, continuously."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--once", action="store_true", help="run one step and exit")

    def handle(self, *args: Any, **options: Any) -> None:
        loop = SyncLoop.from_settings(after_step=DeadlockDetector().after_step)
        if options["once"]:
            assert loop.lock is not None
            if not loop.lock.try_acquire():
                raise CommandError("another sync engine holds the lock; not syncing")
            try:
                self.stdout.write(str(loop.engine.sync_once()))
            finally:
                loop.close()
            return
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        log.info("syncing from %s", settings.RESTATE_ADMIN_URL)
        loop.run(wait=stop.wait, listener=HintListener())
        log.info("sync stopped")
