"""Formatting shared by every page: durations and times the way operators read them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django import template
from django.utils import timezone
from django.utils.html import format_html

register = template.Library()


@register.filter
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


@register.filter
def ago(value: datetime | None) -> str:
    if value is None:
        return ""
    delta = timezone.now() - value
    if delta.total_seconds() < 0:
        return "in " + duration(-delta)
    return duration(delta) + " ago"


@register.simple_tag
def timestamp(value: datetime | None) -> str:
    """A relative time with the exact UTC time on hover; the browser can localise the data attribute."""
    if value is None:
        return ""
    utc = value.astimezone(UTC)
    iso = utc.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return format_html('<time datetime="{}" title="{} UTC">{}</time>', iso, iso.replace("T", " ")[:-1], ago(value))
