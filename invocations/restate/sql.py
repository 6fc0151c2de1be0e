"""The one door through which values become Restate SQL text.

Restate's SQL has no bind parameters, so every value placed in SQL goes through
`sql_literal` (or `sql_list`, which uses it): ids and keys arrive from users and
URLs, and this is the single place where they become SQL text.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime


def sql_literal(value: object) -> str:
    """Render `value` as a DataFusion SQL literal that can only ever be a literal.

    Strings use standard SQL quoting (a quote is doubled; DataFusion does not
    treat backslash as an escape outside E'' strings), so quotes, backslashes,
    `--` and `/*` inside the value stay data. NUL cannot be represented and is
    refused rather than silently truncated.
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"cannot use non-finite float {value!r} in SQL")
        return repr(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime in SQL: pass an aware (UTC) datetime")
        text = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
        return f"TIMESTAMP '{text}'"
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("NUL character cannot be used in a SQL string literal")
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for {type(value).__name__}")


def sql_list(values: Iterable[object]) -> str:
    """`(v1, v2, ...)` for an IN clause; every element through `sql_literal`."""
    items = [sql_literal(v) for v in values]
    if not items:
        raise ValueError("empty IN list")
    return "(" + ", ".join(items) + ")"
