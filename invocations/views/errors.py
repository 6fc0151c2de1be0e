"""The one error page, with the status that says what went wrong (400 bad input, 403 not for your role, 404 unknown)."""

from __future__ import annotations

from django.forms import Form
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def error_page(request: HttpRequest, *, title: str, message: str, status: int) -> HttpResponse:
    return render(request, "error.html", {"title": title, "message": message}, status=status)


def bad_request(request: HttpRequest, title: str, message: str) -> HttpResponse:
    return error_page(request, title=title, message=message, status=400)


def forbidden(request: HttpRequest, message: str, *, title: str = "Not allowed") -> HttpResponse:
    return error_page(request, title=title, message=message, status=403)


def not_found(request: HttpRequest, title: str, message: str) -> HttpResponse:
    return error_page(request, title=title, message=message, status=404)


def form_problems(form: Form) -> str:
    """A form's errors in one line: `field: problem; field: problem`."""
    return "; ".join(
        f"{name}: {' '.join(map(str, errors))}" if name != "__all__" else " ".join(map(str, errors))
        for name, errors in form.errors.items()
    )
