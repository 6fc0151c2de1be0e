"""Restate invocation ids: what one looks like, checked before any request or query."""

from __future__ import annotations

import re

from invocations.restate.errors import InvalidInvocationId

INVOCATION_ID_RE = re.compile(r"^inv_[0-9A-Za-z]{10,80}$")


def validate_invocation_id(invocation_id: str) -> str:
    if not isinstance(invocation_id, str) or not INVOCATION_ID_RE.match(invocation_id):
        raise InvalidInvocationId(
            f"{invocation_id!r} is not a Restate invocation id (expected inv_ followed by letters and digits)"
        )
    return invocation_id
