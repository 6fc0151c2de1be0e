from __future__ import annotations

from datetime import timedelta

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from invocations import selectors
from invocations.service_map import draw, service_map_get

# The windows offered; anything else in the URL is refused rather than guessed at.
WINDOWS: dict[str, tuple[timedelta, str]] = {
    "1h": (timedelta(hours=1), "last hour"),
    "1d": (timedelta(days=1), "last day"),
    "7d": (timedelta(days=7), "last week"),
}
DEFAULT_WINDOW = "1h"


@login_required
def service_map(request: HttpRequest) -> HttpResponse:
    key = request.GET.get("window", DEFAULT_WINDOW)
    if key not in WINDOWS:
        valid = ", ".join(WINDOWS)
        return render(
            request,
            "error.html",
            {"title": "Unknown window", "message": f"window={key!r} is not one of {valid} (hour, day, week)."},
            status=400,
        )
    window, label = WINDOWS[key]
    smap = service_map_get(window=window, now=timezone.now())
    longer = [(k, lbl) for k, (w, lbl) in WINDOWS.items() if w > window]
    context = {
        "smap": smap,
        "drawing": draw(smap) if smap.nodes else None,
        "window": key,
        "window_label": label,
        "windows": [(k, lbl, k == key) for k, (_, lbl) in WINDOWS.items()],
        "longer_windows": longer,
        "sync": selectors.sync_state_get(),
    }
    template = "invocations/service_map.html#map" if request.htmx else "invocations/service_map.html"
    return render(request, template, context)
