"""Durations and times the way operators read them; one definition shared by
templates (through the `dashboard` template tags), presenters and the URL code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.utils import timezone


def duration(value: timedelta | None) -> str:
    if value is None:
        return ""
    seconds = value.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def ago(value: datetime | None) -> str:
    if value is None:
        return ""
    delta = timezone.now() - value
    if delta.total_seconds() < 0:
        return "in " + duration(-delta)
    return duration(delta) + " ago"


def iso_utc(value: datetime | None) -> str:
    """Full-precision UTC ISO-8601 ("" for None): for URLs and datetime attributes."""
    return value.astimezone(UTC).isoformat() if value else ""


def utc_text(value: datetime, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return value.astimezone(UTC).strftime(fmt)
