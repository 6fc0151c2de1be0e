"""Websocket consumers: join the groups `events` names, accept, then send the
current state, so a (re)connecting page misses nothing between its last render
and the subscription. What to render lives in `fragments`."""

from __future__ import annotations

import asyncio
import json
import time
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
        # No database here: the signal is the same for every reader of the tree.
        await self.send(text_data=fragments.tree_changed(self.invocation_id, timezone.now()))

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


class StuckConsumer(_PageConsumer):
    """/stuck/: its groups, re-rendered when waits change (queues, locks, deadlocks: the
    stuck group) or invocations change status (the list group). A burst of changes is one
    render: the first change waits out the spacing since the last render (RENDER_SPACING_S,
    or twice what the last render cost: grouping 100k unfinished invocations takes a few
    hundred ms), and the changes arriving meanwhile are covered by it; one that arrives
    during a render (whose reads may have missed it) brings one more."""

    RENDER_SPACING_S = 0.5
    _pending: asyncio.Task[None] | None = None
    _last_render = 0.0
    _last_cost = 0.0
    _announced = 0.0  # when the latest change was told (epoch seconds)

    async def connect(self) -> None:
        if not self.scope["user"].is_authenticated:
            await self.close(code=4401)
            return
        await self._join([events.STUCK_GROUP, events.LIST_GROUP, events.SYNC_GROUP])
        await self.accept()
        # After joining: a change committed between the page's render and now is not lost.
        await self._render(time.time())

    async def disconnect(self, code: int) -> None:
        if self._pending is not None:
            self._pending.cancel()
        await super().disconnect(code)

    async def _render(self, fresh_after: float) -> None:
        self._last_render = time.monotonic()
        html = await database_sync_to_async(fragments.stuck_groups)(fresh_after=fresh_after)
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

    async def stuck_changed(self, event: dict[str, Any]) -> None:
        await self._changed()

    async def invocations_changed(self, event: dict[str, Any]) -> None:
        await self._changed()


class DelayedConsumer(_PageConsumer):
    """/delayed/ (`?` the page's own filter, range and page): the chart and the list,
    redrawn when a sync step changed a message it lists or any delayed message (a new
    one, one that fired or was cancelled). Renders are coalesced as on /stuck/: the first
    change waits out the spacing since the last render (RENDER_SPACING_S, or twice what
    the last one cost), changes meanwhile are covered by it, and one arriving during a
    render brings one more. The chart's buckets are aligned on the clock, so the page is
    also redrawn when its first bucket has passed, change or not."""

    RENDER_SPACING_S = 0.5
    view: fragments.DelayedView
    _pending: asyncio.Task[None] | None = None
    _tick: asyncio.TimerHandle | None = None
    _last_render = 0.0
    _last_cost = 0.0
    _announced = 0.0

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
        if self._pending is not None:
            self._pending.cancel()
        if self._tick is not None:
            self._tick.cancel()
        await super().disconnect(code)

    async def _render(self, fresh_after: float) -> None:
        self._last_render = time.monotonic()
        html = await database_sync_to_async(self.view.parts)(fresh_after=fresh_after)
        self._last_cost = time.monotonic() - self._last_render
        await self.send(text_data=html)
        self._next_bucket()

    def _next_bucket(self) -> None:
        """Redraw once the chart's first bucket is over (its bars start from the current one)."""
        bucket = self.view.filters.chart_range.bucket.total_seconds()
        wait = bucket - time.time() % bucket + 0.5
        if self._tick is not None:
            self._tick.cancel()
        self._tick = asyncio.get_running_loop().call_later(wait, lambda: asyncio.ensure_future(self._changed()))

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

    async def invocations_changed(self, event: dict[str, Any]) -> None:
        ids = event.get("ids") or []
        complete = event.get("count", len(ids)) <= len(ids)
        if await database_sync_to_async(self.view.concerned)(ids, complete=complete):
            await self._changed()
