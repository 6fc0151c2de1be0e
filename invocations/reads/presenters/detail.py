"""Everything the detail page and its partials (`header`, `attempts`, `tree`, `journal`) need,
built once, so a live update re-renders a partial with the same context the page used."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from typing import Any

from django.template.loader import render_to_string
from django.utils import timezone

from invocations.reads.presenters.attempts import attempts_view, legend
from invocations.reads.presenters.deadlocks import deadlock_banners
from invocations.reads.presenters.invocation import SERVICE_TYPE_LABELS, idempotency_origin
from invocations.reads.presenters.journal import journal_row
from invocations.reads.presenters.objects import queue_facts
from invocations.reads.presenters.payloads import input_payload, output_result
from invocations.reads.presenters.stuck import invocation_stuck
from invocations.reads.presenters.waterfall import Expansion, tree_view
from invocations.reads.selectors import detail as selectors_detail
from invocations.reads.shared import cached_once


def detail_context(
    invocation_id: str, *, expansions: Iterable[Expansion] = (), journal_rows: bool = True
) -> dict[str, Any]:
    """Everything the page and each partial need. Raises InvocationNotFound.

    expansions: "show more" rows the reader opened, drawn opened (a live refresh keeps them).
    journal_rows: False when only the header, the attempts and the tree are rendered (a live refresh).
    """
    now = timezone.now()
    inv = selectors_detail.invocation_get(invocation_id)
    journal = selectors_detail.journal_get(inv.id)
    by_type = {e.entry_type: e for e in reversed(journal.entries)}
    input_entry = by_type.get("Command: Input") or (
        selectors_detail.journal_entry_get(inv.id, "Command: Input") if journal.truncated else None
    )
    output_entry = by_type.get("Command: Output") or (
        selectors_detail.journal_entry_get(inv.id, "Command: Output") if journal.truncated else None
    )
    return {
        "inv": inv,
        "now": now,
        # The page's socket asks for a refresh when a sync step committed after this.
        "rendered_ms": int(now.timestamp() * 1000),
        "deployment": selectors_detail.deployment_get(inv.pinned_deployment_id),
        "service_type_label": SERVICE_TYPE_LABELS.get(inv.service_type, inv.service_type),
        "idempotency_origin": idempotency_origin(inv),
        "parent": selectors_detail.invocation_brief_get(inv.parent_id),
        "input": input_payload(input_entry),
        "output": output_result(output_entry),
        "journal": journal,
        "journal_rows": [journal_row(e) for e in journal.entries] if journal_rows else [],
        "attempts": attempts_view(inv, now=now),
        "attempt_legend": legend(),
        "tree": tree_view(inv, now, expansions),
        "deadlock_banners": deadlock_banners(invocation_id=inv.id, root_id=inv.root_id),
        **queue_facts(inv),
        "stuck": invocation_stuck(inv),  # "Why is this stuck?" (None once completed)
    }


# Every reader of a tree is told of a change at the same moment and asks at once:
# they wait for one render (per process) instead of each rendering the tree.
LIVE_CACHE_S = 5


def detail_live_html(
    invocation_id: str, *, expansions: list[Expansion], fresh_after: float, can_operate: bool = False
) -> str:
    """The header, the attempts and the tree as out-of-band swaps, from a render that started at or
    after `fresh_after` (epoch seconds): a cached one when it is that recent, else a new
    one, made once for concurrent readers. Raises InvocationNotFound.

    can_operate: draw the action controls; operators and viewers share separate renders,
    so a viewer's copy never carries a control."""
    opened = ",".join(sorted(e.key for e in expansions))
    role = "op" if can_operate else "view"
    key = f"live-detail:{role}:{invocation_id}:{hashlib.sha1(opened.encode()).hexdigest()}"

    def render() -> tuple[float, str]:
        started = time.time()  # before any read: this render sees every commit announced until now
        context = detail_context(invocation_id, expansions=expansions, journal_rows=False) | {
            "oob": True,
            "can_operate": can_operate,
        }
        # Attempts too: the change that announced a new attempt's span redraws its bar.
        html = "".join(
            render_to_string(f"invocations/detail.html#{name}", context) for name in ("header", "attempts", "tree")
        )
        return started, html

    return cached_once(key, usable=lambda entry: entry[0] >= fresh_after, compute=render, timeout_s=LIVE_CACHE_S)[1]
