"""sql_literal is the one door from user input into Restate's SQL."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from invocations.restate import InvalidInvocationId, sql_list, sql_literal, validate_invocation_id

HOSTILE = [
    "it's",
    "x' OR '1'='1",
    "a'); DROP TABLE sys_invocation; --",
    "back\\slash\\",
    "\\'",
    "-- trailing comment",
    "/* block */ comment",
    "üñíçødé 日本語 🎉",
    "''",
    "line\nbreak\ttab",
    "\u202e right-to-left override",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_string_literal_is_one_quoted_token(value: str) -> None:
    rendered = sql_literal(value)
    assert rendered.startswith("'") and rendered.endswith("'")
    inner = rendered[1:-1]
    # Every quote inside is doubled, so none can close the literal early.
    assert inner.replace("''", "").count("'") == 0
    assert inner.replace("''", "'") == value


def test_nul_is_refused_not_truncated() -> None:
    with pytest.raises(ValueError, match="NUL"):
        sql_literal("inv_abc\x00' OR 1=1")


def test_scalars() -> None:
    assert sql_literal(None) == "NULL"
    assert sql_literal(True) == "TRUE"
    assert sql_literal(42) == "42"
    assert sql_literal(datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)) == "TIMESTAMP '2026-01-02T03:04:05.006000'"
    # Converted to UTC, as Restate's timestamps are.
    plus2 = timezone(timedelta(hours=2))
    assert sql_literal(datetime(2026, 1, 2, 5, 0, tzinfo=plus2)) == "TIMESTAMP '2026-01-02T03:00:00.000000'"


def test_refuses_what_it_cannot_render_safely() -> None:
    with pytest.raises(ValueError):
        sql_literal(datetime(2026, 1, 1))  # naive: which zone?
    with pytest.raises(ValueError):
        sql_literal(float("nan"))
    with pytest.raises(TypeError):
        sql_literal(object())
    with pytest.raises(ValueError):
        sql_list([])


def test_sql_list_quotes_each_element() -> None:
    assert sql_list(["a", "b'c", 3]) == "('a', 'b''c', 3)"


def test_invocation_id_validation() -> None:
    assert validate_invocation_id("inv_1aNJZ5BPrBVy4aJBWa4NTkH9lKo9AJeVfj")
    for bad in ["", "inv_", "inv_abc'--", "../admin", "inv_1aNJZ5BPrBVy4aJBWa4NTkH9lKo9AJeVfj/../../x", "INV 1"]:
        with pytest.raises(InvalidInvocationId):
            validate_invocation_id(bad)
