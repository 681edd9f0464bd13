"""Durable subscriptions over HTTP, on the embedded Valkey and on a Valkey Cluster:
``/q/<q>/subscriptions[/<name>]``, the fan-out of every front end's adds, and the
subscription queues as the ordinary queues they are."""

from __future__ import annotations

import json
import xmlrpc.client

import pytest

from tests.support import (
    JSON_TYPE,
    STORAGE_MODES,
    Broker,
    HttpStream,
    assert_error,
    command,
    post_json,
    post_value,
    take_all,
    wait_consumers,
    wait_for,
)

pytestmark = STORAGE_MODES


def subscribe(b: Broker, queue: str, name: str):
    return b.request("PUT", f"/q/{queue}/subscriptions/{name}")


def unsubscribe(b: Broker, queue: str, name: str):
    return b.request("DELETE", f"/q/{queue}/subscriptions/{name}")


def subscribed(b: Broker, queue: str, *names: str) -> None:
    for name in names:
        assert subscribe(b, queue, name).status == 201


def values(b: Broker, queue: str) -> list[str]:
    """Pop everything ``queue`` holds; the values in order."""
    return [m["value"] for m in take_all(b, queue)]


def test_put_creates_get_lists_and_delete_ends_a_subscription(shared_broker, queue):
    b = shared_broker
    created = subscribe(b, queue, "billing")
    assert created.status == 201
    assert created.headers["content-type"] == JSON_TYPE
    expected = {"queue": queue, "subscription": "billing", "delivers_to": f"{queue}:billing"}
    assert created.json() == expected
    again = subscribe(b, queue, "billing")
    assert (again.status, again.json()) == (200, expected)
    assert subscribe(b, queue, "audit").status == 201

    listed = b.get(f"/q/{queue}/subscriptions")
    assert listed.status == 200 and listed.headers["content-type"] == JSON_TYPE
    assert listed.json() == {"queue": queue, "subscriptions": ["audit", "billing"]}

    ended = unsubscribe(b, queue, "billing")
    assert (ended.status, ended.json()) == (200, expected)
    assert_error(unsubscribe(b, queue, "billing"), 404, f"queue {queue} has no subscription")
    assert b.get(f"/q/{queue}/subscriptions").json()["subscriptions"] == ["audit"]
    assert b.get(f"/q/{queue}x/subscriptions").json() == {
        "queue": f"{queue}x",
        "subscriptions": [],
    }


def test_every_front_end_that_adds_fans_out_to_each_subscription(shared_broker, queue):
    b = shared_broker
    subscribed(b, queue, "a", "b")
    keys = [post_value(b, queue, "form")]
    keys.append(post_json(b, f"/q/{queue}", {"value": "json"}).text.strip())
    keys += post_json(b, f"/q/{queue}", {"values": ["batch 1", "batch 2"]}).json()
    index = b.post("/", queue=queue, value="index")
    assert index.status == 200
    keys.append(index.text.strip())
    added = command(b, {"cmd": "add", "queue": queue, "value": "protocol"})
    assert added.status == 200
    keys.append(added.json()["key"])
    keys.append(xmlrpc.client.ServerProxy(f"http://127.0.0.1:{b.port}/xmlrpc").add(queue, "rpc"))
    # The answers are numbered by the queue's own counter, as for any add.
    assert keys == [b.key(queue, n) for n in range(1, 8)]

    sent = ["form", "json", "batch 1", "batch 2", "index", "protocol", "rpc"]
    for name in ("a", "b"):
        taken = take_all(b, f"{queue}:{name}")
        assert [m["value"] for m in taken] == sent
        assert [m["key"] for m in taken] == [b.key(f"{queue}:{name}", n) for n in range(1, 8)]
    assert b.get(f"/q/{queue}").status == 204, "the queue itself keeps no copy"
    assert b.get(f"/stats/{queue}").json()["len"] == 0


def test_delayed_and_idempotent_adds_fan_out_once_to_each_subscription(shared_broker, queue):
    """A delayed add reaches every subscription once due, not before; an add repeated with
    its Idempotency-Key leaves one copy in each."""
    b = shared_broker
    subscribed(b, queue, "billing", "audit")
    once = {"Idempotency-Key": '"pay-1"'}
    first = b.request("POST", f"/q/{queue}", form={"value": "paid"}, headers=once)
    again = b.request("POST", f"/q/{queue}", form={"value": "paid"}, headers=once)
    assert (first.status, again.status, again.text) == (200, 200, first.text)
    assert again.headers.get("idempotent-replayed") == "true"
    assert b.post(f"/q/{queue}", value="later", delay="1").status == 200
    for name in ("billing", "audit"):
        stats = b.get(f"/stats/{queue}:{name}").json()
        assert (stats["len"], stats.get("delayed")) == (1, 1)
    for name in ("billing", "audit"):  # the sweep moves it once due, with no take
        wait_for(lambda n=name: b.get(f"/stats/{queue}:{n}").json()["len"] == 2, 10)
        assert values(b, f"{queue}:{name}") == ["paid", "later"]
    assert values(b, queue) == []


def test_a_subscriber_offline_while_messages_came_gets_them_all_when_back(shared_broker, queue):
    b = shared_broker
    subscribed(b, queue, "late", "early")
    sent = [f"event {n}" for n in range(60)]
    post_json(b, f"/q/{queue}", {"values": sent[:30]})
    for value in sent[30:]:
        post_value(b, queue, value)
    assert values(b, f"{queue}:early") == sent
    # The other one connects only now, as a stream: nothing was lost meanwhile.
    stream = HttpStream(b.port, f"{queue}:late", sse=True).start()
    try:
        got = [stream.next_message()["value"] for _ in sent]
        assert got == sent
    finally:
        stream.close()
    assert b.get(f"/stats/{queue}:late").json()["len"] == 0


def test_a_subscription_queue_streams_as_an_ordinary_queue(shared_broker, queue):
    b = shared_broker
    subscribed(b, queue, "live")
    stream = HttpStream(b.port, f"{queue}:live", sse=True).start()
    try:
        wait_consumers(b, f"{queue}:live", 1)
        post_value(b, queue, "hello")
        event = stream.next()
        assert event["id"] == b.key(f"{queue}:live", 1)
        assert json.loads(event["data"]) == {"key": event["id"], "value": "hello"}
    finally:
        stream.close()


def test_a_subscription_queue_leases_acks_and_has_its_own_dead_letters(shared_broker, queue):
    b = shared_broker
    sub = f"{queue}:billing"
    subscribed(b, queue, "billing")
    assert b.post(f"/p/{sub}", max_deliveries="2").status == 200
    post_value(b, queue, "paid")
    post_value(b, queue, "poison")

    paid = b.get(f"/q/{sub}?lease=30").json()
    assert paid["value"] == "paid"
    acked = b.request("DELETE", f"/q/{sub}?receipt={paid['receipt']}")
    assert acked.json() == {"queue": sub, "key": paid["key"], "acked": True}

    poison = b.get(f"/q/{sub}?lease=1").json()
    assert (poison["value"], poison["deliveries"]) == ("poison", 1)

    def leased_again() -> bool:  # once the 1 s lease ran out it is handed out again
        response = b.get(f"/q/{sub}?lease=1")
        return response.status == 200 and response.json()["deliveries"] == 2

    wait_for(leased_again, 10, what="the second delivery")

    def dead() -> bool:  # after its second lease ran out: max_deliveries reached
        assert b.get(f"/q/{sub}?lease=1").status == 204
        return b.get(f"/stats/{sub}").json().get("dead") == 1

    wait_for(dead, 10, what="the message in the dead letters")
    letter = b.get(f"/q/{sub}:dead").json()
    assert (letter["key"], letter["value"]) == (poison["key"], "poison")
    assert b.get(f"/stats/{queue}").json()["len"] == 0


def test_after_unsubscribing_its_queue_stays_and_gets_no_more_copies(shared_broker, queue):
    b = shared_broker
    subscribed(b, queue, "gone", "stays")
    post_value(b, queue, "before")
    assert unsubscribe(b, queue, "gone").status == 200
    post_value(b, queue, "after")
    assert values(b, f"{queue}:gone") == ["before"]
    assert values(b, f"{queue}:stays") == ["before", "after"]
    assert unsubscribe(b, queue, "stays").status == 200
    post_value(b, queue, "to the queue")
    assert values(b, queue) == ["to the queue"]


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/q/{q}/subscriptions/a:b", "invalid subscription name 'a:b'"),
        ("/q/{q}/subscriptions/bad%20name", "invalid subscription name 'bad name'"),
        ("/q/{q}/subscriptions/..", "invalid subscription name '..'"),
        ("/q/{q}/subscriptions/", "a subscription name is required"),
        ("/q/{q}/subscriptions/dead", "invalid subscription name 'dead'"),
        ("/q/{q}/subscriptions/" + "n" * 190, "subscription name 'nnn"),
        ("/q/{q}:dead/subscriptions/x", "queue '{q}:dead' holds dead letters"),
        ("/q/bad%20queue/subscriptions/x", "invalid queue name 'bad queue'"),
        ("/q//subscriptions/x", "a queue name is required"),
    ],
)
def test_bad_names_are_refused_with_400(shared_broker, queue, path, error):
    b = shared_broker
    path = path.format(q=queue)
    for method in ("PUT", "DELETE"):
        assert_error(b.request(method, path), 400, error.format(q=queue))
    assert b.get(f"/q/{queue}/subscriptions").json()["subscriptions"] == []


def test_listing_a_bad_queue_name_is_400(shared_broker):
    assert_error(shared_broker.get("/q/a%20b/subscriptions"), 400, "invalid queue name")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/q/jobs/subscriptions", "GET"),
        ("DELETE", "/q/jobs/subscriptions", "GET"),
        ("GET", "/q/jobs/subscriptions/billing", "DELETE, PUT"),
        ("POST", "/q/jobs/subscriptions/billing", "DELETE, PUT"),
    ],
)
def test_other_methods_are_405(shared_broker, method, path, allowed):
    response = shared_broker.request(method, path)
    assert_error(response, 405, f"method {method} is not allowed on {path}")
    assert ", ".join(sorted(m.strip() for m in response.headers["allow"].split(","))) == allowed
