"""HTML fragments pushed over websockets. Each is an out-of-band swap
(`hx-swap-oob`) of an element the page already has, rendered from the same
templates as the page itself, so a live update looks exactly like a reload.

Pages apply a message with htmx's own swap (static/live.js), which takes table
rows wrapped in <template> (a bare <tr> outside a table loses its tags when parsed).
A detail page gets no tree over the socket, only a small "changed" signal; it
fetches the tree over HTTP, where one render serves every reader of the tree.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from django.http import QueryDict
from django.template.loader import render_to_string
from django.utils import timezone

from invocations.reads.audit_filters import AuditFilterForm
from invocations.reads.delayed_filters import DelayedFilterForm, DelayedFilters
from invocations.reads.filters import DEFAULT_SORT, InvocationFilterForm, InvocationFilters
from invocations.reads.object_filters import ObjectFilterForm
from invocations.reads.presenters.attach import attach_panel_for
from invocations.reads.presenters.audit import audit_context
from invocations.reads.presenters.deadlocks import deadlocks_context
from invocations.reads.presenters.delayed import delayed_context
from invocations.reads.presenters.objects import object_context, objects_context
from invocations.reads.presenters.stuck import stuck_context
from invocations.reads.presenters.sync_health import sync_line_context
from invocations.reads.presenters.workflows import UnknownWorkflow, workflow_context, workflow_known, workflows_context
from invocations.reads.selectors import attach as selectors_attach
from invocations.reads.selectors import delayed as selectors_delayed
from invocations.reads.selectors import detail as selectors_detail
from invocations.reads.selectors import invocations as selectors
from invocations.reads.selectors import jobs as selectors_jobs
from invocations.reads.selectors import objects as selectors_objects
from invocations.reads.selectors import workflows as selectors_workflows
from invocations.reads.selectors.sync_state import sync_state_get
from invocations.reads.shared import cached_once
from invocations.reads.workflow_filters import WorkflowFilterForm
from invocations.records.models import ItemState
from invocations.restate import INVOCATION_ID_RE

if TYPE_CHECKING:
    from invocations.mirror.models import SyncState

# Rows one list page may ask to follow: a page shows 50; more is not a page of ours.
MAX_SHOWN_ROWS = 200
# A shared render of /objects/ is kept this long (readers of one change ask at once).
OBJECTS_CACHE_S = 5


def oob(html: str, element_id: str) -> str:
    """Mark the element with `element_id` in `html` as an out-of-band swap."""
    marker = f'id="{element_id}"'
    if marker not in html:
        raise ValueError(f"fragment has no element with {marker}")
    return html.replace(marker, f'{marker} hx-swap-oob="outerHTML"', 1)


def sync_state(sync: SyncState | None = None) -> str:
    context = sync_line_context(sync, now=timezone.now())
    return oob(render_to_string("invocations/_sync_state.html", context), "sync-state")


@dataclass
class ListView:
    """What one connected list page shows: its filters, the newest row it rendered,
    whether it is the newest-first first page, and (once the page says) its rows."""

    filters: InvocationFilters
    since: datetime | None
    first_page: bool = True
    shown: frozenset[str] = frozenset()
    # Rows counted by the banner so far (at most NEW_COUNT_CAP + 1); None until counted.
    new_ids: set[str] | None = None
    # The connected user may act: rows are drawn with their action controls.
    can_operate: bool = False
    _banner_sent: int | None = field(default=None, repr=False)

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
            if since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
        return cls(InvocationFilters.from_form(form.cleaned_data), since, first_page=not data.get("paged"))

    @property
    def counts_new(self) -> bool:
        # "N new" means "reload to see them at the top": only true of the newest-first
        # first page. Elsewhere new rows land on another page or mid-list.
        return self.first_page and self.filters.sort == DEFAULT_SORT and self.since is not None

    def show(self, ids: list[str]) -> None:
        """The page told us which rows it shows (on every (re)connect)."""
        self.shown = frozenset(i for i in ids[:MAX_SHOWN_ROWS] if INVOCATION_ID_RE.match(i))

    def _count_new(self, changed: list[str] | None) -> None:
        if not self.counts_new:
            return
        assert self.since is not None
        if self.new_ids is None or changed is None:
            self.new_ids = selectors.invocation_new_ids(filters=self.filters, since=self.since)
        elif len(self.new_ids) <= selectors.NEW_COUNT_CAP:
            # Rows created since the last count were inserted by a step since then, so
            # they are among what the steps changed: count those, not the table.
            self.new_ids |= selectors.invocation_new_ids(filters=self.filters, since=self.since, among=changed)

    def _new_banner(self) -> str:
        """The banner, when its count differs from what the page shows."""
        count = len(self.new_ids or ())
        if count == self._banner_sent:
            return ""
        self._banner_sent = count
        context = {
            "count": min(count, selectors.NEW_COUNT_CAP),
            "capped": count > selectors.NEW_COUNT_CAP,
            "query": self.filters.query_string(),
        }
        return oob(render_to_string("invocations/_new_banner.html", context), "new-banner")

    def _rows(self, ids: list[str] | frozenset[str]) -> str:
        if not ids:
            return ""
        return "".join(
            render_to_string(
                "invocations/_row.html",
                {"inv": inv, "oob": True, "stale": not matches, "can_operate": self.can_operate},
            )
            for inv, matches in selectors.invocations_among(filters=self.filters, ids=list(ids))
        )

    def current_state(self, sync: SyncState | None = None) -> str:
        self._count_new(None)
        return self._new_banner() + sync_state(sync)

    def shown_rows(self) -> str:
        """The shown rows as they are now: what changed between the page's render and its subscription."""
        return self._rows(self.shown)

    def changes(self, ids: list[str], *, complete: bool = True) -> str:
        """What a sync step that changed `ids` means for this page.

        complete: False when the step changed more rows than `ids` names (a first load):
        every shown row is re-sent and the banner recounted.
        """
        self._count_new(ids if complete else None)
        touched = self.shown if not complete else self.shown.intersection(ids)
        return self._new_banner() + self._rows(touched)


def tree_root_of(invocation_id: str) -> str | None:
    if not INVOCATION_ID_RE.match(invocation_id):
        return None
    return selectors_detail.tree_root_get(invocation_id)


def tree_changed(invocation_id: str, at: datetime, *, status: str | None = None) -> str:
    """The signal that makes a detail page fetch its header and tree: a few hundred bytes
    whatever the tree's size. `at` (when the change was announced) tells the server
    which cached render is recent enough to answer. `status`, when the sync told it, is
    swapped into the header at once; the fetch brings the rest."""
    context = {"invocation_id": invocation_id, "at_ms": int(at.timestamp() * 1000), "status": status}
    return render_to_string("invocations/detail.html#changed", context)


def detail_connect_state(invocation_id: str, rendered: datetime | None) -> str:
    """On (re)connect: the sync indicator, and the change signal when a step committed
    after the page was rendered (its broadcast came before this socket listened)."""
    sync = sync_state_get()
    state = sync_state(sync)
    # A failed step may have committed part of its work too (and broadcast it).
    last_step = max(filter(None, [sync.last_success_at, sync.last_attempt_at]), default=None)
    if rendered is None or (last_step is not None and last_step >= rendered):
        state += tree_changed(invocation_id, timezone.now())
    return state


@dataclass
class AuditView:
    """What one connected audit page shows: its filter (first page only)."""

    query: dict[str, str]

    @classmethod
    def from_query(cls, query: dict[str, list[str]]) -> AuditView | None:
        flat = {name: values[-1] for name, values in query.items() if values}
        if not AuditFilterForm(flat).is_valid():
            return None
        return cls(query=flat)

    def rows(self) -> str:
        form = AuditFilterForm(self.query)
        form.is_valid()
        context = audit_context(filters=form.filters(), query=self.query, before_id=None)
        return oob(render_to_string("invocations/audit.html#rows", context), "audit-table")


def attach_panel(invocation_id: str) -> str:
    """The attach panel as it is now: pushed when the shared wait ends (every attached page)."""
    html = render_to_string("invocations/_attach.html", {"panel": attach_panel_for(invocation_id=invocation_id)})
    return oob(html, "inv-attach")


def attach_connect_state(invocation_id: str) -> str:
    """On (re)connect: the panel, when a wait exists (it may have ended before this socket listened)."""
    if not INVOCATION_ID_RE.match(invocation_id) or selectors_attach.attach_wait_get(invocation_id) is None:
        return ""
    return attach_panel(invocation_id)


# ---------------------------------------------------------------- bulk jobs


def job_progress(job_id: int, *, can_operate: bool = False, state: str = "", page: int = 1) -> str:
    """A job page as it is now: the progress block (bar, counts, state, stop button) and
    the page of per-invocation results it shows ("" for an unknown job)."""
    job = selectors_jobs.job_get(job_id=job_id)
    if job is None:
        return ""
    context = {
        "job": job,
        "can_operate": can_operate,
        "items": selectors_jobs.job_items(job_id=job.id, state=state, page=page),
        "state": state,
        "states": ItemState.choices,
    }
    return oob(render_to_string("invocations/job.html#progress", context), "job-progress") + oob(
        render_to_string("invocations/job.html#items", context), "job-items"
    )


def jobs_table() -> str:
    """The first page of the jobs' history (the only one that is live: newer jobs land on it)."""
    return oob(
        render_to_string("invocations/jobs.html#jobs_table", {"page": selectors_jobs.job_list(page=1)}), "jobs-table"
    )


# ---------------------------------------------------------------- deadlocks


def deadlocks_list(*, can_operate: bool = False) -> str:
    context = deadlocks_context(now=timezone.now()) | {"can_operate": can_operate}
    return oob(render_to_string("invocations/deadlocks.html#deadlocks_list", context), "deadlocks-list")


# ---------------------------------------------------------------- virtual objects


@dataclass
class ObjectsView:
    """What one connected /objects/ page shows: its service filter and page."""

    service: str
    page: int
    shown: frozenset[str] = frozenset()  # the lock holders on the page (their status is drawn)

    @classmethod
    def from_query(cls, query: dict[str, list[str]]) -> ObjectsView | None:
        form = ObjectFilterForm({name: values[-1] for name, values in query.items() if values})
        if not form.is_valid():
            return None
        return cls(service=form.cleaned_data["service"], page=form.page_number())

    def table(self, *, fresh_after: float | None = None) -> str:
        """The table as it is now; with `fresh_after` (epoch seconds, when a change was
        announced) a render started since then is shared with every reader of this
        filter and page in this process: ranking many keys is a query worth doing once."""

        def render() -> tuple[float, str, frozenset[str]]:
            started = time.time()
            context = objects_context(service=self.service, page=self.page)
            html = oob(render_to_string("invocations/objects.html#table", context), "objects-table")
            return started, html, frozenset(r.holder_id for r in context["rows"] if r.holder_id)

        if fresh_after is None:
            _, html, self.shown = render()
        else:
            key = "objects-table:" + hashlib.sha256(f"{self.service}\0{self.page}".encode()).hexdigest()[:32]
            _, html, self.shown = cached_once(
                key, usable=lambda entry: entry[0] >= fresh_after, compute=render, timeout_s=OBJECTS_CACHE_S
            )
        return html

    def changes(self, ids: list[str], *, complete: bool = True) -> str:
        """A sync step changed `ids`: redraw when a holder on the page changed (its status)."""
        if complete and not self.shown.intersection(ids):
            return ""
        return self.table(fresh_after=time.time())


@dataclass
class ObjectView:
    """What one connected key page shows: the key, and the invocations it draws."""

    service: str
    key: str
    shown: frozenset[str] = frozenset()

    @classmethod
    def from_query(cls, query: dict[str, list[str]]) -> ObjectView | None:
        # An empty key is a key: it must be present (parsed with keep_blank_values), but may be "".
        service, key = query.get("service", [""])[-1], query.get("key", [])
        if not service or not key or "\x00" in key[-1]:
            return None
        return cls(service=service, key=key[-1])

    def known(self) -> bool:
        return selectors_objects.service_type_get(self.service) in selectors_objects.KEYED_TYPES

    def parts(self, *, fresh_after: float | None = None) -> str:
        """The holder and queue, the recent invocations and the state. Raises UnknownObjectService.
        fresh_after: when the change was announced (readers of it share one read of the state)."""
        context = object_context(service=self.service, key=self.key, fresh_after=fresh_after)
        self.shown = frozenset(context["found"].shown_ids)
        return "".join(
            oob(render_to_string(f"invocations/object.html#{part}", context), f"object-{part}")
            for part in ("queue", "recent", "state")
        )

    def changes(self, ids: list[str], *, complete: bool = True) -> str:
        """A sync step changed `ids`: redraw when one is drawn here or is an invocation of this key."""
        if complete and not (
            self.shown.intersection(ids)
            or selectors_objects.invocations_of_key(service=self.service, key=self.key, among=ids)
        ):
            return ""
        return self.parts(fresh_after=time.time())


# ---------------------------------------------------------------- /stuck/

# Every /stuck/ page of a process is told of a change at the same moment: one render
# (grouping every unfinished invocation) serves all of them.
STUCK_CACHE_S = 5


def stuck_groups(*, fresh_after: float) -> str:
    """The groups of /stuck/ as an out-of-band swap, from a render that started at or after
    `fresh_after` (epoch seconds): a cached one when it is that recent, else a new one."""

    def render() -> tuple[float, str]:
        started = time.time()  # before any read: the render sees every commit announced until now
        html = render_to_string("invocations/stuck.html#groups", stuck_context() | {"oob": True})
        return started, html

    return cached_once(
        "live-stuck", usable=lambda entry: entry[0] >= fresh_after, compute=render, timeout_s=STUCK_CACHE_S
    )[1]


# ---------------------------------------------------------------- workflows

# A shared render of /workflows/ is kept this long (readers of one change ask at once).
WORKFLOWS_CACHE_S = 5


@dataclass
class WorkflowsView:
    """What one connected /workflows/ page shows: its service and status filter and page."""

    service: str
    status: str
    before: selectors.Cursor | None
    shown: frozenset[str] = frozenset()  # the runs on the page

    @classmethod
    def from_query(cls, query: dict[str, list[str]]) -> WorkflowsView | None:
        form = WorkflowFilterForm({name: values[-1] for name, values in query.items() if values})
        if not form.is_valid():
            return None
        return cls(
            service=form.cleaned_data["service"], status=form.cleaned_data["status"], before=form.cleaned_data["before"]
        )

    def table(self, *, fresh_after: float | None = None) -> str:
        """The chips and runs as they are now; with `fresh_after` (epoch seconds, when the
        change was announced) one render started since then serves every reader of this
        filter and page in this process."""

        def render() -> tuple[float, str, frozenset[str]]:
            started = time.time()
            context = workflows_context(service=self.service, status=self.status, before=self.before)
            html = oob(render_to_string("invocations/workflows.html#table", context), "workflows-table")
            return started, html, frozenset(r.inv.id for r in context["rows"])

        if fresh_after is None:
            _, html, self.shown = render()
        else:
            page = f"{self.service}\0{self.status}\0{self.before.encode() if self.before else ''}"
            key = "workflows-table:" + hashlib.sha256(page.encode()).hexdigest()[:32]
            _, html, self.shown = cached_once(
                key, usable=lambda entry: entry[0] >= fresh_after, compute=render, timeout_s=WORKFLOWS_CACHE_S
            )
        return html

    def changes(self, ids: list[str], *, complete: bool = True) -> str:
        """A sync step changed `ids`: redraw when one is a run on the page, or a run at all
        on the newest page (a new run comes in at its top; an older page has no room for it)."""
        if complete and not (
            self.shown.intersection(ids) or (self.before is None and selectors_workflows.workflow_runs_among(ids=ids))
        ):
            return ""
        return self.table(fresh_after=time.time())


WORKFLOW_PARTS = ("run", "promises", "interactions")


@dataclass
class WorkflowView:
    """What one connected workflow page shows: the workflow id, and the invocations it draws."""

    service: str
    workflow_id: str
    shown: frozenset[str] = frozenset()
    run_id: str | None = None

    @classmethod
    def from_query(cls, query: dict[str, list[str]]) -> WorkflowView | None:
        # An empty id is an id: it must be present (parsed with keep_blank_values), but may be "".
        service, workflow_id = query.get("service", [""])[-1], query.get("id", [])
        if not service or not workflow_id or "\x00" in workflow_id[-1]:
            return None
        return cls(service=service, workflow_id=workflow_id[-1])

    def known(self) -> bool:
        return workflow_known(service=self.service, workflow_id=self.workflow_id)

    def parts(self, *, fresh_after: float | None = None) -> str:
        """The run (with its attach panel), the promises, the interactions and the state;
        "" when the workflow is unknown. fresh_after: when the change was announced
        (readers of it share one read of Restate's state)."""
        try:
            context = workflow_context(service=self.service, workflow_id=self.workflow_id, fresh_after=fresh_after)
        except UnknownWorkflow:
            return ""
        found = context["found"]
        self.shown = frozenset(found.shown_ids)
        self.run_id = found.run.id if found.run is not None else None
        html = "".join(
            oob(render_to_string(f"invocations/workflow.html#{part}", context), f"workflow-{part}")
            for part in WORKFLOW_PARTS
        )
        return html + oob(render_to_string("invocations/object.html#state", context), "object-state")

    def relevant(self, ids: list[str], *, complete: bool = True) -> bool:
        """A sync step changed `ids`: whether one is drawn here or is an invocation on this id."""
        return not complete or bool(
            self.shown.intersection(ids)
            or selectors_workflows.workflow_invocations_among(
                service=self.service, workflow_id=self.workflow_id, among=ids
            )
        )


# ---------------------------------------------------------------- /delayed/

# Every /delayed/ page of a process with one filter, range and page is told of a change at
# the same moment: one render serves all of them.
DELAYED_CACHE_S = 5


@dataclass
class DelayedView:
    """What one connected /delayed/ page shows: its filter, chart range and page, and
    (after each render) the messages it lists."""

    filters: DelayedFilters
    can_operate: bool = False
    shown: frozenset[str] = frozenset()

    @classmethod
    def from_query(cls, query: dict[str, list[str]]) -> DelayedView | None:
        form = DelayedFilterForm({name: values[-1] for name, values in query.items() if values})
        if not form.is_valid():
            return None
        return cls(filters=DelayedFilters.from_form(form.cleaned_data))

    def parts(self, *, fresh_after: float | None = None) -> str:
        """The chart and the table as they are now, as out-of-band swaps. With `fresh_after`
        (epoch seconds, when a change was announced) a render started since then is shared
        by every reader of this filter, range and page in this process."""

        def render() -> tuple[float, str, frozenset[str]]:
            started = time.time()  # before any read: the render sees every commit announced until now
            context = delayed_context(filters=self.filters) | {"oob": True, "can_operate": self.can_operate}
            html = render_to_string("invocations/delayed.html#chart", context) + render_to_string(
                "invocations/delayed.html#table", context
            )
            return started, html, frozenset(r.id for r in context["rows"])

        if fresh_after is None:
            _, html, self.shown = render()
        else:
            query = self.filters.query_string(after=self.filters.after.encode() if self.filters.after else None)
            key = "delayed:" + hashlib.sha256(f"{query}\0{self.can_operate}".encode()).hexdigest()[:32]
            _, html, self.shown = cached_once(
                key, usable=lambda entry: entry[0] >= fresh_after, compute=render, timeout_s=DELAYED_CACHE_S
            )
        return html

    def concerned(self, ids: list[str], *, complete: bool = True) -> bool:
        """Whether a sync step that changed `ids` can change this page: a message it lists
        changed (it fired, or was cancelled), or one of them is or was a delayed message
        (a new one, one that fired or left on another page, which moves the chart)."""
        if not complete or self.shown.intersection(ids):
            return True
        return selectors_delayed.delayed_ids_among(ids)
