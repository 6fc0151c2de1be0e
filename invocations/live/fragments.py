"""HTML fragments pushed over websockets. Each is an out-of-band swap
(`hx-swap-oob`) of an element the page already has, rendered from the same
templates as the page itself, so a live update looks exactly like a reload."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.http import QueryDict
from django.template.loader import render_to_string

from invocations.reads.filters import InvocationFilterForm, InvocationFilters
from invocations.reads.presenters.detail import detail_context
from invocations.reads.selectors import detail as selectors_detail
from invocations.reads.selectors import invocations as selectors
from invocations.reads.selectors.sync_state import sync_state_get
from invocations.restate import INVOCATION_ID_RE

# A step that changed more rows than this on one page gets a "reload" hint
# rather than a flood of row swaps.
MAX_ROW_SWAPS = 100


def oob(html: str, element_id: str) -> str:
    """Mark the element with `element_id` in `html` as an out-of-band swap."""
    marker = f'id="{element_id}"'
    if marker not in html:
        raise ValueError(f"fragment has no element with {marker}")
    return html.replace(marker, f'{marker} hx-swap-oob="outerHTML"', 1)


def sync_state() -> str:
    return oob(render_to_string("invocations/_sync_state.html", {"sync": sync_state_get()}), "sync-state")


@dataclass(frozen=True)
class ListView:
    """What one connected list page shows: its filters, and the newest row it rendered."""

    filters: InvocationFilters
    since: datetime | None

    @classmethod
    def from_query(cls, query: dict[str, list[str]]) -> ListView | None:
        data = QueryDict(mutable=True)
        for key, values in query.items():
            data.setlist(key, values)
        form = InvocationFilterForm(data)
        if not form.is_valid():
            return None
        since = None
        if raw := data.get("since"):
            try:
                since = datetime.fromisoformat(raw.replace(" ", "+"))
            except ValueError:
                return None
        return cls(InvocationFilters.from_form(form.cleaned_data), since)

    def _new_banner(self) -> str:
        count = selectors.invocation_new_count(filters=self.filters, since=self.since)
        html = render_to_string("invocations/_new_banner.html", {"count": count, "query": self.filters.query_string()})
        return oob(html, "new-banner")

    def current_state(self) -> str:
        return self._new_banner() + sync_state()

    def changes(self, ids: list[str]) -> str:
        # Rows this page may show: they match its filters and are not newer than its newest row.
        shown = selectors.invocations_among(filters=self.filters, ids=ids, until=self.since, limit=MAX_ROW_SWAPS + 1)
        parts = [self._new_banner()]
        if len(shown) <= MAX_ROW_SWAPS:
            parts += [oob(render_to_string("invocations/_row.html", {"inv": inv}), f"row-{inv.id}") for inv in shown]
        return "".join(parts)


def tree_root_of(invocation_id: str) -> str | None:
    if not INVOCATION_ID_RE.match(invocation_id):
        return None
    return selectors_detail.tree_root_get(invocation_id)


def detail_state(invocation_id: str) -> str:
    try:
        context = detail_context(invocation_id)
    except selectors_detail.InvocationNotFound:
        return sync_state()
    parts = [
        oob(render_to_string(f"invocations/detail.html#{name}", context), element_id)
        for name, element_id in (("header", "inv-header"), ("tree", "inv-tree"))
    ]
    return "".join(parts) + sync_state()
