"""The Restate layer: the only code that speaks HTTP to Restate (`client`), the one
SQL quoting function (`sql`), invocation ids (`ids`), typed errors (`errors`) and the
parsing of the trace spans Restate pushes to us (`spans`).
Everything above imports from here; this package imports nothing of ours."""

from invocations.restate.client import (
    OPERATIONS,
    WORKFLOW_MAIN_HANDLER,
    InvocationResult,
    OperationResult,
    Outcome,
    RestateClient,
    ResultState,
    ResultTarget,
    client_from_settings,
    result_async,
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
    "WORKFLOW_MAIN_HANDLER",
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
    "ResultTarget",
    "client_from_settings",
    "result_async",
    "sql_list",
    "sql_literal",
    "validate_invocation_id",
]
