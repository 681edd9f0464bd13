"""Answers kept byte for byte from the original, and the JSON-body hint for a form route."""

from __future__ import annotations

from tests.support import JSONP_TYPE, assert_answer, assert_error, command, jsonp, line


def test_json_protocol_unknown_command_is_exactly_null_resultset(shared_broker, queue):
    b = shared_broker
    for cmd in ("nope", "DEL", "put"):
        response = command(b, {"cmd": cmd, "queue": queue, "value": "v"})
        assert_answer(response, line({"error": "null resultset"}), 400)
    assert b.redis("EXISTS", f"{queue}:UUID") == 0


def test_control_invalid_status_is_the_originals_stat_answer(shared_broker, queue):
    b = shared_broker
    assert_answer(b.post(f"/control/{queue}", status="pause"),
                  line({"stat": "invalid status: pause"}), 400)  # fmt: skip
    assert_answer(b.post(f"/control/{queue}?callback=cb", status="Start"),
                  jsonp("cb", {"stat": "invalid status: Start"}), 400, JSONP_TYPE)  # fmt: skip
    assert b.redis("EXISTS", f"queuestat::{queue}") == 0
    # a bad queue name is still the usual error, whatever the status word
    assert_error(b.post("/control/bad%20name", status="pause"), 400, "invalid queue name")


def test_a_json_body_without_its_content_type_is_told_what_header_it_needs(shared_broker, queue):
    b = shared_broker
    response = b.request("POST", f"/q/{queue}", body=b'{"value": "v"}',
                         headers={"Content-Type": "text/plain"})  # fmt: skip
    error = assert_error(response, 400, "a message is required")
    assert "a JSON body needs Content-Type: application/json" in error
    assert b.redis("EXISTS", f"{queue}:UUID") == 0
