from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from invocations import selectors


@login_required
def invocation_list(request: HttpRequest) -> HttpResponse:
    after = None
    if raw := request.GET.get("after"):
        try:
            after = selectors.Cursor.decode(raw)
        except selectors.BadCursor as exc:
            return render(request, "error.html", {"title": "Bad page link", "message": str(exc)}, status=400)
    page = selectors.invocation_list(after=after)
    context = {"page": page, "sync": selectors.sync_state_get()}
    template = "invocations/list.html#table" if request.htmx else "invocations/list.html"
    return render(request, template, context)
