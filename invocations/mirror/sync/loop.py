"""The sync loop: step, pace, back off, stand by. The management command is a thin
shell around `SyncLoop.run`; tests drive `step()` and `next_interval()` directly,
and the benchmarks pace their loops with `pacing`, so what they measure is what runs.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError, InterfaceError, connection

from dashboard import embedded_postgres
from invocations import events
from invocations.mirror import feed
from invocations.mirror.models import FeedMode, SyncState, TraceFeed
from invocations.mirror.sync import hints
from invocations.mirror.sync.engine import HintReport, StepReport, SyncEngine
from invocations.mirror.sync.lock import EngineLock
from invocations.restate import RestateError

log = logging.getLogger("invocations.sync")

# The errors that mean "a dependency is down": back off and try again. Anything
# else is a bug and stops the loop loudly (the run command restarts it).
TRANSIENT_ERRORS = (RestateError, DatabaseError, InterfaceError)
# The exponent stops growing here: 2**64 * any sane base is far past any cap, and a
# float power this size cannot overflow (0.5 * 2**1024 did, after ~8.5 hours down).
MAX_BACKOFF_EXPONENT = 64
# The stored interval is for "has the sync stalled?" checks (a few intervals late):
# rewrite it only when it moved this much, not on every step.
INTERVAL_WRITE_TOLERANCE = 0.25
# While an action's invocations are followed (hints), they are re-read this often.
HINT_FOLLOW_S = 0.25
# Between steps with nothing followed, how often a stop request is noticed.
STOP_CHECK_S = 1.0
# How often, between steps, the feed's row is read (push or poll, were hints dropped) and
# whether the engine lock is still ours.
FEED_CHECK_S = 1.0
# The loop's wait between steps is cut into ticks of this: what hinted changes call for
# (deadlock detection) runs within a tick of them.
PAUSE_TICK_S = 0.25
# The hint thread runs the tail itself when the loop's thread has not for this long past its
# spacing (a long full scan holds that thread).
TAIL_OVERDUE_S = 2.0


def poll_interval(*, duration_s: float) -> float:
    # Polling costs Restate a full scan; keep its share of Restate's time bounded.
    return min(settings.SYNC_MAX_INTERVAL_S, max(settings.SYNC_MIN_INTERVAL_S, 4 * duration_s))


def backoff_interval(*, failures: int, rng: random.Random) -> float:
    """Full jitter over a capped exponential, never below the poll floor.

    Jitter keeps replicas and restarted engines from retrying in lockstep against a
    recovering Restate or PostgreSQL.
    """
    base = settings.SYNC_MIN_INTERVAL_S
    ceiling = min(settings.SYNC_BACKOFF_CAP_S, base * 2.0 ** min(max(failures, 0), MAX_BACKOFF_EXPONENT))
    return rng.uniform(min(base, ceiling), ceiling)


def pacing(*, report: StepReport | None, failures: int, rng: random.Random | None = None) -> float:
    """The wait after a step: adaptive when it succeeded (`report`), backoff when it failed."""
    if report is None:
        return backoff_interval(failures=failures, rng=rng or random.Random())
    return poll_interval(duration_s=report.duration_s)


def _recover_database() -> None:
    # Backing off alone would wait forever for an embedded PostgreSQL that nobody
    # restarts when this is the only process using it. A no-op with DATABASE_URL.
    try:
        embedded_postgres.ensure_running_again()
    except embedded_postgres.EmbeddedPostgresError as exc:
        log.warning("%s", exc)


# Called after every step and every hint re-read with whether our copy changed: what is
# computed from the mirror (deadlock detection) runs as it changes, not per page view.
AfterStep = Callable[..., object]


class SyncLoop:
    def __init__(
        self,
        engine: SyncEngine,
        *,
        lock: EngineLock | None = None,
        rng: random.Random | None = None,
        after_step: AfterStep | None = None,
    ) -> None:
        self.engine = engine
        self.after_step = after_step
        self.lock = lock  # None: the caller guarantees it is the only engine (tests)
        self.rng = rng or random.Random()
        self.report: StepReport | None = None
        self.standing_by = False
        self._interval = settings.SYNC_MIN_INTERVAL_S
        self._stored_interval: float | None = None
        self._caught_up = False
        self._hints_active = True  # hints left in the table before we listened are read first
        self.mode = FeedMode.POLL
        self._step_started: float | None = None
        self._step_started_at: datetime | None = None  # wall clock: "were hints dropped since"
        self._feed_checked = 0.0
        self._last_hint_pass = 0.0
        self._lock_checked = 0.0
        # Set while this engine holds the lock and may write: the hint thread serves hints then.
        self._writing = threading.Event()
        # A hint pass changed our copy: the loop's thread runs after_step (deadlock detection).
        self._hinted_changes = threading.Event()

    @classmethod
    def from_settings(cls, *, after_step: AfterStep | None = None) -> SyncLoop:
        return cls(SyncEngine.from_settings(), lock=EngineLock(), after_step=after_step)

    @property
    def failures(self) -> int:
        return self.engine.failures

    def step(self) -> StepReport | None:
        """One step: stand by while another engine holds the lock, else sync, or record why not."""
        self.report = None
        if self.lock is not None and not self._hold_lock():
            self._writing.clear()
            self._interval = settings.SYNC_STANDBY_POLL_S
            return None
        self._writing.set()
        self._step_started = time.monotonic()
        try:
            if not self._caught_up:
                self.engine.broadcast_unsent()
                self._caught_up = True
            self._step_started_at = self.engine.clock()
            pushing = self.mode == FeedMode.PUSH
            self.report = self.engine.sync_once()
        except TRANSIENT_ERRORS as exc:
            failures = self.engine.failures + 1
            self._interval = backoff_interval(failures=failures, rng=self.rng)
            log.warning("sync failed (%d in a row), retrying in %.1fs: %s", failures, self._interval, exc)
            if isinstance(exc, DatabaseError | InterfaceError):
                _recover_database()
            self.engine.record_failure(exc, expected_interval_s=self._interval)
            self._stored_interval = None  # written with the failure (if PostgreSQL was up)
            return None
        self._check_feed(force=True)
        self._interval = self._interval_for(self.report)
        if pushing and self.mode == FeedMode.PUSH:
            # What the spans did not announce: the safety net's catch. (Not after a restart:
            # that first step finds all that changed while no engine ran.)
            SyncState.objects.filter(id=1).update(last_net_changed=self.report.changed)
        self._store_interval()
        self._after_step(changed=bool(self.report.changed or self.report.queue_keys_changed))
        if self.report.changed:
            log.info(
                "synced %d rows (%d changed) in %.2fs",
                self.report.rows_read,
                self.report.changed,
                self.report.duration_s,
            )
        return self.report

    def next_interval(self) -> float:
        """Seconds to wait before the next step, as decided by the last one."""
        return self._interval

    def _interval_for(self, report: StepReport) -> float:
        # While spans announce changes, the full scan (a cost to Restate that grows with
        # what it retains) is only the safety net.
        if self.mode == FeedMode.PUSH:
            return max(settings.SYNC_SAFETY_NET_S, 4 * report.duration_s)
        return poll_interval(duration_s=report.duration_s)

    def _check_feed(self, *, force: bool = False) -> bool:
        """Read the feed's row (at most every FEED_CHECK_S): switch push/poll, and return
        True when the receiver dropped hints since the last step began (scan now)."""
        now = time.monotonic()
        if not force and now - self._feed_checked < FEED_CHECK_S:
            return False
        self._feed_checked = now
        try:
            row = TraceFeed.objects.filter(id=1).first()
            mode = feed.feed_mode_now(feed=row, now=self.engine.clock())
            if mode != self.mode:
                self._mode_changed(mode)
        except TRANSIENT_ERRORS as exc:
            log.warning("could not read the trace feed's state: %s", exc)
            return False
        dropped_at = row.last_dropped_at if row is not None else None
        return dropped_at is not None and self._step_started_at is not None and dropped_at > self._step_started_at

    def _mode_changed(self, mode: FeedMode) -> None:
        log.info(
            "%s",
            "spans are arriving: hints drive the mirror, the full scan is a safety net"
            if mode == FeedMode.PUSH
            else "no spans for a while: polling",
        )
        self.mode = mode
        SyncState.objects.filter(id=1).update(feed_mode=mode, feed_mode_since=self.engine.clock())
        events.sync_step_committed(changed_ids=[])  # the sync line says which mode

    def step_hints(self) -> HintReport | None:
        """Re-read what hints name (actions, spans), between steps or beside them. Failures
        are left to the next pass or step: a hint stays in its table until it is read."""
        if self.lock is not None and not self._writing.is_set():
            return None
        self._last_hint_pass = time.monotonic()
        try:
            # The tail runs on the loop's thread (see _pause) unless a long step holds it.
            report = self.engine.sync_hinted(tail=self.engine.hint_tail_due(overdue_s=TAIL_OVERDUE_S))
            self._hints_active = hints.hints_pending() or self.engine.hints_tail_pending()
        except TRANSIENT_ERRORS as exc:
            self._left_for_later("re-reading hinted invocations", exc)
            self._hints_active = False
            return None
        if report is not None and report.changed:
            # Deadlock detection runs on the loop's thread, not this one: it must not delay hints.
            self._hinted_changes.set()
            log.info(
                "hints: re-read %d invocations (%d changed) in %.3fs", report.ids, report.changed, report.duration_s
            )
        return report

    def run(self, *, wait: Callable[[float], bool], listener: hints.HintListener | None = None) -> None:
        """Step until `wait(seconds)` returns True (threading.Event.wait: stop was asked).

        With a `listener` (LISTEN for hints), hints are served on a thread of their own:
        a hint wakes it at once, whatever the loop is doing (a full scan, a reconciliation,
        deadlock detection), and hinted ids are re-read every HINT_FOLLOW_S while followed.
        Writes are safe side by side: an invocation row is never replaced by an older state
        (see SyncEngine._upsert_invocations), and queue and promise snapshots are written
        under a transaction lock.
        """
        stop = threading.Event()
        worker = None
        if listener is not None:
            worker = threading.Thread(target=self._serve_hints, args=(listener, stop), name="sync-hints", daemon=True)
            worker.start()
        try:
            while True:
                self.step()
                if self._pause(wait):
                    return
        finally:
            stop.set()
            if worker is not None:
                worker.join(timeout=30)
            self.close()

    def _serve_hints(self, listener: hints.HintListener, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                if self.lock is not None and not self._writing.is_set():
                    stop.wait(STOP_CHECK_S)  # standing by, or not started yet: another engine serves them
                    continue
                woken = listener.wait(HINT_FOLLOW_S if self._hints_active else STOP_CHECK_S)
                if stop.is_set():
                    return
                if woken:
                    # Passes at most every SYNC_HINT_BATCH_S: a burst of exports waits for the
                    # next slot and is read in one query, while a lone span is read at once.
                    gap = self._last_hint_pass + settings.SYNC_HINT_BATCH_S - time.monotonic()
                    if gap > 0 and stop.wait(gap):
                        return
                if woken or self._hints_active:
                    self.step_hints()
        except Exception:
            log.exception("the hint thread stopped; hints wait for the next step")
        finally:
            listener.close()
            connection.close()

    def _pause(self, wait: Callable[[float], bool]) -> bool:
        """Wait out the interval; True when stop was asked.

        Meanwhile it runs what follows hinted changes (after_step), and re-decides the
        interval as the feed changes: spans stopping end a push-mode wait early (back to
        polling), and hints dropped by a full receiver end it at once.
        """
        if self.standing_by or self.report is None:
            return wait(self.next_interval())
        started = self._step_started if self._step_started is not None else time.monotonic()
        deadline = time.monotonic() + self.next_interval()
        while (remaining := deadline - time.monotonic()) > 0:
            if wait(min(remaining, PAUSE_TICK_S)):
                return True
            if self.engine.hint_tail_due():
                self._hint_tail()
            if self._hinted_changes.is_set():
                self._hinted_changes.clear()
                self._after_step(changed=True)
            if self.lock is not None and self._check_lock_due() and not self.lock.held():
                self._writing.clear()
                return False  # the next step finds out who holds it now
            mode = self.mode
            if self._check_feed():
                log.info("the trace receiver dropped hints (queue full): scanning now")
                return False
            if mode != self.mode and self.report is not None:
                deadline = started + self._interval_for(self.report)
        return False

    def _hint_tail(self) -> None:
        """What follows hint passes (journals, callees, queues), here rather than on the hint
        thread: a span arriving while it runs is read at once."""
        try:
            report = self.engine.sync_hint_tail()
        except TRANSIENT_ERRORS as exc:
            self._left_for_later("what follows hinted invocations", exc)
            return
        if report is not None and (report.changed or report.callees or report.journal_entries):
            self._hinted_changes.set()

    @staticmethod
    def _left_for_later(what: str, exc: BaseException) -> None:
        log.warning("%s failed: %s", what, exc)
        if isinstance(exc, DatabaseError | InterfaceError):
            connection.close()  # this thread's connection: the next try opens a fresh one

    def _check_lock_due(self) -> bool:
        now = time.monotonic()
        if now - self._lock_checked < FEED_CHECK_S:
            return False
        self._lock_checked = now
        return True

    def _after_step(self, *, changed: bool) -> None:
        if self.after_step is None:
            return
        try:
            self.after_step(changed=changed)
        except TRANSIENT_ERRORS as exc:
            log.warning("after the sync step: %s", exc)  # the next step tries again

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def _hold_lock(self) -> bool:
        assert self.lock is not None
        if self.lock.held():
            return True
        if self.lock.try_acquire():
            log.info("holding the sync engine lock: this engine writes")
            self.standing_by = False
            # Whoever held it before may have died between committing and broadcasting.
            self._caught_up = False
            return True
        if self.lock.last_error is not None:
            _recover_database()  # no lock because PostgreSQL is down, not because someone holds it
            return False
        if not self.standing_by:
            log.info("another sync engine holds the lock; standing by")
        self.standing_by = True
        return False

    def _store_interval(self) -> None:
        stored = self._stored_interval
        if stored is not None and abs(self._interval - stored) <= INTERVAL_WRITE_TOLERANCE * stored:
            return
        try:
            SyncState.objects.filter(id=1).update(expected_interval_s=self._interval)
        except DatabaseError as exc:
            log.warning("could not store the poll interval: %s", exc)  # the next step will say more
            return
        self._stored_interval = self._interval
