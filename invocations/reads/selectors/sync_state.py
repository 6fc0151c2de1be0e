"""The mirror's health, as every page's header shows it."""

from __future__ import annotations

from invocations.mirror.models import Deadlock, SyncState, TraceFeed


def sync_state_get() -> SyncState:
    return SyncState.load()


def deadlocks_now_count() -> int:
    """Current deadlocks, for the header of every page (deadlock_resolved_idx)."""
    return Deadlock.objects.filter(resolved_at__isnull=True).count()


def trace_feed_get() -> TraceFeed | None:
    """What the OTLP receiver got (None: no export ever arrived or was refused)."""
    return TraceFeed.objects.filter(id=1).first()
