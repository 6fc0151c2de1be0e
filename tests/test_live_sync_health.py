"""The sync indicator's rule (reads/presenters/sync_health.py): unsaved SyncState rows, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings

from invocations.models import SyncState
from invocations.reads.presenters.sync_health import FAILING, MIN_STALE_AFTER, NEVER, OK, STALE, sync_health

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@override_settings(SYNC_MAX_INTERVAL_S=10.0)
def test_healthy_until_three_expected_gaps_pass_without_a_step() -> None:
    # Expected gap: the longest wait between steps (10 s) plus the last step (2 s).
    sync = SyncState(last_success_at=NOW - timedelta(seconds=35), last_duration_s=2.0)
    health = sync_health(sync, NOW)
    assert health.state == OK
    assert health.stale_after == NOW + timedelta(seconds=1)
    assert health.stale_in_s == pytest.approx(1.0)
    assert sync_health(sync, NOW + timedelta(seconds=1)).state == STALE
    # A frozen or killed sync writes nothing, so nothing but time has to change.
    assert sync_health(sync, NOW + timedelta(hours=1)).state == STALE


def test_the_engines_own_pacing_when_it_records_one() -> None:
    sync = SyncState(last_success_at=NOW - timedelta(seconds=4), last_duration_s=0.5)
    sync.expected_interval_s = 1.0  # type: ignore[attr-defined]  # added by the sync engine's migration
    health = sync_health(sync, NOW)
    assert health.stale_after == NOW - timedelta(seconds=4) + MIN_STALE_AFTER, "never below the floor"
    sync.expected_interval_s = 3.0  # type: ignore[attr-defined]
    assert sync_health(sync, NOW).stale_after == NOW - timedelta(seconds=4) + timedelta(seconds=10.5)


def test_failing_says_since_when() -> None:
    sync = SyncState(
        last_success_at=NOW - timedelta(minutes=5),
        consecutive_failures=40,
        last_error="RestateUnavailable: down",
        last_error_at=NOW - timedelta(seconds=2),
    )
    assert sync_health(sync, NOW).state == FAILING
    # Until the engine records when the run of failures began, the latest is all we know.
    assert sync_health(sync, NOW).failing_since == NOW - timedelta(seconds=2)
    sync.failing_since = NOW - timedelta(minutes=4)  # type: ignore[attr-defined]
    assert sync_health(sync, NOW).failing_since == NOW - timedelta(minutes=4)


def test_never_synced() -> None:
    health = sync_health(SyncState(), NOW)
    assert health.state == NEVER and health.stale_after is None and health.stale_in_s is None
    assert sync_health(SyncState(consecutive_failures=1, last_error_at=NOW), NOW).state == FAILING
