"""What the attach panel reads: the shared wait, and the invocation it waits on."""

from __future__ import annotations

from invocations.mirror.models import Invocation
from invocations.records.models import AttachWait


def attach_wait_get(invocation_id: str) -> AttachWait | None:
    return AttachWait.objects.filter(pk=invocation_id).first()


def attach_invocation_get(invocation_id: str) -> Invocation | None:
    """The invocation from our copy (None when the sync has not seen it, or never will)."""
    return Invocation.objects.filter(pk=invocation_id).first()
