"""The prefetch window of a leased stream, in process: the registry on a real Valkey,
its timers on a clock the test moves, and the ack and release scripts' settled notice."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor, task

from restmq.delivery.consumers import ConsumerRegistry
from restmq.engine import notices
from restmq.engine.queues import QueueEngine
from restmq.storage.address import RedisAddress
from restmq.storage.notify import Notifications
from tests.support import MemoryConsumer, until


async def released(engine: QueueEngine, left: int = 0) -> None:
    """Wait until queue q has only ``left`` leases."""
    for _ in range(250):
        if await engine.redis.execute("ZCARD", "q:leased") == left:
            return
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("leases were not released")


def texts(values: list) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in values]


async def settled_a_while() -> None:
    await task.deferLater(reactor, 0.2, lambda: None)


def leased_consumer(registry: ConsumerRegistry, seconds: int, prefetch: int) -> MemoryConsumer:
    consumer = MemoryConsumer("q")
    consumer.use_lease(seconds, prefetch)
    registry.add(consumer)
    return consumer


@pytest_twisted.ensureDeferred
async def test_the_window_holds_and_a_settled_notice_opens_it(engine):
    clock = task.Clock()
    registry = ConsumerRegistry(engine, clock)
    await engine.add_many("q", [f"m{i}" for i in range(5)])
    consumer = leased_consumer(registry, 30, 2)
    await until(lambda: len(consumer.received) == 2)
    await settled_a_while()
    assert [m["value"] for m in consumer.received] == ["m0", "m1"]
    assert [m["deliveries"] for m in consumer.received] == [1, 1]
    # acked elsewhere: the ack script's notice (heard here without pub/sub) opens the slot
    receipt = consumer.received[0]["receipt"]
    assert (await engine.ack("q", [receipt]))[0].done
    registry.on_notice(engine.channel("q"), f"{notices.SETTLED} {receipt}")
    await until(lambda: len(consumer.received) == 3)
    await settled_a_while()
    assert len(consumer.received) == 3
    registry.remove(consumer)
    await released(engine)


@pytest_twisted.ensureDeferred
async def test_a_lease_that_runs_out_frees_its_slot_on_the_timer(engine):
    clock = task.Clock()
    registry = ConsumerRegistry(engine, clock)
    await engine.add_many("q", ["a", "b"])
    consumer = leased_consumer(registry, 30, 1)
    await until(lambda: len(consumer.received) == 1)
    clock.advance(29)
    await settled_a_while()
    assert len(consumer.received) == 1  # still held
    clock.advance(1)  # the lease's length: the slot is free, the next message comes
    await until(lambda: len(consumer.received) == 2)
    assert consumer.received[1]["value"] == "b"
    registry.remove(consumer)
    await released(engine, left=1)  # "a": its lease on the Redis clock has not run out


@pytest_twisted.ensureDeferred
async def test_ack_and_release_scripts_announce_what_they_settled(engine, server):
    heard: list[str] = []
    listener = Notifications(
        reactor,
        RedisAddress(host="127.0.0.1", port=server.port),
        lambda channel, message: heard.append(message),
    )
    listener.start()
    listener.subscribe(engine.channel("q"))
    await until(lambda: listener.is_subscribed(engine.channel("q")))
    await listener.subscribe(engine.channel("q"))
    try:
        await engine.add_many("q", ["a", "b", "c"])
        a, b, c = await engine.lease("q", 30, 3)
        await engine.ack("q", [a.receipt, c.receipt, "q:99@1"])  # q:99 is not leased
        await engine.release("q", [b.receipt])
        await engine.ack("q", [a.receipt])  # acked already: nothing to announce
        await until(lambda: sum(notices.is_settled(m) for m in heard) >= 2)
        await settled_a_while()
        settled = [notices.settled_receipts(m) for m in heard if notices.is_settled(m)]
        assert settled == [[a.receipt, c.receipt], [b.receipt]]
    finally:
        await listener.stop()


@pytest_twisted.ensureDeferred
async def test_a_leaving_consumer_releases_what_it_holds_to_the_head(engine):
    registry = ConsumerRegistry(engine, task.Clock())
    keys = await engine.add_many("q", ["a", "b", "c"])
    consumer = leased_consumer(registry, 30, 2)
    await until(lambda: len(consumer.received) == 2)
    registry.remove(consumer)
    await released(engine)
    waiting = texts(await engine.redis.execute("LRANGE", "q:queue", 0, -1))
    assert waiting[::-1] == keys
    # written to its socket, so the release counted as a delivery
    assert await engine.redis.execute("HGET", "q:deliveries", keys[0]) in ("1", b"1", 1)


@pytest_twisted.ensureDeferred
async def test_stop_releases_the_streams_leases_and_leaves_plain_ones_to_run(engine):
    registry = ConsumerRegistry(engine, task.Clock())
    keys = await engine.add_many("q", ["plain", "a", "b", "c"])
    (plain,) = await engine.lease("q", 30, 1)  # a plain leased take, as GET ?lease=30
    consumer = leased_consumer(registry, 30, 2)
    await until(lambda: len(consumer.received) == 2)
    await registry.stop()
    assert consumer.gone
    assert texts(await engine.redis.execute("ZRANGE", "q:leased", 0, -1)) == [plain.key]
    waiting = texts(await engine.redis.execute("LRANGE", "q:queue", 0, -1))
    assert waiting[::-1] == keys[1:]  # the stream's two back at the head, before c
