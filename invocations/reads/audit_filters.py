"""The audit page's filter: every field in the URL, validated before any query."""

from __future__ import annotations

from typing import Any

from django import forms

from invocations.mirror.actions import Action
from invocations.reads.filters import EARLIEST, LATEST
from invocations.reads.selectors.audit import AuditFilters
from invocations.records.models import AuditKind
from invocations.restate import INVOCATION_ID_RE


class AuditFilterForm(forms.Form):
    user = forms.CharField(required=False, max_length=150)
    action = forms.ChoiceField(required=False, choices=[("", "any action"), *Action.choices])
    kind = forms.ChoiceField(required=False, choices=[("", "single and bulk"), *AuditKind.choices])
    invocation = forms.CharField(required=False, max_length=100)
    job = forms.IntegerField(required=False, min_value=1, max_value=2**62)
    since = forms.DateTimeField(required=False)
    until = forms.DateTimeField(required=False)
    before = forms.IntegerField(required=False, min_value=1, max_value=2**62)

    def clean_invocation(self) -> str:
        value: str = self.cleaned_data["invocation"].strip()
        if value and not INVOCATION_ID_RE.match(value):
            raise forms.ValidationError("not an invocation id (inv_ followed by letters and digits)")
        return value

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for name in ("since", "until"):
            moment = cleaned.get(name)
            if moment is not None and not (EARLIEST <= moment <= LATEST):
                self.add_error(name, f"must be between {EARLIEST.year} and {LATEST.year}")
        return cleaned

    def filters(self) -> AuditFilters:
        data = self.cleaned_data
        return AuditFilters(
            username=data.get("user") or "",
            action=data.get("action") or "",
            kind=data.get("kind") or "",
            invocation_id=data.get("invocation") or "",
            job_id=data.get("job"),
            since=data.get("since"),
            until=data.get("until"),
        )
