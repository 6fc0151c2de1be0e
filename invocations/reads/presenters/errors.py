"""Error texts as shown to people who may not be told where things run."""

from __future__ import annotations

import re

# URLs, bracketed IPv6 and host:port pairs: the sync's errors name Restate's admin
# address ("cannot reach Restate at http://10.0.0.5:9070: ..."), which only staff need.
ADDRESS_RE = re.compile(
    r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]*[^\s'\"<>.,;:)\]]"  # a URL, without the punctuation after it
    r"|\[[0-9a-f.]*:[0-9a-f:.]*\](?::\d+)?"  # [IPv6]:port, not "[409]"
    r"|\b(?=[a-z0-9.-]*[a-z.])[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?:\d{2,5}\b",  # host:port, not "12:30"
    re.IGNORECASE,
)
HIDDEN = "[address hidden]"


def redact_addresses(text: str) -> str:
    return ADDRESS_RE.sub(HIDDEN, text)


def error_for(text: str, *, staff: bool) -> str:
    """The whole text for staff; others learn what failed, not where."""
    return text if staff else redact_addresses(text)
