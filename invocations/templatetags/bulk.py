"""Template tags of the bulk-action control on the list page (a file of its own: the
list view's context is not the bulk feature's to extend)."""

from __future__ import annotations

from django import template

from invocations.mirror.actions import Action

register = template.Library()


@register.simple_tag
def bulk_actions() -> list[tuple[str, str]]:
    """Every action a bulk job can carry, as (value, label)."""
    return [(a.value, a.label) for a in Action]
