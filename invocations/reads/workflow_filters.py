"""The /workflows/ filter: a workflow service, a status and a keyset cursor, all in the URL."""

from __future__ import annotations

from django import forms

from invocations.mirror.status import InvocationStatus
from invocations.reads.selectors import objects as selectors_objects
from invocations.reads.selectors.invocations import BadCursor, Cursor
from invocations.reads.selectors.workflows import WORKFLOW


class WorkflowFilterForm(forms.Form):
    service = forms.CharField(required=False, max_length=255)
    status = forms.ChoiceField(required=False, choices=[("", "any"), *InvocationStatus.choices])
    # The last row of the page before: "<created_at>~<invocation id>" (selectors.invocations.Cursor).
    before = forms.CharField(required=False, max_length=200)

    def clean_service(self) -> str:
        service = self.cleaned_data.get("service") or ""
        if not service:
            return ""
        kind = selectors_objects.service_type_get(service)
        if kind is None:
            raise forms.ValidationError(f"no service named {service!r} in our copy of Restate")
        if kind != WORKFLOW:
            raise forms.ValidationError(f"{service} is a {kind}, not a workflow")
        return service

    def clean_before(self) -> Cursor | None:
        raw = self.cleaned_data.get("before") or ""
        if not raw:
            return None
        try:
            return Cursor.decode(raw)
        except BadCursor as exc:
            raise forms.ValidationError(str(exc)) from None
