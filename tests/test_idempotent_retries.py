"""A producer retrying through restmq.client (each push carries an Idempotency-Key and is
tried again with it after a 503 or a 504) ends with one copy, whether its broker's answer
was lost or its Valkey connection dropped mid-add; and a key is remembered for
``--idempotency-window`` seconds, no longer.

Each runs on the embedded Valkey and on a Valkey Cluster. There the writes are paused and
the connections cut on the primary serving the queue's slot alone, in a cluster of the
test's own (the session cluster's other users must not feel it)."""

from __future__ import annotations

import logging
import threading

from restmq.client import Client
from tests.support import (
    STORAGE_MODES,
    broker_url,
    own_storage_args,
    queue_command,
    stem_of,
    storage_args,
    take_all,
    wait_for,
)

pytestmark = STORAGE_MODES

#: the queue's Valkey runs no write while paused so; a broker's add then times out (504)
PAUSE_WRITES = ("CLIENT", "PAUSE", "60000", "WRITE")


def retried(caplog, count: int) -> bool:
    """True once the client has logged its ``count``-th retry after a 504."""
    return any(
        f"answered 504; retry {count} of" in record.getMessage() for record in caplog.records
    )


def push_in_thread(broker, queue: str, values: list[str]) -> tuple[threading.Thread, list]:
    """Push ``values`` (one push, or one push_many batch) from a thread; its outcome lands
    in the list."""
    outcome: list = []

    def push() -> None:
        with Client(broker_url(broker), retries=20) as client:
            try:
                if len(values) == 1:
                    outcome.append(client.push(queue, values[0]))
                else:
                    outcome.append(client.push_many(queue, values))
            except Exception as exc:  # handed to the test thread
                outcome.append(exc)

    pusher = threading.Thread(target=push)
    pusher.start()
    return pusher, outcome


def remembered_keys(broker, queue: str) -> list[str]:
    return queue_command(broker, queue, "KEYS", f"{stem_of(broker, queue)}#idempotency:*")


def counter(broker, queue: str) -> str | None:
    """The queue's message counter: how many numbers its adds have taken."""
    return queue_command(broker, queue, "GET", f"{stem_of(broker, queue)}:UUID")


def retrying_broker(broker_factory, storage: str, cluster_factory):
    """A broker whose Valkey calls time out after 0.3 s, on the embedded Valkey or on a
    cluster of the test's own (3 primaries, no replica: nothing to fail over)."""
    args = own_storage_args(storage, cluster_factory, primaries=3, replicas=0)
    return broker_factory(*args, "--redis-timeout", "0.3")


def test_a_push_whose_answers_are_lost_is_stored_once(
    broker_factory, storage, cluster_factory, queue, caplog
):
    broker = retrying_broker(broker_factory, storage, cluster_factory)
    caplog.set_level(logging.WARNING, logger="restmq.client")
    assert queue_command(broker, queue, *PAUSE_WRITES) == "OK"
    pusher, outcome = push_in_thread(broker, queue, ["once"])
    try:
        # Two attempts reached Valkey and wait there, their answers lost (504): each will
        # run once Valkey writes again, and only one may store the message.
        wait_for(lambda: retried(caplog, 2), timeout=30, what="two 504s")
    finally:
        queue_command(broker, queue, "CLIENT", "UNPAUSE")
        pusher.join(60)
    assert outcome == [broker.key(queue, 1)]
    assert [m["value"] for m in take_all(broker, queue)] == ["once"]
    assert counter(broker, queue) == "1"
    assert len(remembered_keys(broker, queue)) == 1  # the client's key, sent every time


def test_a_batch_whose_answers_are_lost_is_stored_once(
    broker_factory, storage, cluster_factory, queue, caplog
):
    broker = retrying_broker(broker_factory, storage, cluster_factory)
    caplog.set_level(logging.WARNING, logger="restmq.client")
    assert queue_command(broker, queue, *PAUSE_WRITES) == "OK"
    pusher, outcome = push_in_thread(broker, queue, ["a", "b", "c"])
    try:
        wait_for(lambda: retried(caplog, 2), timeout=30, what="two 504s")
    finally:
        queue_command(broker, queue, "CLIENT", "UNPAUSE")
        pusher.join(60)
    assert outcome == [[broker.key(queue, n) for n in (1, 2, 3)]]
    assert [m["value"] for m in take_all(broker, queue)] == ["a", "b", "c"]
    assert counter(broker, queue) == "3"


def test_a_push_whose_valkey_connections_drop_mid_add_is_stored_once(
    broker_factory, storage, cluster_factory, queue, caplog
):
    broker = retrying_broker(broker_factory, storage, cluster_factory)
    caplog.set_level(logging.WARNING, logger="restmq.client")
    assert queue_command(broker, queue, *PAUSE_WRITES) == "OK"
    pusher, outcome = push_in_thread(broker, queue, ["once"])
    try:
        wait_for(lambda: retried(caplog, 1), timeout=30, what="a 504")
        # The broker loses every connection to the queue's Valkey, the add still waiting on one.
        assert queue_command(broker, queue, "CLIENT", "KILL", "TYPE", "normal") >= 1
    finally:
        queue_command(broker, queue, "CLIENT", "UNPAUSE")
        pusher.join(60)
    assert outcome == [broker.key(queue, 1)]
    assert [m["value"] for m in take_all(broker, queue)] == ["once"]
    assert counter(broker, queue) == "1"


def test_after_the_window_the_key_adds_again(broker_factory, storage, request, queue):
    broker = broker_factory(*storage_args(storage, request), "--idempotency-window", "1")
    path, headers = f"/q/{queue}", {"Idempotency-Key": '"window"'}

    def add():
        return broker.request("POST", path, form={"value": "x"}, headers=headers)

    first = add()
    assert first.text == broker.key(queue, 1) + "\r\n"
    # remembered for a second at most (-2 once forgotten), not the default day
    remembered = f"{stem_of(broker, queue)}#idempotency:window"
    assert queue_command(broker, queue, "PTTL", remembered) <= 1000

    def added_anew():
        answer = add()
        assert answer.status == 200, answer.body
        return answer if "idempotent-replayed" not in answer.headers else None

    later = wait_for(added_anew, timeout=10, interval=0.05, what="the key to be forgotten")
    assert later.text == broker.key(queue, 2) + "\r\n"
    assert [m["value"] for m in take_all(broker, queue)] == ["x", "x"]
