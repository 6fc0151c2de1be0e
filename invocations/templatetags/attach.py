"""`{% attach_panel inv %}`: the detail page's attach panel, without the detail view
having to know about attach."""

from __future__ import annotations

from typing import Any

from django import template

from invocations.mirror.models import Invocation
from invocations.reads.presenters.attach import attach_panel_for

register = template.Library()


@register.inclusion_tag("invocations/_attach.html", takes_context=True)
def attach_panel(context: template.Context, inv: Invocation) -> dict[str, Any]:
    # The panel's form needs the page's CSRF token; an inclusion tag starts a new context.
    return {"panel": attach_panel_for(invocation_id=inv.id, inv=inv), "csrf_token": context.get("csrf_token")}
