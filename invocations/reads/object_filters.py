"""The /objects/ filter: a keyed service and a page, both in the URL."""

from __future__ import annotations

from django import forms

from invocations.reads.selectors import objects as selectors


class ObjectFilterForm(forms.Form):
    service = forms.CharField(required=False, max_length=255)
    page = forms.IntegerField(required=False, min_value=1, max_value=1_000_000)

    def clean_service(self) -> str:
        service = self.cleaned_data.get("service") or ""
        if not service:
            return ""
        kind = selectors.service_type_get(service)
        if kind is None:
            raise forms.ValidationError(f"no service named {service!r} in our copy of Restate")
        if kind not in selectors.KEYED_TYPES:
            raise forms.ValidationError(f"{service} is a {kind}: only virtual objects and workflows have keys")
        return service

    def page_number(self) -> int:
        return self.cleaned_data.get("page") or 1
