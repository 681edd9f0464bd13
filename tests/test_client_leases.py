"""restmq.client's leases: settling a leased message, the ``with client.lease(...)`` block,
consume() (which keeps extending the lease of a slow handler), and leased and plain
Server-Sent Events streams, against a real broker."""

from __future__ import annotations

import threading
import time

import pytest

from restmq.client import Client, LeaseGone, Message
from tests.support import STORAGE_MODES, broker_url, wait_consumers, wait_for


@pytest.fixture
def client(shared_broker):
    with Client(broker_url(shared_broker)) as client:
        yield client


@STORAGE_MODES
def test_a_leased_message_is_acked_extended_and_released(client, queue):
    client.push_many(queue, ["a", "b"])
    message = client.lease(queue, 30).message
    assert (message.value, message.deliveries, message.lease) == ("a", 1, 30)
    assert message.receipt == f"{message.key}@1"
    assert client.stats(queue)["leased"] == 1
    message.extend(600)
    message.release()  # back to the head: the next take gets it again
    again = client.lease(queue, 30).message
    assert (again.key, again.deliveries) == (message.key, 2)
    with pytest.raises(LeaseGone) as gone:
        message.ack()  # the first delivery's receipt settles nothing now
    assert gone.value.status == 409 and "is gone" in gone.value.error
    again.ack()
    stats = client.stats(queue)
    assert (stats["len"], stats["leased"]) == (1, 0)
    assert [m.value for m in client.lease_many(queue, 30, 10)] == ["b"]


@STORAGE_MODES
def test_the_lease_block_acks_when_it_ends(client, queue):
    client.push(queue, "job")
    with client.lease(queue, 30) as message:
        assert message.value == "job"
        assert client.stats(queue)["leased"] == 1
    stats = client.stats(queue)
    assert (stats["len"], stats["leased"]) == (0, 0)
    with pytest.raises(LeaseGone):
        message.ack()  # it was acked


@STORAGE_MODES
def test_the_lease_block_releases_to_the_head_when_it_raises(client, queue):
    client.push_many(queue, ["first", "second"])
    with pytest.raises(RuntimeError, match="work failed"), client.lease(queue, 30) as message:
        assert message.value == "first"
        raise RuntimeError("work failed")
    assert client.stats(queue)["leased"] == 0
    back = client.lease(queue, 30).message
    assert (back.key, back.value, back.deliveries) == (message.key, "first", 2)


@STORAGE_MODES
def test_the_lease_block_gives_none_on_an_empty_queue(client, queue):
    lease = client.lease(queue, 30, wait=0)
    assert not lease and lease.message is None
    with lease as message:
        assert message is None


def run_consumer(client: Client, queue: str, handler, **options):
    """consume() in a thread; returns (thread, stop event, what it returned)."""
    stop = threading.Event()
    returned: list[int] = []
    thread = threading.Thread(
        target=lambda: returned.append(client.consume(queue, handler, stop=stop, **options))
    )
    thread.start()
    return thread, stop, returned


@STORAGE_MODES
def test_consume_extends_the_lease_of_a_handler_slower_than_the_lease(client, queue):
    seen: list[Message] = []
    working = threading.Event()

    def slow(message: Message) -> None:
        seen.append(message)
        working.set()
        time.sleep(5)  # the work itself: two and a half leases long

    client.push(queue, "slow job")
    thread, stop, returned = run_consumer(client, queue, slow, lease=2, wait=1)
    try:
        assert working.wait(20)
        # Had the lease run out, the message would be back in the queue for this pop.
        with Client(client.url) as other:
            assert other.pop(queue, wait=6) is None
        wait_for(lambda: client.stats(queue)["leased"] == 0, what="the ack")
    finally:
        stop.set()
        thread.join(30)
    assert returned == [1]
    assert [(m.value, m.deliveries) for m in seen] == [("slow job", 1)]
    assert client.stats(queue)["len"] == 0


@STORAGE_MODES
def test_consume_releases_what_a_handler_failed_and_handles_it_again(client, queue):
    deliveries: list[int] = []

    def fails_once(message: Message) -> None:
        deliveries.append(message.deliveries)
        if message.deliveries == 1:
            raise ValueError("not this time")

    client.push(queue, "flaky")
    thread, stop, returned = run_consumer(client, queue, fails_once, lease=30, wait=1)
    try:
        wait_for(lambda: len(deliveries) == 2, what="the second delivery")
        wait_for(lambda: client.stats(queue)["leased"] == 0, what="the ack")
    finally:
        stop.set()
        thread.join(30)
    assert (deliveries, returned) == ([1, 2], [1])
    assert client.stats(queue)["len"] == 0


@STORAGE_MODES
def test_a_stream_yields_messages_pushed_after_it_opened(client, shared_broker, queue):
    client.push(queue, "backlog")
    with client.stream(queue, idle_timeout=30) as messages:
        assert next(messages).value == "backlog"
        wait_consumers(shared_broker, queue, 1)
        keys = client.push_many(queue, ["one", "two"])
        got = [next(messages), next(messages)]
        assert [(m.key, m.value, m.receipt) for m in got] == [
            (keys[0], "one", None),
            (keys[1], "two", None),
        ]
        client.purge(queue)  # the broker ends the stream
        assert list(messages) == []


@STORAGE_MODES
def test_a_leased_stream_sends_the_next_message_after_an_ack(client, queue):
    client.push_many(queue, ["a", "b"])
    with client.stream(queue, lease=30, prefetch=1, idle_timeout=30) as messages:
        first = next(messages)
        assert (first.value, first.deliveries) == ("a", 1) and first.receipt
        assert client.stats(queue)["leased"] == 1  # "b" waits for the ack
        first.ack()
        second = next(messages)
        assert second.value == "b"
        second.ack()
    wait_for(lambda: client.stats(queue)["leased"] == 0, what="the acks to settle")
    assert client.stats(queue)["len"] == 0


@STORAGE_MODES
def test_closing_a_leased_stream_gives_its_unacked_messages_back(client, queue):
    client.push(queue, "unfinished")
    with client.stream(queue, lease=30, idle_timeout=30) as messages:
        assert next(messages).value == "unfinished"
    wait_for(lambda: client.stats(queue)["len"] == 1, what="the message back in the queue")
    assert client.pop(queue).value == "unfinished"
