from __future__ import annotations

from datetime import UTC, datetime

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from invocations import selectors
from invocations.filters import SORTS, InvocationFilterForm, InvocationFilters
from invocations.models import InvocationStatus


def _newest(page: selectors.InvocationPage) -> str:
    newest = max((inv.created_at for inv in page.rows), default=None)
    return newest.isoformat() if newest else datetime.now(UTC).isoformat()


def bad_request(request: HttpRequest, title: str, message: str) -> HttpResponse:
    return render(request, "error.html", {"title": title, "message": message}, status=400)


@login_required
def invocation_list(request: HttpRequest) -> HttpResponse:
    form = InvocationFilterForm(request.GET)
    if not form.is_valid():
        problems = "; ".join(
            f"{name}: {' '.join(errors)}" if name != "__all__" else " ".join(errors)
            for name, errors in form.errors.items()
        )
        return bad_request(request, "Bad filter", problems)
    filters = InvocationFilters.from_form(form.cleaned_data)
    after = None
    if raw := request.GET.get("after"):
        try:
            after = selectors.Cursor.decode(raw, duration=SORTS[filters.sort][1] == "duration")
        except selectors.BadCursor as exc:
            return bad_request(request, "Bad page link", str(exc))
    page = selectors.invocation_list(filters=filters, after=after)
    counts = selectors.invocation_status_counts(filters=filters)
    chips = [
        {
            "status": status,
            "count": counts.get(status, 0),
            "capped": counts.get(status, 0) > selectors.STATUS_COUNT_CAP,
            "active": status in filters.statuses,
            # A chip toggles its status in the current selection.
            "query": filters.query_string(
                status=sorted(set(filters.statuses) ^ {status}),
            ),
        }
        for status in InvocationStatus.values
    ]
    context = {
        "form": form,
        "filters": filters,
        "page": page,
        "chips": chips,
        "total": sum(counts.values()),
        "count_cap": f"{selectors.STATUS_COUNT_CAP:,}",
        "total_capped": any(n > selectors.STATUS_COUNT_CAP for n in counts.values()),
        "sorts": [(key, label, filters.query_string(sort=key)) for key, (label, _f, _d) in SORTS.items()],
        "next_query": filters.query_string(after=page.next_cursor.encode()) if page.next_cursor else "",
        "sync": selectors.sync_state_get(),
        # The socket counts what arrived after the newest row this page rendered.
        "live_query": filters.query_string(since=_newest(page)),
    }
    template = "invocations/list.html#results" if request.htmx else "invocations/list.html"
    return render(request, template, context)
