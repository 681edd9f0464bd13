"""ConsumerRegistry in process on a real Valkey: messages for a consumer that has gone."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor

from restmq.delivery.consumers import ConsumerRegistry
from tests.support import MemoryConsumer, until


# A broadcast batch takes what is waiting; a roundrobin one, a message per ready consumer.
@pytest.mark.parametrize("policy, taken", [("broadcast", 3), ("roundrobin", 1)])
@pytest_twisted.ensureDeferred
async def test_messages_taken_for_a_consumer_that_left_go_back_to_the_head(
    engine, policy, taken, log_lines
):
    await engine.set_policy("jobs", policy)
    keys = await engine.add_many("jobs", ["first", "second", "third"])
    registry = ConsumerRegistry(engine, reactor)
    consumer = MemoryConsumer("jobs")
    registry.add(consumer)  # wakes the queue: a batch is being taken from Redis now
    consumer.gone = True  # ...and the connection drops before it is handed out
    # The batch really was taken, found nobody to hand it to, and was put back.
    line = f"put {taken} undelivered message(s) back on queue jobs"
    await until(lambda: line in log_lines, what=line)
    assert consumer.received == []
    back = await engine.pop_many("jobs", 10)
    assert [m.key for m in back] == keys
    assert [m.value for m in back] == ["first", "second", "third"]
    assert await engine.length("jobs") == 0


@pytest_twisted.ensureDeferred
async def test_roundrobin_skips_a_consumer_that_left_and_rotates(engine):
    await engine.set_policy("rr", "roundrobin")
    registry = ConsumerRegistry(engine, reactor)
    a, b, c = MemoryConsumer("rr"), MemoryConsumer("rr"), MemoryConsumer("rr")
    for consumer in (a, b, c):
        registry.add(consumer)
    await engine.add_many("rr", [str(i) for i in range(6)])
    registry.wake("rr")
    await until(lambda: len(a.values + b.values + c.values) == 6)
    assert sorted(a.values + b.values + c.values) == [str(i) for i in range(6)]
    assert [len(x.values) for x in (a, b, c)] == [2, 2, 2]
    b.gone = True  # b's connection is gone but the registry has not heard yet
    await engine.add_many("rr", [str(i) for i in range(6, 12)])
    registry.wake("rr")
    await until(lambda: len(a.values) + len(c.values) == 10)
    assert len(b.values) == 2
    assert await engine.length("rr") == 0


@pytest_twisted.ensureDeferred
async def test_purge_notice_ends_local_streams(engine):
    registry = ConsumerRegistry(engine, reactor)
    consumer = MemoryConsumer("p")
    registry.add(consumer)
    registry.on_notice(engine.channel("p"), "purge")
    assert consumer.gone
    assert registry.count("p") == 0 and registry.total == 0
