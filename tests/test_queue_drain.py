"""The rules streaming consumers and long-poll waiters share (restmq.delivery.queue_drain),
in process on a real Valkey: one add notice wakes both, a queue's channel is held while
anyone here waits on it, and a storage outage met by the sweep is logged once each way."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from restmq.delivery.consumers import ConsumerRegistry
from restmq.delivery.waiters import WaiterRegistry
from restmq.engine.queues import QueueEngine
from restmq.operations.queue_operations import Operations
from restmq.storage.address import RedisAddress
from restmq.storage.notify import Notifications
from tests.support import MemoryConsumer, until


@pytest.fixture
def broker_parts(server, engine):
    """A consumer registry and waiters hearing their queues' channels through one
    Notifications, as a broker wires them; and the operations over them."""
    consumers = ConsumerRegistry(engine, reactor)
    waiters = WaiterRegistry(engine, reactor)

    def heard(channel: str, message: str) -> None:
        consumers.on_notice(channel, message)
        waiters.on_notice(channel, message)

    notifications = Notifications(reactor, RedisAddress(host="127.0.0.1", port=server.port), heard)
    consumers.attach(notifications)
    waiters.attach(notifications)
    notifications.start()
    yield Operations(engine, consumers, lambda: "test storage", waiters=waiters), notifications
    pytest_twisted.blockon(waiters.stop())
    pytest_twisted.blockon(consumers.stop())
    pytest_twisted.blockon(notifications.stop())


@pytest.fixture
def quick_engine(server, connect_client):
    """An engine whose Redis calls give up after 0.3 s (Redis may be stopped)."""
    return QueueEngine(connect_client(server, call_timeout=0.3))


async def confirmed(notifications: Notifications, channel: str) -> None:
    """Return once the server has confirmed the subscription to ``channel``."""
    await until(lambda: notifications.is_subscribed(channel), what=f"{channel} subscribed")
    # Our own subscribe is answered after the one before it on the same connection.
    await notifications.subscribe(channel)
    notifications.unsubscribe(channel)


@pytest_twisted.ensureDeferred
async def test_one_add_notice_wakes_the_consumers_and_the_waiters_of_a_queue(broker_parts):
    ops, notifications = broker_parts
    engine = ops.engine
    await engine.set_policy("jobs", "roundrobin")
    consumer = MemoryConsumer("jobs", room=1)  # its socket is full after one message
    ops.open_stream(consumer)
    waiting = defer.ensureDeferred(ops.take("jobs", wait=10))
    await until(lambda: ops.waiters.count("jobs") == 1, what="the waiter parked")
    await confirmed(notifications, engine.channel("jobs"))
    # Straight to the engine: only the add notice tells this broker.
    await engine.add_many("jobs", ["a", "b"])
    answered = await waiting
    await until(lambda: consumer.values, what="the consumer fed")
    assert len(answered) == 1
    assert sorted([*consumer.values, answered[0].value]) == ["a", "b"]
    assert await engine.length("jobs") == 0


@pytest_twisted.ensureDeferred
async def test_a_queue_channel_is_held_until_the_last_consumer_or_waiter_leaves(broker_parts):
    ops, notifications = broker_parts
    channel = ops.engine.channel("jobs")
    first, second = MemoryConsumer("jobs"), MemoryConsumer("jobs")
    ops.open_stream(first)
    ops.open_stream(second)
    waiting = defer.ensureDeferred(ops.take("jobs", wait=10))
    await until(lambda: ops.waiters.count("jobs") == 1, what="the waiter parked")
    await confirmed(notifications, channel)
    ops.close_stream(first)
    ops.close_stream(second)
    assert ops.consumers.count("jobs") == 0
    await ops.engine.add("jobs", "for the waiter")  # heard: the waiter still holds the channel
    assert [m.value for m in await waiting] == ["for the waiter"]
    await until(lambda: not notifications.is_subscribed(channel), what="the channel left")
    assert not ops.waiters.has_waiters("jobs")
    # A consumer coming back subscribes again, and hears the next add.
    again = MemoryConsumer("jobs")
    ops.open_stream(again)
    await confirmed(notifications, channel)
    await ops.engine.add("jobs", "for the consumer")
    await until(lambda: again.values == ["for the consumer"], what="the consumer fed")


@pytest_twisted.ensureDeferred
async def test_an_outage_met_by_the_sweep_is_logged_once_and_its_end_once(
    server, quick_engine, log_lines
):
    engine = quick_engine
    clock = task.Clock()  # the sweep's; Redis calls still run on the reactor
    registry = ConsumerRegistry(engine, clock)
    consumer = MemoryConsumer("jobs")
    registry.add(consumer)  # ready for messages: every sweep asks Redis for some
    registry.start()
    failed, works = "delivery to the consumers failed: ", "delivery to the consumers works again"

    def said(start: str) -> int:
        return sum(line.startswith(start) for line in log_lines)

    async def sweep() -> None:
        clock.advance(registry.sweep_interval)
        await registry.sweep()  # the sweep under way, or one more like it

    async def sweep_until(predicate, what: str) -> None:
        """Sweep again and again until ``predicate()`` (a sweep skips a queue whose
        drain is under way, so one may pass without a look at Redis)."""
        for _ in range(200):
            await sweep()
            if predicate():
                return
            await task.deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"no {what} after 200 sweeps")

    try:
        server.stop()
        await sweep_until(lambda: said(failed), "outage logged")
        for _ in range(5):
            await sweep()
        assert said(failed) == 1
        server.start()  # same port, same data (append-only file)
        await until(lambda: engine.redis.connected, timeout=15, what="Redis back")
        await engine.add("jobs", "after the outage")
        await sweep_until(lambda: consumer.values, "delivery")
        for _ in range(3):
            await sweep()
        assert consumer.values == ["after the outage"]
        assert (said(failed), said(works)) == (1, 1)
    finally:
        await registry.stop()
