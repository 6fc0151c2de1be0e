"""Template filters for the stuck reasons (the detail panel and /stuck/)."""

from __future__ import annotations

from django import template

from invocations.reads.presenters import stuck

register = template.Library()


@register.filter
def deadlock_url(deadlock_id: str) -> str:
    """`/deadlocks/#deadlock-<id>`: where a deadlock is shown and broken."""
    return stuck.deadlocks_url(deadlock_id)
