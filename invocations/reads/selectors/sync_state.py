"""The mirror's health, as every page's header shows it."""

from __future__ import annotations

from invocations.mirror.models import Deadlock, SyncState


def sync_state_get() -> SyncState:
    return SyncState.load()


def deadlocks_now_count() -> int:
    """Current deadlocks, for the header of every page (deadlock_resolved_idx)."""
    return Deadlock.objects.filter(resolved_at__isnull=True).count()
