"""Login throttling's answer: the login page itself, saying why it refuses and for how long."""

from __future__ import annotations

from typing import Any

from axes.helpers import get_cool_off
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

LOCKED_OUT_STATUS = 429  # Too Many Requests: what it is, and what django-axes answers by default


def lockout_response(
    request: HttpRequest,
    original_response: HttpResponse | dict[str, Any] | None = None,
    credentials: dict[str, Any] | None = None,
) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: the login form again (so the page looks like itself), with
    the lockout explained instead of "did not match", which would invite more tries."""
    if credentials is None and isinstance(original_response, dict):
        # django-axes 8.3.1's async middleware passes the credentials second (Daphne takes that path).
        credentials = original_response
    username = (credentials or {}).get("username") or request.POST.get("username", "")
    cool_off = get_cool_off(request)
    context = {
        "form": AuthenticationForm(request, initial={"username": username}),
        "locked_out": True,
        "cool_off_minutes": round(cool_off.total_seconds() / 60) if cool_off else None,
        "next": request.POST.get("next") or request.GET.get("next", ""),
    }
    return render(request, "registration/login.html", context, status=LOCKED_OUT_STATUS)
