"""Messages buffered for paused streaming consumers: back to the queue unless one was written.

A broadcast message waiting in the backlogs of several paused consumers goes back
to its queue exactly once, when the last of them lets go of it without writing it.
A message some consumer wrote to its socket counts as delivered and never goes back.
"""

from __future__ import annotations

import signal

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from restmq.delivery.consumers import ConsumerRegistry
from restmq.engine.queues import QueueEngine
from restmq.storage.address import RedisAddress
from restmq.storage.client import RedisClient
from tests.support import (
    MemoryConsumer,
    RawSseStream,
    publish_in_batches,
    settled_length,
    take_all,
    wait_for,
)


@pytest.fixture
def store(valkey_factory):
    server = valkey_factory()
    client = RedisClient(reactor, RedisAddress(host="127.0.0.1", port=server.port), poolsize=2)
    client.connect()
    pytest_twisted.blockon(defer.ensureDeferred(client.wait_until_ready()))
    yield server, QueueEngine(client)
    pytest_twisted.blockon(client.disconnect())


async def settle(seconds: float = 0.3) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


def queued(server, queue: str) -> list[str]:
    """The bodies waiting in ``queue``, oldest first, read past the broker."""
    keys = server.command("LRANGE", f"{queue}:queue", "0", "-1")
    return [server.command("GET", key) for key in reversed(keys)]


async def paused_consumers(engine, queue: str, count: int, values: list[str]):
    """``count`` consumers whose sockets took the first message, then were full."""
    registry = ConsumerRegistry(engine, reactor)
    consumers = [MemoryConsumer(queue, room=1) for _ in range(count)]
    for consumer in consumers:
        registry.add(consumer)
    await engine.add_many(queue, values)
    registry.wake(queue)
    await settle()
    assert await engine.length(queue) == 0, "the batch was taken for the consumers"
    assert all(c.values == values[:1] for c in consumers)
    return registry, consumers


@pytest_twisted.ensureDeferred
async def test_two_paused_broadcast_consumers_leaving_put_their_backlog_back_once(store):
    server, engine = store
    values = [f"m{i}" for i in range(20)]
    registry, (a, b) = await paused_consumers(engine, "bq", 2, values)
    registry.remove(a)
    await settle()
    assert queued(server, "bq") == [], "b still holds every message"
    registry.remove(b)
    await settle()
    assert queued(server, "bq") == values[1:]  # once, in order


@pytest_twisted.ensureDeferred
async def test_what_one_consumer_wrote_is_not_put_back_when_both_leave(store):
    server, engine = store
    values = [f"m{i}" for i in range(10)]
    registry, (a, b) = await paused_consumers(engine, "bw", 2, values)
    a.room = 4  # a's socket takes four messages, then is full again
    a.resumeProducing()
    assert a.values == values[:5]
    registry.remove(b)
    registry.remove(a)
    await settle()
    assert queued(server, "bw") == values[5:]


@pytest_twisted.ensureDeferred
async def test_a_stop_puts_back_the_backlog_of_paused_broadcast_consumers(store):
    server, engine = store
    values = [f"m{i}" for i in range(30)]
    registry, consumers = await paused_consumers(engine, "bs", 3, values)
    await registry.stop()
    assert queued(server, "bs") == values[1:]  # back before stop() returned
    assert all(c.gone for c in consumers)


@pytest_twisted.ensureDeferred
async def test_a_stop_waits_for_the_batch_being_taken(store):
    server, engine = store
    # Redis knows the script already, so the batch is taken in one round trip.
    await engine.take_for_streams("bf", roundrobin_batch=1, broadcast_batch=1, origin="x")
    values = [f"m{i}" for i in range(50)]
    await engine.add_many("bf", values)
    registry = ConsumerRegistry(engine, reactor)
    reader = MemoryConsumer("bf")
    registry.add(reader)  # a batch is being taken from Redis right now
    await registry.stop()
    await engine.redis.disconnect()  # what a stopping broker does next
    assert sorted(reader.values + queued(server, "bf")) == sorted(values)


def test_sigterm_with_two_paused_broadcast_consumers_loses_nothing(broker_factory, queue):
    broker = broker_factory()
    consumers = [RawSseStream(broker.port, queue, receive_buffer=4096) for _ in range(2)]
    wait_for(lambda: broker.get(f"/stats/{queue}").json().get("consumers") == 2, 10)
    values = [f"{i:05d}-" + "x" * 1018 for i in range(2500)]  # 2,500 x 1 KB
    publish_in_batches(broker, queue, values)
    settled_length(broker, queue)  # the consumers are paused, a backlog in the broker
    broker.proc.send_signal(signal.SIGTERM)
    received = [message["value"] for c in consumers for message in c.read_to_end()]
    broker.proc.wait(20)
    assert "RestMQ stopped" in broker.log()
    broker.start()
    left = [message["value"] for message in take_all(broker, queue)]
    assert set(received) | set(left) == set(values), "no message lost"
    # Nothing twice: what a socket took is not put back; the rest is, once and in order.
    assert not set(received) & set(left)
    assert left == values[len(values) - len(left) :]


def test_two_paused_broadcast_consumers_that_drop_put_their_backlog_back(broker_factory, queue):
    broker = broker_factory()
    consumers = [RawSseStream(broker.port, queue, receive_buffer=4096) for _ in range(2)]
    wait_for(lambda: broker.get(f"/stats/{queue}").json().get("consumers") == 2, 10)
    values = [f"{i:05d}-" + "x" * 1018 for i in range(2500)]
    publish_in_batches(broker, queue, values)
    before = settled_length(broker, queue)  # the consumers are paused, a backlog in the broker
    for consumer in consumers:
        consumer.close()
    wait_for(lambda: broker.get(f"/stats/{queue}").json().get("consumers") == 0, 10)
    assert settled_length(broker, queue) > before, "the backlog went back"
    left = [message["value"] for message in take_all(broker, queue)]
    assert len(left) == len(set(left)), "put back once, not once per consumer"
    # What the sockets took counts as delivered; everything after it went back, in order.
    assert left == values[len(values) - len(left) :]
