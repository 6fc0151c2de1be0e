"""Websocket consumers: join the groups `events` names, accept, then send the
current state, so a (re)connecting page misses nothing between its last render
and the subscription. What to render lives in `fragments`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from django.utils import timezone

from invocations import events
from invocations.live import fragments
from invocations.live.auth import CloseAtLogoutMixin
from invocations.operations.roles import user_can_operate
from invocations.records.models import ItemState


class _PageConsumer(CloseAtLogoutMixin):
    groups_joined: list[str]

    async def _join(self, groups: list[str]) -> None:
        self.groups_joined = groups
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def sync_changed(self, event: dict[str, Any]) -> None:
        await self.send(text_data=await database_sync_to_async(fragments.sync_state)())

    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.scope.get("query_string", b"").decode())


class InvocationListConsumer(_PageConsumer):
    """The list page: status changes of the rows it shows, in place, and a count of
    new invocations instead of rows reshuffling under the reader's cursor.

    After connecting, the page sends `{"rows": [ids]}`: the rows it shows, the only
    ones it is sent (a row it does not have would be a swap with no target)."""

    view: fragments.ListView

    async def connect(self) -> None:
        if not self.scope["user"].is_authenticated:
            await self.close(code=4401)
            return
        view = fragments.ListView.from_query(self.query())
        if view is None:
            await self.close(code=4400)
            return
        view.can_operate = await database_sync_to_async(user_can_operate)(self.scope["user"])
        self.view = view
        await self._join([events.LIST_GROUP, events.SYNC_GROUP])
        await self.accept()
        await self.send(text_data=await database_sync_to_async(self.view.current_state)())

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            message = json.loads(text_data or "")
        except ValueError:
            return
        rows = message.get("rows") if isinstance(message, dict) else None
        if not isinstance(rows, list):
            return
        self.view.show([r for r in rows if isinstance(r, str)])
        html = await database_sync_to_async(self.view.shown_rows)()
        if html:
            await self.send(text_data=html)

    async def invocations_changed(self, event: dict[str, Any]) -> None:
        ids = event.get("ids") or []
        complete = event.get("count", len(ids)) <= len(ids)
        html = await database_sync_to_async(self.view.changes)(ids, complete=complete)
        if html:
            await self.send(text_data=html)


class InvocationDetailConsumer(_PageConsumer):
    """The detail page: told (in a few hundred bytes) when its tree changed; the page
    fetches the header and tree over HTTP, where readers of one tree share a render."""

    async def connect(self) -> None:
        if not self.scope["user"].is_authenticated:
            await self.close(code=4401)
            return
        self.invocation_id = self.scope["url_route"]["kwargs"]["invocation_id"]
        root = await database_sync_to_async(fragments.tree_root_of)(self.invocation_id)
        if root is None:
            await self.close(code=4404)
            return
        rendered = None
        raw = self.query().get("rendered", [""])[0]
        if raw.isdigit() and len(raw) <= 15:
            rendered = datetime.fromtimestamp(int(raw) / 1000, UTC)
        await self._join(
            [
                events.tree_group(root),
                events.ALL_TREES_GROUP,
                events.SYNC_GROUP,
                events.attach_group(self.invocation_id),
            ]
        )
        await self.accept()
        html = await database_sync_to_async(fragments.detail_connect_state)(self.invocation_id, rendered)
        html += await database_sync_to_async(fragments.attach_connect_state)(self.invocation_id)
        await self.send(text_data=html)

    async def tree_changed(self, event: dict[str, Any]) -> None:
        # No database here: the signal is the same for every reader of the tree, and the new
        # status, when the sync told it, is shown before the fetch it asks for returns.
        status = (event.get("statuses") or {}).get(self.invocation_id)
        await self.send(text_data=fragments.tree_changed(self.invocation_id, timezone.now(), status=status))

    async def attach_finished(self, event: dict[str, Any]) -> None:
        # The shared wait for this invocation's result ended: show it without a reload.
        await self.send(text_data=await database_sync_to_async(fragments.attach_panel)(self.invocation_id))


class AuditLogConsumer(_PageConsumer):
    """The audit page's first page: a new entry appears at its top, within its filter."""

    view: fragments.AuditView

    async def connect(self) -> None:
        if not self.scope["user"].is_authenticated:
            await self.close(code=4401)
            return
        view = fragments.AuditView.from_query(self.query())
        if view is None:
            await self.close(code=4400)
            return
        self.view = view
        await self._join([events.AUDIT_GROUP, events.SYNC_GROUP])
        await self.accept()
        await self.send(text_data=await database_sync_to_async(self.view.rows)())

    async def audit_appended(self, event: dict[str, Any]) -> None:
        await self.send(text_data=await database_sync_to_async(self.view.rows)())


class JobConsumer(_PageConsumer):
    """A bulk job's page: its progress block, re-rendered after each batch commits."""

    async def connect(self) -> None:
        if not self.scope["user"].is_authenticated:
            await self.close(code=4401)
            return
        self.job_id = int(self.scope["url_route"]["kwargs"]["job_id"])
        query = self.query()
        state = query.get("state", [""])[-1]
        raw_page = query.get("page", ["1"])[-1]
        if (state and state not in ItemState.values) or not raw_page.isdigit() or len(raw_page) > 9:
            await self.close(code=4400)
            return
        user = self.scope["user"]
        self.view = {
            "state": state,
            "page": int(raw_page),
            "can_operate": await database_sync_to_async(user_can_operate)(user),
        }
        html = await self._render()
        if not html:
            await self.close(code=4404)
            return
        await self._join([events.job_group(self.job_id), events.SYNC_GROUP])
        await self.accept()
        # Again after joining: a batch that committed in between is not lost.
        await self.send(text_data=await self._render())

    async def _render(self) -> str:
        return await database_sync_to_async(fragments.job_progress)(self.job_id, **self.view)

    async def job_progressed(self, event: dict[str, Any]) -> None:
        await self.send(text_data=await self._render())


class JobsConsumer(_PageConsumer):
    """The jobs' history: its first page, re-rendered when any job moves."""

    async def connect(self) -> None:
        if not self.scope["user"].is_authenticated:
            await self.close(code=4401)
            return
        await self._join([events.JOBS_GROUP, events.SYNC_GROUP])
        await self.accept()
        await self.send(text_data=await database_sync_to_async(fragments.jobs_table)())

    async def job_progressed(self, event: dict[str, Any]) -> None:
        await self.send(text_data=await database_sync_to_async(fragments.jobs_table)())


class DeadlocksConsumer(_PageConsumer):
    """/deadlocks/: the list of cycles, re-rendered when one is found or breaks."""

    async def connect(self) -> None:
        if not self.scope["user"].is_authenticated:
            await self.close(code=4401)
            return
        self.can_operate = await database_sync_to_async(user_can_operate)(self.scope["user"])
        await self._join([events.DEADLOCKS_GROUP, events.SYNC_GROUP])
        await self.accept()
        await self.send(text_data=await self._render())

    async def _render(self) -> str:
        return await database_sync_to_async(fragments.deadlocks_list)(can_operate=self.can_operate)

    async def deadlocks_changed(self, event: dict[str, Any]) -> None:
        await self.send(text_data=await self._render())


def _announced(event: dict[str, Any]) -> float:
    """When a queue change was sent (after its commit): a render started since then is
    fresh for every reader. Never later than now, whatever the message says. It is the
    sync process's clock: hosts that disagree by a second could share a render a second
    older than the change (they share time through NTP)."""
    at = event.get("at")
    return min(float(at), time.time()) if isinstance(at, int | float) else time.time()


class ObjectsConsumer(_PageConsumer):
    """/objects/: the table of busy keys, redrawn when queues or locks change, or when a
    holder it shows changes status."""

    view: fragments.ObjectsView

    async def connect(self) -> None:
        if not self.scope["user"].is_authenticated:
            await self.close(code=4401)
            return
        view = await database_sync_to_async(fragments.ObjectsView.from_query)(self.query())
        if view is None:
            await self.close(code=4400)
            return
        self.view = view
        await self._join([events.OBJECTS_GROUP, events.LIST_GROUP, events.SYNC_GROUP])
        await self.accept()
        await self.send(text_data=await database_sync_to_async(self.view.table)())

    async def objects_changed(self, event: dict[str, Any]) -> None:
        await self.send(text_data=await database_sync_to_async(self.view.table)(fresh_after=_announced(event)))

    async def invocations_changed(self, event: dict[str, Any]) -> None:
        ids = event.get("ids") or []
        html = await database_sync_to_async(self.view.changes)(ids, complete=event.get("count", len(ids)) <= len(ids))
        if html:
            await self.send(text_data=html)


class ObjectConsumer(_PageConsumer):
    """One key's page (`?service=&key=`: a key is any string, so not a path segment here):
    holder, queue, recent invocations and state, redrawn when the key's queue or lock
    changes or a step changed an invocation the page draws or of this key."""

    view: fragments.ObjectView

    async def connect(self) -> None:
        if not self.scope["user"].is_authenticated:
            await self.close(code=4401)
            return
        # keep_blank_values: "key=" is the empty key, not a missing one.
        view = fragments.ObjectView.from_query(
            parse_qs(self.scope.get("query_string", b"").decode(), keep_blank_values=True)
        )
        if view is None:
            await self.close(code=4400)
            return
        self.view = view
        if not await database_sync_to_async(view.known)():
            await self.close(code=4404)
            return
        await self._join([events.object_group(view.service, view.key), events.LIST_GROUP, events.SYNC_GROUP])
        await self.accept()
        await self.send(text_data=await database_sync_to_async(self.view.parts)())

    async def object_changed(self, event: dict[str, Any]) -> None:
        await self.send(text_data=await database_sync_to_async(self.view.parts)(fresh_after=_announced(event)))

    async def invocations_changed(self, event: dict[str, Any]) -> None:
        ids = event.get("ids") or []
        html = await database_sync_to_async(self.view.changes)(ids, complete=event.get("count", len(ids)) <= len(ids))
        if html:
            await self.send(text_data=html)


class _CoalescedPage(_PageConsumer):
    """A page whose render is costly (a grouping over many rows): a burst of changes is one
    render. The first change waits out the spacing since the last render (RENDER_SPACING_S,
    or twice what the last render cost), the changes arriving meanwhile are covered by it,
    and one that arrives during a render (whose reads may have missed it) brings one more.
    Subclasses define `_html(fresh_after)`: what to send."""

    RENDER_SPACING_S = 0.5
    _pending: asyncio.Task[None] | None = None
    _last_render = 0.0
    _last_cost = 0.0
    _announced = 0.0  # when the latest change was told (epoch seconds)

    _html: Callable[[float], Awaitable[str]]

    async def disconnect(self, code: int) -> None:
        if self._pending is not None:
            self._pending.cancel()
        await super().disconnect(code)

    async def _render(self, fresh_after: float) -> None:
        self._last_render = time.monotonic()
        html = await self._html(fresh_after)
        self._last_cost = time.monotonic() - self._last_render
        await self.send(text_data=html)

    async def _render_soon(self) -> None:
        while True:
            spacing = max(self.RENDER_SPACING_S, 2 * self._last_cost)
            await asyncio.sleep(max(0.0, self._last_render + spacing - time.monotonic()))
            covered = self._announced
            await self._render(covered)
            if self._announced <= covered:
                return

    async def _changed(self) -> None:
        self._announced = time.time()
        if self._pending is None or self._pending.done():
            self._pending = asyncio.ensure_future(self._render_soon())


class StuckConsumer(_CoalescedPage):
    """/stuck/: its groups, re-rendered when waits change (queues, locks, deadlocks: the
    stuck group) or invocations change status (the list group), a burst at a time
    (grouping 100k unfinished invocations takes a few hundred ms)."""

    async def connect(self) -> None:
        if not self.scope["user"].is_authenticated:
            await self.close(code=4401)
            return
        await self._join([events.STUCK_GROUP, events.LIST_GROUP, events.SYNC_GROUP])
        await self.accept()
        # After joining: a change committed between the page's render and now is not lost.
        await self._render(time.time())

    async def _html(self, fresh_after: float) -> str:
        return await database_sync_to_async(fragments.stuck_groups)(fresh_after=fresh_after)

    async def stuck_changed(self, event: dict[str, Any]) -> None:
        await self._changed()

    async def invocations_changed(self, event: dict[str, Any]) -> None:
        await self._changed()


class WorkflowsConsumer(_PageConsumer):
    """/workflows/: the status chips and the runs, redrawn when a run on the page changes,
    or (on the newest page) when any workflow run does."""

    view: fragments.WorkflowsView

    async def connect(self) -> None:
        if not self.scope["user"].is_authenticated:
            await self.close(code=4401)
            return
        view = await database_sync_to_async(fragments.WorkflowsView.from_query)(self.query())
        if view is None:
            await self.close(code=4400)
            return
        self.view = view
        await self._join([events.LIST_GROUP, events.SYNC_GROUP])
        await self.accept()
        # After joining: a change committed between the page's render and now is not lost.
        await self.send(text_data=await database_sync_to_async(self.view.table)())

    async def invocations_changed(self, event: dict[str, Any]) -> None:
        ids = event.get("ids") or []
        html = await database_sync_to_async(self.view.changes)(ids, complete=event.get("count", len(ids)) <= len(ids))
        if html:
            await self.send(text_data=html)


class WorkflowConsumer(_PageConsumer):
    """One workflow id's page (`?service=&id=`: an id is any string, so not a path segment
    here): its run, promises, interactions and state, redrawn when its promises change
    (`events.promises_changed`), when a step changed an invocation on this id, and its
    attach panel when the shared wait for the run's result ends."""

    view: fragments.WorkflowView

    async def connect(self) -> None:
        if not self.scope["user"].is_authenticated:
            await self.close(code=4401)
            return
        # keep_blank_values: "id=" is the empty id, not a missing one.
        view = fragments.WorkflowView.from_query(
            parse_qs(self.scope.get("query_string", b"").decode(), keep_blank_values=True)
        )
        if view is None:
            await self.close(code=4400)
            return
        self.view = view
        if not await database_sync_to_async(view.known)():
            await self.close(code=4404)
            return
        await self._join(
            [
                events.workflow_group(view.service, view.workflow_id),
                events.ALL_WORKFLOWS_GROUP,
                events.LIST_GROUP,
                events.SYNC_GROUP,
            ]
        )
        await self.accept()
        # After joining: a change committed between the page's render and now is not lost.
        await self._send_parts()

    async def _send_parts(self, fresh_after: float | None = None) -> None:
        run_before = self.view.run_id
        html = await database_sync_to_async(self.view.parts)(fresh_after=fresh_after)
        if html:
            await self.send(text_data=html)
        if self.view.run_id and self.view.run_id != run_before:
            # A run to follow (at connect, or one that started since): its attach panel follows
            # the shared wait for its result; sent again once joined, in case the wait ended between.
            group = events.attach_group(self.view.run_id)
            self.groups_joined.append(group)
            await self.channel_layer.group_add(group, self.channel_name)
            await self.send(text_data=await database_sync_to_async(fragments.attach_panel)(self.view.run_id))

    async def workflow_changed(self, event: dict[str, Any]) -> None:
        await self._send_parts(fresh_after=_announced(event))

    async def invocations_changed(self, event: dict[str, Any]) -> None:
        ids = event.get("ids") or []
        complete = event.get("count", len(ids)) <= len(ids)
        relevant = await database_sync_to_async(self.view.relevant)(ids, complete=complete)
        if relevant:
            await self._send_parts(fresh_after=time.time())

    async def attach_finished(self, event: dict[str, Any]) -> None:
        if self.view.run_id:
            await self.send(text_data=await database_sync_to_async(fragments.attach_panel)(self.view.run_id))


class DelayedConsumer(_CoalescedPage):
    """/delayed/ (`?` the page's own filter, range and page): the chart and the list,
    redrawn when a sync step changed a message it lists or any delayed message (a new
    one, one that fired or was cancelled), a burst at a time. The chart's buckets are
    aligned on the clock, so the page is also redrawn when its first bucket has passed,
    change or not."""

    view: fragments.DelayedView
    _tick: asyncio.TimerHandle | None = None

    async def connect(self) -> None:
        if not self.scope["user"].is_authenticated:
            await self.close(code=4401)
            return
        view = fragments.DelayedView.from_query(self.query())
        if view is None:
            await self.close(code=4400)
            return
        view.can_operate = await database_sync_to_async(user_can_operate)(self.scope["user"])
        self.view = view
        await self._join([events.LIST_GROUP, events.SYNC_GROUP])
        await self.accept()
        # After joining: a change committed between the page's render and now is not lost.
        await self._render(time.time())

    async def disconnect(self, code: int) -> None:
        if self._tick is not None:
            self._tick.cancel()
        await super().disconnect(code)

    async def _html(self, fresh_after: float) -> str:
        html: str = await database_sync_to_async(self.view.parts)(fresh_after=fresh_after)
        self._next_bucket()
        return html

    def _next_bucket(self) -> None:
        """Redraw once the chart's first bucket is over (its bars start from the current one)."""
        bucket = self.view.filters.chart_range.bucket.total_seconds()
        wait = bucket - time.time() % bucket + 0.5
        if self._tick is not None:
            self._tick.cancel()
        self._tick = asyncio.get_running_loop().call_later(wait, lambda: asyncio.ensure_future(self._changed()))

    async def invocations_changed(self, event: dict[str, Any]) -> None:
        ids = event.get("ids") or []
        complete = event.get("count", len(ids)) <= len(ids)
        if await database_sync_to_async(self.view.concerned)(ids, complete=complete):
            await self._changed()
