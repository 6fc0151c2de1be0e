"""Typed errors for everything that can go wrong talking to Restate, so callers
can tell "Restate is down, retry later" from "our SQL is wrong" from "bad id"."""

from __future__ import annotations


class RestateError(Exception):
    """Anything that went wrong talking to Restate."""


class RestateUnavailable(RestateError):
    """Restate could not be reached or answered 503; worth retrying later."""


class RestateTimeout(RestateUnavailable):
    """Restate did not answer within the client's timeout."""


class QuerySyntaxError(RestateError):
    """400 from /query: the SQL did not parse. A bug on our side, not Restate's."""


class QueryError(RestateError):
    """500 from /query: e.g. unknown table or column (a Restate version we do not know)."""


class InvalidInvocationId(RestateError, ValueError):
    """A string that cannot be a Restate invocation id; rejected before any request."""
