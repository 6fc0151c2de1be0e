"""The /delayed/ filter, all in the URL: the target (service, handler), the sender
(sender_service, sender_handler), the fire-time window (fires_after, fires_before),
the chart's range (chart=hour|day|week) and the page (after=<cursor>).

It is a list filter underneath (`InvocationFilters` with status `scheduled`, the
parent's service/handler and the fire window), so "cancel every message matching the
filter" hands the bulk job exactly the set the page lists."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django import forms

from invocations.graph.fires import DEFAULT_RANGE, RANGES, ChartRange
from invocations.mirror.status import InvocationStatus
from invocations.reads.filters import BoundedDateTimeField, InvocationFilters
from invocations.reads.presenters.formatting import iso_utc
from invocations.reads.selectors.invocations import BadCursor, Cursor


class DelayedFilterForm(forms.Form):
    service = forms.CharField(required=False, max_length=255, label="Target service")
    handler = forms.CharField(required=False, max_length=255, label="Target handler")
    sender_service = forms.CharField(required=False, max_length=255)
    sender_handler = forms.CharField(required=False, max_length=255)
    fires_after = BoundedDateTimeField(required=False)
    fires_before = BoundedDateTimeField(required=False)
    chart = forms.ChoiceField(choices=[("", "default"), *((r.name, r.label) for r in RANGES.values())], required=False)
    after = forms.CharField(required=False, max_length=200, label="Page cursor")

    def _clean_name(self, field: str) -> str:
        value = self.cleaned_data[field].strip()
        if "/" in value:
            raise forms.ValidationError(f"{value!r} has a '/': service and handler names never do")
        return value

    def clean_service(self) -> str:
        return self._clean_name("service")

    def clean_handler(self) -> str:
        return self._clean_name("handler")

    def clean_sender_service(self) -> str:
        return self._clean_name("sender_service")

    def clean_sender_handler(self) -> str:
        return self._clean_name("sender_handler")

    def clean_after(self) -> Cursor | None:
        raw = self.cleaned_data["after"]
        if not raw:
            return None
        try:
            return Cursor.decode(raw)
        except BadCursor as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if data.get("fires_after") and data.get("fires_before") and data["fires_after"] >= data["fires_before"]:
            raise forms.ValidationError("fires_after must be earlier than fires_before")
        return data


@dataclass(frozen=True)
class DelayedFilters:
    service: str = ""
    handler: str = ""
    sender_service: str = ""
    sender_handler: str = ""
    fires_after: datetime | None = None
    fires_before: datetime | None = None
    chart: str = DEFAULT_RANGE
    after: Cursor | None = None

    @classmethod
    def from_form(cls, data: dict[str, Any]) -> DelayedFilters:
        return cls(
            service=data.get("service") or "",
            handler=data.get("handler") or "",
            sender_service=data.get("sender_service") or "",
            sender_handler=data.get("sender_handler") or "",
            fires_after=data.get("fires_after"),
            fires_before=data.get("fires_before"),
            chart=data.get("chart") or DEFAULT_RANGE,
            after=data.get("after"),
        )

    @property
    def chart_range(self) -> ChartRange:
        return RANGES[self.chart]

    def invocation_filters(self, *, with_window: bool = True) -> InvocationFilters:
        """The same set as a list filter (the bulk job's, and the list page's link);
        `with_window=False` for the chart, which draws its own range."""
        return InvocationFilters(
            statuses=(InvocationStatus.SCHEDULED.value,),
            service=self.service,
            handler=self.handler,
            parent_service=self.sender_service,
            parent_handler=self.sender_handler,
            fires_after=self.fires_after if with_window else None,
            fires_before=self.fires_before if with_window else None,
        )

    def params(self, **changes: Any) -> dict[str, str]:
        """URL parameters for these filters with `changes` applied (None drops one); the
        page cursor is dropped unless given again."""
        values: dict[str, Any] = {
            "service": self.service,
            "handler": self.handler,
            "sender_service": self.sender_service,
            "sender_handler": self.sender_handler,
            "fires_after": iso_utc(self.fires_after),
            "fires_before": iso_utc(self.fires_before),
            "chart": "" if self.chart == DEFAULT_RANGE else self.chart,
        }
        values.update(changes)
        return {k: v for k, v in values.items() if v not in (None, "")}

    def query_string(self, **changes: Any) -> str:
        return urlencode(self.params(**changes))

    @property
    def active(self) -> bool:
        """A filter narrows the list (the chart's range does not)."""
        return bool(self.params(chart=None))

    @property
    def has_window(self) -> bool:
        return bool(self.fires_after or self.fires_before)
