"""invocations.restate against a real restate-server: SQL literals stay literals,
errors are typed, and operations map Restate's status codes to clear outcomes."""

from __future__ import annotations

import pytest

from demo import traffic
from invocations.restate import (
    InvalidInvocationId,
    Outcome,
    QueryError,
    QuerySyntaxError,
    RestateClient,
    RestateUnavailable,
    ResultState,
    sql_list,
    sql_literal,
)
from tests.conftest import wait_completed, wait_for_restate
from tests.test_quoting import HOSTILE

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_strings_round_trip_as_literals(restate: RestateClient, value: str) -> None:
    rows = restate.query(f"SELECT {sql_literal(value)} AS v")
    assert rows == [{"v": value}]


def test_hostile_values_in_filters_stay_one_literal(restate: RestateClient) -> None:
    traffic.fire_greet(restate)
    hostile = sql_literal("x' OR '1'='1")
    # Had the quote escaped, OR '1'='1' would match every row.
    assert restate.query(f"SELECT id FROM sys_invocation WHERE target_service_key = {hostile}") == []
    # Restate parses an id literal and rejects one that is not an id: the whole
    # string reached it as one value. (Views validate ids first, for a clear 400.)
    with pytest.raises(QueryError, match="invocation id"):
        restate.query(f"SELECT id FROM sys_invocation WHERE id = {hostile}")


def test_query_errors_are_typed(restate: RestateClient) -> None:
    with pytest.raises(QuerySyntaxError):
        restate.query("SELEKT 1")
    with pytest.raises(QueryError):
        restate.query("SELECT no_such_column FROM sys_invocation LIMIT 1")
    with pytest.raises(RestateUnavailable):
        RestateClient("http://127.0.0.1:9", "http://127.0.0.1:9", timeout=2).query("SELECT 1")


def test_arrow_and_json_agree(restate: RestateClient) -> None:
    # Finished invocations only: the two reads must see the same rows.
    ids = [traffic.fire_greet(restate)[0] for _ in range(5)]
    sql = f"SELECT id, status, target, journal_size, completion_result FROM sys_invocation WHERE id IN {sql_list(ids)} ORDER BY id"
    wait_for_restate(restate, sql, lambda rows: len(rows) == 5 and all(r["status"] == "completed" for r in rows))
    streamed = [row for batch in restate.query_batches(sql) for row in batch]
    assert streamed == restate.query(sql)


def test_operation_outcomes(restate: RestateClient) -> None:
    long_id = traffic.fire_long(restate)[0]
    wait_for_restate(
        restate,
        f"SELECT status FROM sys_invocation WHERE id = {sql_literal(long_id)}",
        lambda r: r and r[0]["status"] != "pending",
    )
    assert restate.output(long_id).state is ResultState.NOT_READY
    result = restate.cancel(long_id)
    assert result.ok and result.outcome is Outcome.DONE
    wait_completed(restate, long_id)
    again = restate.cancel(long_id)
    assert again.outcome is Outcome.CONFLICT and "nothing to cancel" in again.message
    assert restate.pause(long_id).outcome is Outcome.CONFLICT
    out = restate.output(long_id)
    assert out.state is ResultState.FAILED
    assert restate.purge(long_id).ok
    assert restate.cancel(long_id).outcome is Outcome.NOT_FOUND


def test_unknown_and_malformed_ids(restate: RestateClient) -> None:
    # Well-formed but unknown: Restate says 404 (or 400 when the id does not decode).
    assert restate.kill("inv_1aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").outcome in (Outcome.NOT_FOUND, Outcome.INVALID)
    with pytest.raises(InvalidInvocationId):
        restate.cancel("inv_1x'; DROP")
    with pytest.raises(ValueError, match="unknown operation"):
        restate.operate("delete-everything", "inv_1aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")


def test_attach_waits_for_the_result(restate: RestateClient) -> None:
    inv_id = restate.send("Greeter", "greet", payload="attach", idempotency_key=traffic.new_key("attach"))
    result = restate.attach(inv_id, timeout=30)
    assert result.state is ResultState.SUCCEEDED
    assert "Hello" in result.body or result.json() is not None
