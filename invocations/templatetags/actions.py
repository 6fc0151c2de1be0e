"""`inv|allowed_actions`: the actions Restate accepts for an invocation in its current
status, for the per-row and header controls (shown to operators only)."""

from __future__ import annotations

from typing import Any

from django import template

from invocations.mirror.actions import Action, actions_allowed

register = template.Library()


@register.filter
def allowed_actions(inv: Any) -> list[Action]:
    return actions_allowed(status=inv.status, service_type=inv.service_type)
