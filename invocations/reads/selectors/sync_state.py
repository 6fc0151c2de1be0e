"""The mirror's health, as every page's header shows it."""

from __future__ import annotations

from invocations.mirror.models import SyncState


def sync_state_get() -> SyncState:
    return SyncState.load()
