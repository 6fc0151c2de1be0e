"""The Restate layer: the only code that speaks HTTP to Restate (`client`), the one
SQL quoting function (`sql`), invocation ids (`ids`) and typed errors (`errors`).
Everything above imports from here; this package imports nothing of ours."""

from invocations.restate.client import (
    OPERATIONS,
    InvocationResult,
    OperationResult,
    Outcome,
    RestateClient,
    ResultState,
    client_from_settings,
)
from invocations.restate.errors import (
    InvalidInvocationId,
    QueryError,
    QuerySyntaxError,
    RestateError,
    RestateTimeout,
    RestateUnavailable,
)
from invocations.restate.ids import INVOCATION_ID_RE, validate_invocation_id
from invocations.restate.sql import sql_list, sql_literal

__all__ = [
    "INVOCATION_ID_RE",
    "OPERATIONS",
    "InvalidInvocationId",
    "InvocationResult",
    "OperationResult",
    "Outcome",
    "QueryError",
    "QuerySyntaxError",
    "RestateClient",
    "RestateError",
    "RestateTimeout",
    "RestateUnavailable",
    "ResultState",
    "client_from_settings",
    "sql_list",
    "sql_literal",
    "validate_invocation_id",
]
