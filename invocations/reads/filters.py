"""The invocation list's filters: parsed from the URL (so a view is a shareable
link), validated with clear messages, and turned into a queryset filter."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.db.models import Q
from django.http import QueryDict

from invocations.mirror.models import EdgeKind, Invocation, InvocationEdge
from invocations.mirror.status import (
    CANCELLED_FAILURE,
    COMPLETION_FAILURE,
    COMPLETION_SUCCESS,
    KILLED_FAILURE,
    InvocationStatus,
    Outcome,
)
from invocations.reads.presenters.formatting import iso_utc
from invocations.reads.selectors.stuck import WaitKind, waiting_q
from invocations.records.models import BulkJobItem
from invocations.restate import INVOCATION_ID_RE

SORTS = {
    # name: (label, model field used for ordering, descending?)
    "-created": ("Newest", "created_at", True),
    "created": ("Oldest", "created_at", False),
    "-modified": ("Recently modified", "modified_at", True),
    "modified": ("Least recently modified", "modified_at", False),
    "-duration": ("Longest (completed)", "duration", True),
    "duration": ("Shortest (completed)", "duration", False),
}
DEFAULT_SORT = "-created"

# What "outcome=" means in our copy; a cancel or kill is a failure whose text says so.
OUTCOME_Q: dict[str, Q] = {
    Outcome.SUCCEEDED: Q(completion_result=COMPLETION_SUCCESS),
    Outcome.FAILED: Q(completion_result=COMPLETION_FAILURE)
    & ~Q(completion_failure__in=[CANCELLED_FAILURE, KILLED_FAILURE]),
    Outcome.CANCELLED: Q(completion_result=COMPLETION_FAILURE, completion_failure=CANCELLED_FAILURE),
    Outcome.KILLED: Q(completion_result=COMPLETION_FAILURE, completion_failure=KILLED_FAILURE),
}

# Times outside this range are typos or probes; far enough out they overflow when shown in UTC.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


class BoundedDateTimeField(forms.DateTimeField):
    def validate(self, value: datetime | None) -> None:
        super().validate(value)
        # Aware datetimes compare without converting, so this cannot overflow itself.
        if value is not None and not EARLIEST <= value < LATEST:
            raise forms.ValidationError("must be a time between the years 1970 and 9000")


class InvocationFilterForm(forms.Form):
    status = forms.MultipleChoiceField(choices=InvocationStatus.choices, required=False)
    outcome = forms.MultipleChoiceField(choices=Outcome.choices, required=False)
    service = forms.CharField(required=False, max_length=255)
    handler = forms.CharField(required=False, max_length=255)
    key = forms.CharField(required=False, max_length=1000, label="Object/workflow key")
    idempotency_key = forms.CharField(required=False, max_length=1000)
    parent = forms.CharField(required=False, max_length=100, label="Parent invocation")
    roots = forms.BooleanField(required=False, label="Roots only")
    deployment = forms.CharField(required=False, max_length=100)
    created_after = BoundedDateTimeField(required=False)
    created_before = BoundedDateTimeField(required=False)
    modified_after = BoundedDateTimeField(required=False)
    modified_before = BoundedDateTimeField(required=False)
    q = forms.CharField(required=False, max_length=100, label="Invocation id or prefix")
    # Callees of one caller handler through one edge kind (links from the service map).
    caller_service = forms.CharField(required=False, max_length=255)
    caller_handler = forms.CharField(required=False, max_length=255)
    kind = forms.ChoiceField(choices=[("", "any"), *EdgeKind.choices], required=False)
    # Invoked by one service (and handler): Restate's invoked_by_target, the parent's
    # "Service[/key]/handler". For a delayed message, its sender (links from /delayed/).
    parent_service = forms.CharField(required=False, max_length=255, label="Invoked by service")
    parent_handler = forms.CharField(required=False, max_length=255, label="Invoked by handler")
    # When a scheduled invocation (a delayed message) fires: Restate's scheduled_start_at.
    fires_after = BoundedDateTimeField(required=False)
    fires_before = BoundedDateTimeField(required=False)
    # The invocations one bulk job touched ("show these invocations" on a job's page).
    job = forms.IntegerField(required=False, min_value=1, max_value=2**63 - 1, label="Bulk job")
    # What the journal we hold says it waits on (links from /stuck/), and Restate's code of
    # the last failure ("RT0007", "500").
    waiting = forms.ChoiceField(choices=[("", "any"), *WaitKind.choices], required=False, label="Waiting on")
    error_code = forms.CharField(required=False, max_length=32, label="Last failure's error code")
    sort = forms.ChoiceField(choices=[(k, v[0]) for k, v in SORTS.items()], required=False)

    def clean_q(self) -> str:
        value = self.cleaned_data["q"].strip()
        if value and not value.replace("_", "").isalnum():
            raise forms.ValidationError("an invocation id has only letters, digits and one underscore (inv_...)")
        return value

    def clean_parent(self) -> str:
        value = self.cleaned_data["parent"].strip()
        if value and not INVOCATION_ID_RE.match(value):
            raise forms.ValidationError(f"{value!r} is not an invocation id (inv_...)")
        return value

    def _clean_name(self, field: str) -> str:
        value = self.cleaned_data[field].strip()
        if "/" in value:
            raise forms.ValidationError(f"{value!r} has a '/': service and handler names never do")
        return value

    def clean_parent_service(self) -> str:
        return self._clean_name("parent_service")

    def clean_parent_handler(self) -> str:
        return self._clean_name("parent_handler")

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        for start, end in (
            ("created_after", "created_before"),
            ("modified_after", "modified_before"),
            ("fires_after", "fires_before"),
        ):
            if data.get(start) and data.get(end) and data[start] >= data[end]:
                raise forms.ValidationError(f"{start} must be earlier than {end}")
        return data


@dataclass(frozen=True)
class InvocationFilters:
    statuses: tuple[str, ...] = ()
    outcomes: tuple[str, ...] = ()
    service: str = ""
    handler: str = ""
    key: str = ""
    idempotency_key: str = ""
    parent: str = ""
    roots_only: bool = False
    deployment: str = ""
    created_after: datetime | None = None
    created_before: datetime | None = None
    modified_after: datetime | None = None
    modified_before: datetime | None = None
    id_prefix: str = ""
    caller_service: str = ""
    caller_handler: str = ""
    kind: str = ""
    parent_service: str = ""
    parent_handler: str = ""
    fires_after: datetime | None = None
    fires_before: datetime | None = None
    job: int | None = None
    waiting: str = ""
    error_code: str = ""
    sort: str = DEFAULT_SORT
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def from_form(cls, data: dict[str, Any]) -> InvocationFilters:
        return cls(
            statuses=tuple(data.get("status") or ()),
            outcomes=tuple(data.get("outcome") or ()),
            service=data.get("service") or "",
            handler=data.get("handler") or "",
            key=data.get("key") or "",
            idempotency_key=data.get("idempotency_key") or "",
            parent=data.get("parent") or "",
            roots_only=bool(data.get("roots")),
            deployment=data.get("deployment") or "",
            created_after=data.get("created_after"),
            created_before=data.get("created_before"),
            modified_after=data.get("modified_after"),
            modified_before=data.get("modified_before"),
            id_prefix=data.get("q") or "",
            caller_service=data.get("caller_service") or "",
            caller_handler=data.get("caller_handler") or "",
            kind=data.get("kind") or "",
            parent_service=data.get("parent_service") or "",
            parent_handler=data.get("parent_handler") or "",
            fires_after=data.get("fires_after"),
            fires_before=data.get("fires_before"),
            job=data.get("job") or None,
            waiting=data.get("waiting") or "",
            error_code=data.get("error_code") or "",
            sort=data.get("sort") or DEFAULT_SORT,
        )

    def q(self, *, include_status: bool = True, include_outcome: bool = True) -> Q:
        """The WHERE clause; `include_status=False` / `include_outcome=False` for the chips' counts."""
        q = Q()
        if include_status and self.statuses:
            q &= Q(status__in=self.statuses)
        if include_outcome and self.outcomes:
            either = Q()
            for outcome in self.outcomes:
                either |= OUTCOME_Q[outcome]
            q &= either
        if self.service:
            q &= Q(service_name=self.service)
        if self.handler:
            q &= Q(handler_name=self.handler)
        if self.key:
            q &= Q(service_key=self.key)
        if self.idempotency_key:
            q &= Q(idempotency_key=self.idempotency_key)
        if self.parent:
            q &= Q(parent_id=self.parent)
        if self.roots_only:
            q &= Q(parent_id__isnull=True)
        if self.deployment:
            q &= Q(pinned_deployment_id=self.deployment)
        if self.created_after:
            q &= Q(created_at__gte=self.created_after)
        if self.created_before:
            q &= Q(created_at__lt=self.created_before)
        if self.modified_after:
            q &= Q(modified_at__gte=self.modified_after)
        if self.modified_before:
            q &= Q(modified_at__lt=self.modified_before)
        if self.id_prefix:
            q &= Q(id__startswith=self.id_prefix)
        if self.caller_service or self.caller_handler or self.kind:
            edges = InvocationEdge.objects.all()
            if self.kind:
                edges = edges.filter(kind=self.kind)
            callers = Q()
            if self.caller_service:
                callers &= Q(service_name=self.caller_service)
            if self.caller_handler:
                callers &= Q(handler_name=self.caller_handler)
            edges = edges.filter(caller_id__in=Invocation.objects.filter(callers).values("id"))
            q &= Q(id__in=edges.values("callee_id"))
        # Service and handler names never contain "/" (Restate's identifiers), so the first
        # segment of the parent's target is its service and the last its handler, whatever its key.
        if self.parent_service:
            q &= Q(invoked_by_target__startswith=f"{self.parent_service}/")
        if self.parent_handler:
            q &= Q(invoked_by_target__endswith=f"/{self.parent_handler}")
        if self.fires_after:
            q &= Q(scheduled_start_at__gte=self.fires_after)
        if self.fires_before:
            q &= Q(scheduled_start_at__lt=self.fires_before)
        if self.job is not None:
            # The job's snapshot, not its filter: the same set its counts speak of.
            q &= Q(id__in=BulkJobItem.objects.filter(job_id=self.job).values("invocation_id"))
        if self.waiting:
            q &= waiting_q(self.waiting)
        if self.error_code:
            q &= Q(last_failure_error_code=self.error_code)
        return q

    def params(self, **changes: Any) -> dict[str, Any]:
        """URL parameters for these filters, with `changes` applied (None drops a key)."""
        values: dict[str, Any] = {
            "status": list(self.statuses),
            "outcome": list(self.outcomes),
            "service": self.service,
            "handler": self.handler,
            "key": self.key,
            "idempotency_key": self.idempotency_key,
            "parent": self.parent,
            "roots": "1" if self.roots_only else "",
            "deployment": self.deployment,
            "created_after": iso_utc(self.created_after),
            "created_before": iso_utc(self.created_before),
            "modified_after": iso_utc(self.modified_after),
            "modified_before": iso_utc(self.modified_before),
            "q": self.id_prefix,
            "caller_service": self.caller_service,
            "caller_handler": self.caller_handler,
            "kind": self.kind,
            "parent_service": self.parent_service,
            "parent_handler": self.parent_handler,
            "fires_after": iso_utc(self.fires_after),
            "fires_before": iso_utc(self.fires_before),
            "job": "" if self.job is None else str(self.job),
            "waiting": self.waiting,
            "error_code": self.error_code,
            "sort": "" if self.sort == DEFAULT_SORT else self.sort,
        }
        values.update(changes)
        return {k: v for k, v in values.items() if v not in (None, "", [], ())}

    def query_string(self, **changes: Any) -> str:
        return urlencode(self.params(**changes), doseq=True)

    @property
    def active(self) -> bool:
        return bool(self.params(sort=None))

    def describe(self) -> str:
        """The filter in words, for a bulk job's record ("every invocation" when none is set)."""
        params = self.params(sort=None)
        if not params:
            return "every invocation"
        parts = []
        for name, value in params.items():
            shown = " or ".join(value) if isinstance(value, list) else value
            parts.append("roots only" if name == "roots" else f"{name} = {shown}")
        return "; ".join(parts)


def without_empty(query: QueryDict) -> str | None:
    """The query string without its empty parameters, or None when it has none: a plain
    form submit sends every field, and the URL should carry only what is set."""
    pairs = [(key, value) for key, values in query.lists() for value in values]
    kept = [(key, value) for key, value in pairs if value != ""]
    return None if len(kept) == len(pairs) else urlencode(kept)
