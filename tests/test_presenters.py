"""Presenters as pure functions: Restate's journal entries, payloads and the idempotency
rule turned into what pages print, without a database or a request."""

from __future__ import annotations

from datetime import UTC, datetime

from invocations.reads.presenters.invocation import idempotency_origin
from invocations.reads.presenters.journal import journal_row
from invocations.reads.presenters.payloads import format_payload, input_payload, output_result, readable_entry
from tests.factories import build_invocation, build_journal_entry, payload_bytes

FIRE_MS = 1_795_000_000_000  # a delayed send's invoke_time, epoch ms


def test_a_call_entry_names_its_target_and_links_its_callee() -> None:
    caller = build_invocation()
    target = {"VirtualObject": {"name": "Counter", "key": "k1", "handler": "add"}}
    row = journal_row(
        build_journal_entry(caller, 1, "Command: Call", invocation_id="inv_1calleeAAAA", invocation_target=target)
    )
    assert row.summary == "Counter/k1/add"
    assert row.link_id == "inv_1calleeAAAA"
    assert row.at is None


def test_one_way_and_delayed_sends_are_told_apart_by_invoke_time() -> None:
    caller = build_invocation()
    target = {"Service": {"name": "Greeter", "handler": "greet"}}
    now = journal_row(build_journal_entry(caller, 1, "Command: OneWayCall", invocation_target=target, invoke_time=0))
    later = journal_row(
        build_journal_entry(caller, 2, "Command: OneWayCall", invocation_target=target, invoke_time=FIRE_MS)
    )
    assert now.summary == "Greeter/greet (one-way send)" and now.at is None
    assert later.summary == "Greeter/greet" and later.at_label == "delayed send, fires"
    assert later.at == datetime.fromtimestamp(FIRE_MS / 1000, tz=UTC)


def test_a_sleep_says_when_it_wakes_up() -> None:
    row = journal_row(build_journal_entry(build_invocation(), 1, "Command: Sleep", wake_up_time=FIRE_MS))
    assert row.at_label == "wakes up" and row.at == datetime.fromtimestamp(FIRE_MS / 1000, tz=UTC)


def test_input_and_output_payloads_are_decoded_from_their_bytes() -> None:
    inv = build_invocation()
    entry = build_journal_entry(inv, 0, "Command: Input", payload=payload_bytes({"name": "ada"}))
    payload = input_payload(entry)
    assert payload is not None and payload.kind == "json" and '"name": "ada"' in payload.text
    success = build_journal_entry(inv, 3, "Command: Output", result={"Success": payload_bytes("hi")})
    failure = build_journal_entry(inv, 3, "Command: Output", result={"Failure": {"code": 409, "message": "cancelled"}})
    out = output_result(success)
    assert out is not None and out.success is not None and out.success.text == '"hi"'
    out = output_result(failure)
    assert out is not None and out.failure == "[409] cancelled"
    assert readable_entry({"payload": payload_bytes({"a": 1})}) == {"payload": {"a": 1}}


def test_payloads_that_are_not_json_or_too_big_stay_bounded() -> None:
    text = format_payload(list(b"plain words"))
    assert text is not None and (text.kind, text.text) == ("text", "plain words")
    binary = format_payload([0xFF, 0x00, 0x01])
    assert binary is not None and binary.kind == "binary" and binary.text == "ff 00 01"
    big = format_payload(list(b"x" * 100), cap=10)
    assert big is not None and big.truncated and big.size == 100 and len(big.text) == 10
    assert format_payload(None) is None and format_payload([]).kind == "empty"  # type: ignore[union-attr]


def test_an_ingress_ulid_is_not_a_key_the_caller_set() -> None:
    ulid = "01KAB5JX0Q5ZQ7V1M2N3P4R5S6"
    assert "auto-generated" in (idempotency_origin(build_invocation(idempotency_key=ulid)) or "")
    assert idempotency_origin(build_invocation(idempotency_key="order-42")) == "set by the caller"
    child = build_invocation(idempotency_key=ulid, parent="inv_1parentAAAA")
    assert idempotency_origin(child) == "set by the caller"
    assert idempotency_origin(build_invocation()) is None
