"""Bounded queues: ``POST /p/<q>`` with ``max_length=N``; an add that would take the queue
past N answers 507 and stores nothing, on every front end that adds, on both stores."""

from __future__ import annotations

import xmlrpc.client

import pytest

from tests.support import (
    STORAGE_MODES,
    assert_answer,
    assert_error,
    command,
    line,
    post_json,
    post_value,
    stem,
    store_command,
)

pytestmark = STORAGE_MODES


def bound(b, queue: str, n: int | str, **other) -> None:
    response = b.post(f"/p/{queue}", max_length=str(n), **other)
    assert (response.status, response.text) == (200, "OK\r\n"), response.body


def full(queue: str, n: int) -> bytes:
    return line({"error": f"queue {queue} is full (max_length {n})"})


def length(b, queue: str) -> int:
    return b.get(f"/stats/{queue}").json()["len"]


def counter(b, queue: str) -> str | None:
    """The queue's last message number, as stored (None before the first add)."""
    return store_command(b, "GET", f"{stem(b, queue)}:UUID")


def test_an_add_past_max_length_answers_507_and_stores_nothing(shared_broker, queue):
    b = shared_broker
    bound(b, queue, 2)
    assert b.get(f"/p/{queue}").json() == {"queue": queue, "value": "broadcast", "max_length": 2}
    post_value(b, queue, "one")
    post_value(b, queue, "two")

    assert_answer(b.post(f"/q/{queue}", value="three"), full(queue, 2), 507)
    assert (length(b, queue), counter(b, queue)) == (2, "2")
    assert store_command(b, "EXISTS", b.key(queue, 3)) == 0

    # a taken message makes room; the refused add took no number
    assert b.get(f"/q/{queue}").json()["value"] == "one"
    assert post_value(b, queue, "three") == b.key(queue, 3)
    assert_answer(b.post(f"/q/{queue}", value="four"), full(queue, 2), 507)


def test_a_batch_that_would_pass_the_bound_stores_none_of_its_messages(shared_broker, queue):
    b = shared_broker
    bound(b, queue, 3)
    post_value(b, queue, "first")

    response = post_json(b, f"/q/{queue}", {"values": ["a", "b", "c"]})
    assert_answer(response, full(queue, 3), 507)
    assert (length(b, queue), counter(b, queue)) == (1, "1")

    response = post_json(b, f"/q/{queue}", {"values": ["a", "b"]})
    assert response.json() == [b.key(queue, 2), b.key(queue, 3)]
    assert length(b, queue) == 3


def test_every_front_end_that_adds_answers_a_full_queue(shared_broker, queue):
    b = shared_broker
    bound(b, queue, 1)
    post_value(b, queue, "only")

    assert_answer(b.post("/", queue=queue, value="x"), full(queue, 1), 507)
    assert_answer(post_json(b, f"/q/{queue}", {"value": "x"}), full(queue, 1), 507)
    assert_answer(command(b, {"cmd": "add", "queue": queue, "value": "x"}), full(queue, 1), 507)
    rpc = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{b.port}/xmlrpc")
    with pytest.raises(xmlrpc.client.Fault) as refused:
        rpc.add(queue, "x")
    assert refused.value.faultCode == 507
    assert refused.value.faultString == f"queue {queue} is full (max_length 1)"
    assert (length(b, queue), counter(b, queue)) == (1, "1")


def test_leased_messages_do_not_count_against_the_bound(shared_broker, queue):
    b = shared_broker
    bound(b, queue, 1)
    post_value(b, queue, "leased")
    assert b.get(f"/q/{queue}?lease=60").status == 200
    assert post_value(b, queue, "next") == b.key(queue, 2)
    assert b.post(f"/q/{queue}", value="x").status == 507


def test_max_length_0_removes_the_bound_and_its_key(shared_broker, queue):
    b = shared_broker
    bound(b, queue, 1)
    post_value(b, queue, "one")
    bound(b, queue, 0)
    assert store_command(b, "EXISTS", f"{stem(b, queue)}:maxlength") == 0
    # the original's answer again, byte for byte
    assert_answer(b.get(f"/p/{queue}"), line({"queue": queue, "value": "broadcast"}))
    post_value(b, queue, "two")
    post_value(b, queue, "three")
    assert length(b, queue) == 3


def test_max_length_is_set_with_the_policy_and_max_deliveries(shared_broker, queue):
    b = shared_broker
    bound(b, queue, 1000000000, policy="roundrobin", max_deliveries="3")
    assert b.get(f"/p/{queue}").json() == {
        "queue": queue,
        "value": "roundrobin",
        "max_deliveries": 3,
        "max_length": 1000000000,
    }
    # alone, it leaves the others as they are
    bound(b, queue, 7)
    assert b.get(f"/p/{queue}").json()["value"] == "roundrobin"
    assert b.get(f"/p/{queue}").json()["max_deliveries"] == 3


@pytest.mark.parametrize("value", ["-1", "1000000001", "ten", "1.5", "0x10"])
def test_a_bad_max_length_is_400_and_changes_nothing(shared_broker, queue, value):
    b = shared_broker
    response = b.post(f"/p/{queue}", max_length=value, policy="roundrobin")
    assert_error(response, 400, "max_length must be a whole number from 0 to 1000000000")
    assert_answer(b.get(f"/p/{queue}"), line({"queue": queue, "value": "broadcast"}))
    assert store_command(b, "EXISTS", f"{stem(b, queue)}:maxlength") == 0


def test_a_queue_without_a_bound_answers_as_before(shared_broker, queue):
    b = shared_broker
    assert b.post(f"/p/{queue}", policy="roundrobin").text == "OK\r\n"
    assert_answer(b.get(f"/p/{queue}"), line({"queue": queue, "value": "roundrobin"}))
    assert_error(b.post(f"/p/{queue}"), 400, "policy is required")
    assert post_value(b, queue, "x") == b.key(queue, 1)


def test_a_full_subscription_refuses_the_whole_add(shared_broker, queue):
    """Fan-out to a subscription at its max_length refuses the add: no subscription gets
    a copy, and the topic's counter does not move."""
    b = shared_broker
    for name in ("billing", "audit"):
        assert b.request("PUT", f"/q/{queue}/subscriptions/{name}").status == 201
    bound(b, f"{queue}:audit", 1)
    post_value(b, queue, "first")
    assert (length(b, f"{queue}:billing"), length(b, f"{queue}:audit")) == (1, 1)

    assert_answer(b.post(f"/q/{queue}", value="second"), full(f"{queue}:audit", 1), 507)
    assert (length(b, f"{queue}:billing"), length(b, f"{queue}:audit")) == (1, 1)
    assert counter(b, queue) == "1"
    assert b.get(f"/q/{queue}:audit").json()["value"] == "first"  # room again: both get it
    post_value(b, queue, "second")
    assert [m["value"] for m in b.get(f"/q/{queue}:billing?n=10").json()] == ["first", "second"]
