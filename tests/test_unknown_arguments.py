"""A GET that pops refuses arguments it does not know: an unknown option never takes a message."""

from __future__ import annotations

import pytest

from tests.support import JSONP_TYPE, assert_answer, assert_error, jsonp, line, post_value


@pytest.mark.parametrize("argument", ["leas=30", "timeout=5", "peek=1", "calback=cb"])
def test_get_q_names_the_unknown_argument_and_keeps_the_message(shared_broker, queue, argument):
    b = shared_broker
    post_value(b, queue, "kept")
    name = argument.split("=")[0]
    error = assert_error(b.get(f"/q/{queue}?{argument}"), 400)
    assert error == f"unknown argument {name!r} for GET /q/<queue>; known: callback, n, lease, wait"
    assert b.redis("LLEN", f"{queue}:queue") == 1


def test_get_index_names_the_unknown_argument_and_keeps_the_message(shared_broker, queue):
    b = shared_broker
    post_value(b, queue, "kept")
    error = assert_error(b.get(f"/?queue={queue}&lease=30"), 400)
    assert error == "unknown argument 'lease' for GET /; known: queue, callback"
    assert b.redis("LLEN", f"{queue}:queue") == 1


def test_known_arguments_and_jquerys_cache_buster_still_pop(shared_broker, queue):
    b = shared_broker
    post_value(b, queue, "one")
    post_value(b, queue, "two")
    post_value(b, queue, "three")
    expected = {"key": f"{queue}:1", "value": "one", "count": 0}
    assert_answer(b.get(f"/q/{queue}?callback=cb&_=1700000000"), jsonp("cb", expected), 200,
                  JSONP_TYPE)  # fmt: skip
    expected = [{"key": f"{queue}:2", "value": "two", "count": 0}]
    assert_answer(b.get(f"/q/{queue}?n=1&_=1"), line(expected))
    expected = {"key": f"{queue}:3", "value": "three", "count": 0}
    assert_answer(b.get(f"/?queue={queue}&_=2"), line(expected))


def test_post_and_delete_are_not_limited_by_the_get_table(shared_broker, queue):
    b = shared_broker
    assert b.post(f"/q/{queue}", value="v", lease="30").status == 200
    assert b.request("DELETE", f"/q/{queue}?whatever=1").status == 200
