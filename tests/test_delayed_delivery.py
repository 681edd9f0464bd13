"""Delayed delivery over HTTP, the JSON protocol and XML-RPC: a message added with
``delay=S`` is stored at once (its key is answered) and nothing takes it until it is due;
then it joins the tail of the queue, due messages in due order, and reaches streams and
long polls with no take (each broker sweeps about once a second).

A message that must stay invisible is delayed for a minute (the test never waits for it);
one that must arrive is delayed for 1 s and the test waits on its arrival.
"""

from __future__ import annotations

import json
import xmlrpc.client

import pytest

from tests.support import (
    STORAGE_MODES,
    HttpStream,
    WebSocketStream,
    wait_consumers,
    wait_for,
)

pytestmark = STORAGE_MODES

JSON_BODY = {"Content-Type": "application/json"}
LATER = 60  # seconds: never due while a test runs


def post_json(broker, path: str, body) -> object:
    return broker.request("POST", path, body=json.dumps(body), headers=JSON_BODY)


def add(broker, queue: str, value: str, delay: int | None = None) -> str:
    form = {"value": value} if delay is None else {"value": value, "delay": delay}
    answer = broker.post(f"/q/{queue}", **form)
    assert answer.status == 200, answer.body
    return answer.text.strip()


def delayed(broker, queue: str) -> int:
    """The queue's delayed count as /stats/<q> shows it (absent: none)."""
    return broker.get(f"/stats/{queue}").json().get("delayed", 0)


def take_when_due(broker, queue: str, timeout: float = 10.0) -> dict:
    """Pop until something comes (the delayed message, once due)."""

    def popped():
        answer = broker.get(f"/q/{queue}")
        return answer.json() if answer.status == 200 else None

    return wait_for(popped, timeout, interval=0.1, what=f"a message in {queue}")


def test_a_delayed_message_is_stored_but_nothing_takes_it(shared_broker, queue):
    key = add(shared_broker, queue, "later", delay=LATER)
    assert key == shared_broker.key(queue, 1)
    assert shared_broker.get(f"/q/{queue}").status == 204
    assert shared_broker.get(f"/q/{queue}?lease=30").status == 204
    assert shared_broker.get(f"/q/{queue}?n=5").json() == []
    assert shared_broker.get(f"/q/{queue}?wait=1").status == 204
    peek = post_json(shared_broker, "/queue", {"cmd": "get", "queue": queue})
    assert "value" not in peek.json()
    stats = shared_broker.get(f"/stats/{queue}").json()
    assert (stats["len"], stats["delayed"]) == (0, 1)
    assert shared_broker.get("/stats/").json()["queues"][queue]["delayed"] == 1


def test_a_due_message_is_popped(shared_broker, queue):
    key = add(shared_broker, queue, "soon", delay=1)
    message = take_when_due(shared_broker, queue)
    assert (message["key"], message["value"]) == (key, "soon")
    assert "delayed" not in shared_broker.get(f"/stats/{queue}").json()


def test_due_messages_join_the_queue_in_due_order(shared_broker, queue):
    add(shared_broker, queue, "now")
    add(shared_broker, queue, "last", delay=3)  # added first, due last
    add(shared_broker, queue, "first", delay=1)
    batch = post_json(shared_broker, f"/q/{queue}", {"values": ["second", "third"], "delay": 1})
    assert batch.status == 200, batch.body
    wait_for(lambda: delayed(shared_broker, queue) == 0, 10, what="every message due")
    taken = shared_broker.get(f"/q/{queue}?n=10").json()
    assert [m["value"] for m in taken] == ["now", "first", "second", "third", "last"]


def test_a_long_poll_gets_a_message_once_it_is_due(shared_broker, queue):
    key = add(shared_broker, queue, "soon", delay=1)
    answer = shared_broker.get(f"/q/{queue}?wait=10", timeout=15)
    assert answer.status == 200
    assert (answer.json()["key"], answer.json()["value"]) == (key, "soon")


@pytest.mark.parametrize("kind", ["sse", "websocket"])
def test_a_stream_gets_a_message_once_it_is_due_with_no_take(shared_broker, queue, kind):
    stream = (
        HttpStream(shared_broker.port, queue, sse=True)
        if kind == "sse"
        else WebSocketStream(shared_broker.port, queue)
    ).start()
    try:
        wait_consumers(shared_broker, queue, 1)
        add(shared_broker, queue, "a minute away", delay=LATER)
        now = add(shared_broker, queue, "now")
        assert stream.next_message(10)["key"] == now  # not the delayed one
        soon = add(shared_broker, queue, "soon", delay=1)
        message = stream.next_message(10)
        assert (message["key"], message["value"]) == (soon, "soon")
    finally:
        stream.close()
    assert delayed(shared_broker, queue) == 1


def test_delay_comes_as_a_form_field_a_query_argument_or_a_json_field(shared_broker, queue):
    assert shared_broker.post(f"/q/{queue}", value="form", delay=LATER).status == 200
    answer = shared_broker.request(
        "POST", f"/q/{queue}?delay={LATER}", body=json.dumps({"value": "query"}), headers=JSON_BODY
    )
    assert answer.status == 200, answer.body
    assert post_json(shared_broker, f"/q/{queue}", {"value": "json", "delay": LATER}).status == 200
    assert (
        post_json(shared_broker, f"/q/{queue}", {"values": ["x", "y"], "delay": 60.0}).status == 200
    )
    assert shared_broker.post("/", queue=queue, value="index", delay=LATER).status == 200
    command = {"cmd": "add", "queue": queue, "value": "protocol", "delay": LATER}
    assert post_json(shared_broker, "/queue", command).status == 200
    proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{shared_broker.port}/xmlrpc")
    assert proxy.add(queue, "xml-rpc", 0, LATER) == shared_broker.key(queue, 8)
    assert delayed(shared_broker, queue) == 8
    assert shared_broker.get(f"/q/{queue}").status == 204


@pytest.mark.parametrize("delay", ["-1", "604801", "soon", "1.5"])
def test_a_bad_delay_is_refused_and_nothing_is_stored(shared_broker, queue, delay):
    answer = shared_broker.post(f"/q/{queue}", value="x", delay=delay)
    assert answer.status == 400
    assert "delay must be a whole number from 0 to 604800" in answer.json()["error"]
    answer = post_json(shared_broker, f"/q/{queue}", {"values": ["x"], "delay": delay})
    assert answer.status == 400
    assert "delay must be a whole number" in answer.json()["error"]
    assert shared_broker.get(f"/stats/{queue}").json()["len"] == 0
    assert delayed(shared_broker, queue) == 0


def test_a_fractional_json_delay_and_true_are_refused(shared_broker, queue):
    for delay in (1.5, True):
        answer = post_json(shared_broker, f"/q/{queue}", {"value": "x", "delay": delay})
        assert answer.status == 400
        assert "delay must be a whole number" in answer.json()["error"]
    command = {"cmd": "add", "queue": queue, "value": "x", "delay": -5}
    assert post_json(shared_broker, "/queue", command).status == 400
    assert delayed(shared_broker, queue) == 0


def test_purge_drops_delayed_messages(shared_broker, queue):
    add(shared_broker, queue, "purged", delay=1)
    add(shared_broker, queue, "purged too", delay=LATER)
    assert shared_broker.request("DELETE", f"/q/{queue}").status == 200
    assert delayed(shared_broker, queue) == 0
    marker = add(shared_broker, queue, "after the purge", delay=1)
    # the purged message was due first: had it stayed, it would come before the marker
    assert take_when_due(shared_broker, queue)["key"] == marker
