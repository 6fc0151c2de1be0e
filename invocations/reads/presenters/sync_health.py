"""Is the mirror keeping up? The one rule every page's sync indicator follows,
on the server and (through `stale_in_s`) on the reader's own clock: a sync that
froze or died sends nothing, so the page must turn stale by itself."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings

from invocations.mirror.models import SyncState
from invocations.reads.selectors.sync_state import deadlocks_now_count, sync_state_get, trace_feed_get

# Stale once this many expected gaps between successful steps have passed without one.
STALE_AFTER_INTERVALS = 3
# A fast sync's gap varies by more than its interval (a step's own duration does):
# below this floor the indicator would flicker between steps.
MIN_STALE_AFTER = timedelta(seconds=5)

OK, STALE, FAILING, NEVER = "ok", "stale", "failing", "never"


@dataclass(frozen=True)
class SyncHealth:
    state: str  # OK, STALE, FAILING or NEVER
    stale_after: datetime | None  # when an OK indicator turns STALE unless a newer step lands
    stale_in_s: float | None  # the same, in seconds from `now` (the page counts down on its own clock)
    failing_since: datetime | None  # the first failure of the current run of failures


def expected_gap(sync: SyncState) -> timedelta:
    """The usual time between two successful steps: the wait between steps plus a step."""
    # `expected_interval_s` is the sync loop's own pacing, when the engine records it.
    interval = getattr(sync, "expected_interval_s", None) or settings.SYNC_MAX_INTERVAL_S
    return timedelta(seconds=interval + (sync.last_duration_s or 0.0))


def sync_health(sync: SyncState, now: datetime) -> SyncHealth:
    stale_after = None
    if sync.last_success_at is not None:
        stale_after = sync.last_success_at + max(STALE_AFTER_INTERVALS * expected_gap(sync), MIN_STALE_AFTER)
    failing_since = None
    if sync.consecutive_failures:
        # `failing_since` survives later failures (and failures the database never saw);
        # until the engine records it, the latest failure is the best we know.
        failing_since = getattr(sync, "failing_since", None) or sync.last_error_at
    if sync.consecutive_failures:
        state = FAILING
    elif stale_after is None:
        state = NEVER
    elif now >= stale_after:
        state = STALE
    else:
        state = OK
    return SyncHealth(
        state=state,
        stale_after=stale_after,
        stale_in_s=round((stale_after - now).total_seconds(), 3) if stale_after else None,
        failing_since=failing_since,
    )


def sync_line_context(sync: SyncState | None = None, *, now: datetime) -> dict[str, Any]:
    """What the header's sync line is drawn from, on a page and in a live update alike."""
    sync = sync or sync_state_get()
    return {
        "sync": sync,
        "sync_health": sync_health(sync, now),
        "deadlocks_now": deadlocks_now_count(),
        "trace_feed": trace_feed_get(),
    }
