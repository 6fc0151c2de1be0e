"""Context every page gets: the mirror's sync state for the header indicator, and whether
the user may act (operators see action controls)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils import timezone

from invocations.operations.roles import user_can_operate
from invocations.reads.presenters.sync_health import sync_line_context


def sync_state(request: HttpRequest) -> dict[str, Any]:
    # Signed-out visitors (the login page) learn nothing about the system.
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    return sync_line_context(now=timezone.now())


def operate(request: HttpRequest) -> dict[str, Any]:
    """`can_operate`: whether the page draws action controls (viewers get none at all)."""
    user = getattr(request, "user", None)
    return {"can_operate": user is not None and user_can_operate(user)}
