"""Leased takes over the wire: GET ?lease=, acks, extend/release, expiry, dead letters.

A real broker on its embedded Valkey and on a Valkey Cluster; leases that must run out
are 1 s long.
"""

from __future__ import annotations

import json
import time
import xmlrpc.client

import pytest

from tests.support import (
    STORAGE_MODES,
    Broker,
    assert_answer,
    assert_error,
    command,
    line,
    post_value,
    request,
    stem_of,
    store_command,
    wait_for,
)


def lease(b: Broker, queue: str, seconds: int = 30, **extra) -> dict:
    query = "&".join(f"{k}={v}" for k, v in {"lease": seconds, **extra}.items())
    response = b.get(f"/q/{queue}?{query}")
    assert response.status == 200, response.body
    return response.json()


def ack(b: Broker, queue: str, *receipts: str):
    query = "&".join(f"receipt={r}" for r in receipts)
    return b.request("DELETE", f"/q/{queue}?{query}")


def expire(b: Broker, seconds: float = 1.0) -> None:
    """Let a lease of ``seconds`` run out by the Redis clock (which the scripts read)."""
    start = int(store_command(b, "TIME")[0])
    time.sleep(seconds)
    wait_for(lambda: int(store_command(b, "TIME")[0]) >= start + seconds + 1, 5, what="lease end")


@STORAGE_MODES
def test_a_leased_take_answers_a_receipt_and_keeps_the_message(shared_broker, queue):
    b = shared_broker
    key = post_value(b, queue, "job")
    expected = {
        "key": key, "value": "job", "count": 0,
        "receipt": f"{key}@1", "deliveries": 1, "lease": 30,
    }  # fmt: skip
    assert_answer(b.get(f"/q/{queue}?lease=30"), line(expected))
    assert store_command(b, "GET", key) == "job"  # kept until acked
    assert b.get(f"/q/{queue}?lease=30").status == 204  # handed out: not taken twice
    stats = b.get(f"/stats/{queue}").json()
    assert (stats["len"], stats["leased"]) == (0, 1)
    assert "dead" not in stats


@STORAGE_MODES
def test_an_ack_deletes_the_message_and_a_second_ack_is_409(shared_broker, queue):
    b = shared_broker
    key = post_value(b, queue, "job")
    receipt = lease(b, queue)["receipt"]
    assert_answer(ack(b, queue, receipt), line({"queue": queue, "key": key, "acked": True}))
    assert store_command(b, "EXISTS", key) == 0
    assert b.get(f"/stats/{queue}").json()["leased"] == 0
    assert_error(ack(b, queue, receipt), 409, "the lease of receipt")


@STORAGE_MODES
def test_a_batch_is_leased_and_acked_in_one_request_each(shared_broker, queue):
    b = shared_broker
    keys = [post_value(b, queue, f"v{i}") for i in range(3)]
    batch = lease(b, queue, n=2)
    assert [(m["key"], m["value"], m["deliveries"], m["lease"]) for m in batch] == [
        (keys[0], "v0", 1, 30),
        (keys[1], "v1", 1, 30),
    ]
    first = ack(b, queue, batch[0]["receipt"])
    assert first.status == 200
    # one receipt acked already: the list says so, the others are acked
    response = ack(b, queue, batch[0]["receipt"], batch[1]["receipt"])
    assert_answer(
        response,
        line([
            {"queue": queue, "key": keys[0], "acked": False},
            {"queue": queue, "key": keys[1], "acked": True},
        ]),
    )  # fmt: skip
    assert store_command(b, "LLEN", f"{stem_of(b, queue)}:queue") == 1
    assert lease(b, queue, n=5) == [
        {"key": keys[2], "value": "v2", "count": 0, "receipt": f"{keys[2]}@1",
         "deliveries": 1, "lease": 30}
    ]  # fmt: skip
    assert_answer(b.get(f"/q/{queue}?lease=30&n=5"), line([]))  # empty: a list, as ?n= alone


@STORAGE_MODES
def test_a_receipt_whose_lease_ran_out_is_refused_and_the_message_comes_back_first(
    shared_broker, queue
):
    b = shared_broker
    first = post_value(b, queue, "first")
    post_value(b, queue, "second")
    old = lease(b, queue, 1)
    expire(b)
    assert_error(ack(b, queue, old["receipt"]), 409)
    again = lease(b, queue)  # back at the head, before "second"
    assert (again["key"], again["deliveries"], again["receipt"]) == (first, 2, f"{first}@2")
    assert_error(ack(b, queue, old["receipt"]), 409)  # an earlier delivery's receipt stays dead
    assert ack(b, queue, again["receipt"]).json()["acked"] is True


@STORAGE_MODES
def test_extend_holds_the_lease_and_release_puts_the_message_at_the_head(shared_broker, queue):
    b = shared_broker
    first = post_value(b, queue, "first")
    post_value(b, queue, "second")
    held = lease(b, queue, 1)
    response = b.post(f"/q/{queue}?receipt={held['receipt']}&lease=30")
    expected = {"queue": queue, "key": first, "receipt": held["receipt"], "lease": 30}
    assert_answer(response, line(expected))
    assert (
        store_command(b, "LLEN", f"{stem_of(b, queue)}:queue") == 1
    )  # a POST with a receipt adds nothing
    expire(b)
    assert b.get(f"/stats/{queue}").json()["leased"] == 1  # still held
    response = b.post(f"/q/{queue}?receipt={held['receipt']}&lease=0")
    assert_answer(response, line(dict(expected, lease=0)))
    assert lease(b, queue)["key"] == first  # released to the head
    assert_error(b.post(f"/q/{queue}?receipt={held['receipt']}&lease=10"), 409)


@STORAGE_MODES
def test_max_deliveries_sends_a_message_to_the_dead_letters(shared_broker, queue):
    b = shared_broker
    assert b.post(f"/p/{queue}", max_deliveries="2").text == "OK\r\n"
    expected = {"queue": queue, "value": "broadcast", "max_deliveries": 2}
    assert_answer(b.get(f"/p/{queue}"), line(expected))
    key = post_value(b, queue, "poison")
    for _ in range(2):
        lease(b, queue, 1)
        expire(b)
    assert b.get(f"/q/{queue}?lease=30").status == 204  # it ended in the dead letters
    stats = b.get(f"/stats/{queue}").json()
    assert (stats["len"], stats["leased"], stats["dead"]) == (0, 0, 1)
    everything = b.get("/stats/").json()["queues"]
    assert everything[queue]["dead"] == 1 and everything[f"{queue}:dead"]["len"] == 1
    dead = b.get(f"/q/{queue}:dead").json()
    assert (dead["key"], dead["value"]) == (key, "poison")
    # policy and max_deliveries together; 0 removes the limit
    assert b.post(f"/p/{queue}", policy="roundrobin", max_deliveries="0").status == 200
    assert_answer(b.get(f"/p/{queue}"), line({"queue": queue, "value": "roundrobin"}))


@STORAGE_MODES
@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("?lease=0", "lease must be a whole number from 1 to 43200, not 0"),
        ("?lease=43201", "lease must be a whole number from 1 to 43200, not 43201"),
        ("?lease=soon", "lease must be a whole number from 1 to 43200, not 'soon'"),
        ("?lease=30&n=0", "n must be a whole number from 1 to 1000, not 0"),
        ("?wait=61", "wait must be a whole number from 0 to 60, not 61"),
        ("?wait=-1", "wait must be a whole number from 0 to 60, not -1"),
    ],
)
def test_bad_take_arguments_are_400_and_take_nothing(shared_broker, queue, path, error):
    b = shared_broker
    post_value(b, queue, "kept")
    assert assert_error(b.get(f"/q/{queue}{path}"), 400) == error
    assert store_command(b, "LLEN", f"{stem_of(b, queue)}:queue") == 1


@STORAGE_MODES
def test_bad_receipts_and_settings_are_400_and_change_nothing(shared_broker, queue):
    b = shared_broker
    post_value(b, queue, "kept")
    receipt = lease(b, queue)["receipt"]
    assert_error(ack(b, queue, "other:1@1"), 400, "'other:1@1' is not a receipt of queue")
    assert_error(ack(b, queue, receipt, "nonsense"), 400, "'nonsense' is not a receipt")
    assert_error(b.post(f"/q/{queue}?receipt={receipt}"), 400, "lease is required with a receipt")
    assert_error(b.post(f"/q/{queue}?receipt={receipt}&lease=43201"), 400, "lease must be")
    assert b.get(f"/stats/{queue}").json()["leased"] == 1  # nothing was acked or released
    assert_error(b.post(f"/p/{queue}", max_deliveries="1001"), 400, "max_deliveries must be")
    assert_error(b.post(f"/p/{queue}", max_deliveries="2", policy="fifo"), 400, "invalid policy")
    assert store_command(b, "EXISTS", f"{stem_of(b, queue)}:maxdeliveries") == 0


@STORAGE_MODES
def test_delete_without_a_receipt_still_purges_and_drops_the_leases(shared_broker, queue):
    b = shared_broker
    post_value(b, queue, "leased")
    post_value(b, queue, "pending")
    lease(b, queue)
    assert_answer(b.request("DELETE", f"/q/{queue}"), line({"queue": queue, "status": 1}))
    assert b.get(f"/stats/{queue}").json()["leased"] == 0


@STORAGE_MODES
def test_json_protocol_takes_under_a_lease_and_acks(shared_broker, queue):
    b = shared_broker
    key = post_value(b, queue, "job")
    taken = command(b, {"cmd": "take", "queue": queue, "lease": 30})
    assert_answer(
        taken,
        line({"queue": queue, "value": "job", "key": key, "receipt": f"{key}@1", "deliveries": 1}),
    )
    receipt = taken.json()["receipt"]
    acked = command(b, {"cmd": "ack", "queue": queue, "receipt": receipt})
    assert_answer(acked, line({"queue": queue, "key": key, "acked": True}))
    again = command(b, {"cmd": "ack", "queue": queue, "receipt": receipt})
    assert_answer(again, line({"queue": queue, "key": key, "acked": False}))
    empty = command(b, {"cmd": "take", "queue": queue, "lease": 30})
    assert_answer(empty, line({"error": "empty queue"}))
    assert_error(command(b, {"cmd": "take", "queue": queue, "lease": 0}), 400, "lease must be")
    assert_error(command(b, {"cmd": "ack", "queue": queue}), 400, 'the ack command needs a "rec')


@STORAGE_MODES
def test_xmlrpc_lease_ack_and_release(shared_broker, queue):
    b = shared_broker
    rpc = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{b.port}/xmlrpc")
    first = post_value(b, queue, "first")
    taken = rpc.lease(queue, 30)
    assert taken == {"key": first, "value": "first", "receipt": f"{first}@1", "deliveries": 1}
    assert rpc.release(queue, taken["receipt"]) is True
    assert rpc.release(queue, taken["receipt"]) is False
    again = rpc.lease(queue, 30)
    assert (again["key"], again["deliveries"]) == (first, 2)  # released to the head
    assert rpc.ack(queue, again["receipt"]) is True
    assert rpc.ack(queue, again["receipt"]) is False
    assert rpc.lease(queue, 30) is None  # nil: the queue is empty
    with pytest.raises(xmlrpc.client.Fault) as fault:
        rpc.lease(queue, 0)
    assert fault.value.faultCode == 400
    with pytest.raises(xmlrpc.client.Fault) as fault:
        rpc.ack(queue, "elsewhere:1@1")
    assert fault.value.faultCode == 400
    assert "receipt" in rpc.system.methodHelp("lease")
    assert rpc.system.methodSignature("lease") == [["struct", "string", "int"]]


ACL = """
[rest:producer]
hosts_allow = 127.0.0.2
hosts_deny = all
[rest:consumer]
hosts_allow = 127.0.0.3
hosts_deny = all
"""


def test_acks_extends_and_leases_need_a_consumer_max_deliveries_a_producer(
    broker_factory, tmp_path
):
    (tmp_path / "acl.conf").write_text(ACL)
    b = broker_factory("--acl", "acl.conf", workdir=tmp_path, wait=False)

    def call(source: str, method: str, path: str, **kwargs):
        return request(b.port, method, path, source=source, **kwargs)

    producer, consumer = "127.0.0.2", "127.0.0.3"

    def ready() -> bool:
        try:
            return call(consumer, "GET", "/stats/", timeout=2).status == 200
        except OSError:
            return False

    wait_for(ready, 20, what="the broker")
    assert call(producer, "POST", "/q/jobs", form={"value": "a"}).status == 200
    assert call(producer, "GET", "/q/jobs?lease=30").status == 403
    taken = call(consumer, "GET", "/q/jobs?lease=30").json()
    receipt = taken["receipt"]
    assert call(producer, "POST", f"/q/jobs?receipt={receipt}&lease=60").status == 403
    assert call(producer, "DELETE", f"/q/jobs?receipt={receipt}").status == 403
    assert call(consumer, "POST", f"/q/jobs?receipt={receipt}&lease=60").status == 200
    assert call(consumer, "DELETE", "/q/jobs").status == 403  # a purge produces
    assert call(consumer, "DELETE", f"/q/jobs?receipt={receipt}").json()["acked"] is True
    assert call(consumer, "POST", "/p/jobs", form={"max_deliveries": "3"}).status == 403
    assert call(producer, "POST", "/p/jobs", form={"max_deliveries": "3"}).status == 200
    ack_command = json.dumps({"cmd": "ack", "queue": "jobs", "receipt": receipt})
    assert call(producer, "POST", "/queue", form={"body": ack_command}).status == 403
    assert call(consumer, "POST", "/queue", form={"body": ack_command}).status == 200
