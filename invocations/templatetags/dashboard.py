"""Template filters shared by every page; the formatting itself lives in
`reads.presenters.formatting` so Python code and templates say times the same way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django import template
from django.utils.html import format_html

from invocations.reads.presenters import errors, formatting, invocation

register = template.Library()


@register.filter
def duration(value: timedelta | None) -> str:
    return formatting.duration(value)


@register.filter
def ago(value: datetime | None) -> str:
    return formatting.ago(value)


@register.simple_tag
def timestamp(value: datetime | None) -> str:
    """A relative time with the exact UTC time on hover; the browser can localise the data attribute."""
    if not isinstance(value, datetime):
        return ""  # None, or a name missing from the context (the template engine gives "")
    utc = value.astimezone(UTC)
    iso = utc.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return format_html(
        '<time datetime="{}" title="{} UTC">{}</time>', iso, iso.replace("T", " ")[:-1], formatting.ago(value)
    )


@register.filter
def retries(retry_count: int | None) -> str:
    """Empty unless the invocation really retried; the rule is presenters.invocation.retries_label."""
    return invocation.retries_label(retry_count)


@register.filter
def attempts(inv: Any) -> str:
    """An invocation's (or tree node's) attempts, from its retry_count and status."""
    return invocation.attempts_label(inv.retry_count, inv.status)


@register.simple_tag(takes_context=True)
def error_for_reader(context: Any, text: str) -> str:
    """`{% error_for_reader message as error %}`: addresses stay for staff only. A fragment
    rendered for a websocket has no user in its context, so it gets the redacted text."""
    user = context.get("user")
    return errors.error_for(text or "", staff=bool(getattr(user, "is_staff", False)))
